"""publish and the model repository: numbered versions that are never rewritten, a Triton config
generated from the graph and the lifecycle state, and clear refusals that change nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

from imgcls.model_records import Lifecycle
from imgcls.repository import ModelDir, RepositoryError
from imgcls.triton_config import labels_from_parameters, parameters_in
from model_preparation.common import PipelineError
from model_preparation.onnx_utils import session
from model_preparation.publish import publish, publish_model
from tests.models import publish_params, tiny_onnx

REPO = Path(__file__).resolve().parents[1]


def _labels(tmp_path: Path, *names: str) -> Path:
    path = tmp_path / f"labels-{len(names)}.txt"
    path.write_text("".join(f"{n}\n" for n in names))
    return path


def _tree(path: Path) -> dict[str, int]:
    """Every file under ``path`` with its modification time (ns): what a change would touch."""
    return {str(p.relative_to(path)): p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file()}


def test_config_and_labels_follow_the_graph(tmp_path):
    tiny_onnx(tmp_path / "model.onnx")  # the FP32 artifact (imgcls.variants)
    receipt = publish(
        tmp_path, _labels(tmp_path, "a", "b", "c"), tmp_path / "repo",
        publish_params(model_name="m", max_batch_size=4, int8=False, bf16=False),
    )  # fmt: skip
    config = (tmp_path / "repo/m/config.pbtxt").read_text()
    assert 'name: "m"' in config and "max_batch_size: 4" in config
    assert "data_type: TYPE_UINT8" in config and "dims: [ 8, 8, 3 ]" in config
    assert "format: FORMAT_NHWC" in config  # Triton's image_client.py needs it
    # the class dimension is variable: versions with other label sets share this config
    assert "dims: [ -1 ]" in config and 'label_filename: "1/labels.txt"' in config
    assert "version_policy: { specific: { versions: [ 1 ] } }" in config
    assert "model_warmup" in config and "zero_data: true" in config
    assert (tmp_path / "repo/m/1/labels.txt").read_text() == "a\nb\nc\n"
    assert receipt["num_classes"] == 3 and receipt["version"] == 1 and receipt["role"] == "serving"
    params = parameters_in(config)
    assert Lifecycle.from_parameters(params) == Lifecycle(serving=1)
    assert labels_from_parameters(params) == {1: ("a", "b", "c")}
    served = session(tmp_path / "repo/m/1/model.onnx")
    probs = served.run(None, {"image": np.zeros((2, 8, 8, 3), np.uint8)})[0]
    assert probs.shape == (2, 3)
    meta = json.loads((tmp_path / "repo/m/1/version.json").read_text())
    assert meta["labels"] == ["a", "b", "c"] and meta["input"]["dims"] == [8, 8, 3]
    graph = onnx.load(str(tmp_path / "repo/m/1/model.onnx"))
    assert {p.key: p.value for p in graph.metadata_props}["imgcls.labels"] == '["a", "b", "c"]'


def test_the_served_copy_answers_exactly_like_the_artifact(tmp_path):
    model = tiny_onnx(tmp_path / "m.onnx")
    publish_model("m", model, ["a", "b", "c"], tmp_path / "repo", publish_params())
    x = np.random.default_rng(1).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    ours = session(tmp_path / "repo/m/1/model.onnx").run(None, {"image": x})[0]
    np.testing.assert_array_equal(ours, session(model).run(None, {"image": x})[0])


def test_each_publish_adds_the_next_version_as_a_candidate_and_rewrites_nothing(tmp_path):
    repo, params = tmp_path / "repo", publish_params()
    publish_model("m", tiny_onnx(tmp_path / "a.onnx"), ["a", "b", "c"], repo, params, 0.99)
    v1 = {k: v for k, v in _tree(repo / "m").items() if k.startswith("1/")}
    second = publish_model(
        "m", tiny_onnx(tmp_path / "b.onnx", classes=4), list("abcd"), repo, params, 0.97
    )
    assert (second["version"], second["role"], second["new"]) == (2, "candidate", True)
    assert {k: v for k, v in _tree(repo / "m").items() if k.startswith("1/")} == v1
    state = ModelDir(repo, "m").state()
    assert state == Lifecycle(serving=1)  # a candidate serves nobody until told to
    assert ModelDir(repo, "m").version(2).labels == ("a", "b", "c", "d")
    assert [e["event"] for e in ModelDir(repo, "m").history()] == ["publish", "publish"]


def test_publishing_a_model_that_is_on_disk_already_adds_nothing(tmp_path):
    repo, model = tmp_path / "repo", tiny_onnx(tmp_path / "a.onnx")
    publish_model("m", model, ["a", "b", "c"], repo, publish_params())
    again = publish_model("m", model, ["a", "b", "c"], repo, publish_params())
    assert again["new"] is False and ModelDir(repo, "m").versions() == [1]
    publish_model(
        "m", tiny_onnx(tmp_path / "b.onnx", scale=2.0), list("abc"), repo, publish_params()
    )
    back = publish_model("m", model, ["a", "b", "c"], repo, publish_params())  # data put back
    assert (back["version"], back["new"], back["role"]) == (1, False, "serving")
    assert ModelDir(repo, "m").versions() == [1, 2]


def test_old_versions_are_pruned_but_never_what_serves(tmp_path):
    repo, params = tmp_path / "repo", publish_params(keep_versions=2)
    for i in range(4):
        publish_model("m", tiny_onnx(tmp_path / f"{i}.onnx", size=8 + 0 * i, classes=3 + i),
                      list("abcdefg")[: 3 + i], repo, params)  # fmt: skip
    # version 1 serves (nobody promoted anything), so it stays; 2 goes, the newest two stay
    assert ModelDir(repo, "m").versions() == [1, 3, 4]


@pytest.mark.parametrize(
    ("classes", "size", "message"),
    [(3, 16, r"takes 'image' UINT8 \[16, 16, 3\] but m serves 'image' UINT8 \[8, 8, 3\]")],
)
def test_a_model_with_another_input_is_refused_and_nothing_changes(
    tmp_path, classes, size, message
):
    repo = tmp_path / "repo"
    publish_model("m", tiny_onnx(tmp_path / "a.onnx"), ["a", "b", "c"], repo, publish_params())
    before = _tree(repo)
    other = tiny_onnx(tmp_path / "b.onnx", classes=classes, size=size)
    with pytest.raises(RepositoryError, match=message):
        publish_model("m", other, ["a", "b", "c"], repo, publish_params())
    assert _tree(repo) == before


def test_a_corrupt_onnx_file_is_refused_clearly(tmp_path):
    repo = tmp_path / "repo"
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07 this is not a protobuf of a model")
    with pytest.raises(PipelineError, match="not a readable ONNX model"):
        publish_model("m", bad, ["a", "b", "c"], repo, publish_params())
    assert not ModelDir(repo, "m").versions()


def test_label_count_must_match_the_output(tmp_path):
    tiny_onnx(tmp_path / "model.onnx", classes=3)
    with pytest.raises(PipelineError, match="3 classes but there are 2 labels"):
        publish(tmp_path, _labels(tmp_path, "a", "b"), tmp_path / "repo", publish_params())


def test_thread_layout_uses_the_native_backends_parameter_names(tmp_path):
    tiny_onnx(tmp_path / "model.onnx")
    labels = _labels(tmp_path, "a", "b", "c")
    layout = publish_params(model_name="m", instance_count=2, intra_op_threads=1, int8=False,
                            bf16=False)  # fmt: skip
    publish(tmp_path, labels, tmp_path / "two", layout)
    config = (tmp_path / "two/m/config.pbtxt").read_text()
    assert "count: 2" in config and "kind:" not in config  # Triton picks GPU where there is one
    assert 'parameters { key: "intra_op_thread_count" value: { string_value: "1" } }' in config
    single = publish_params(model_name="m", instance_count=1, intra_op_threads=0, int8=False,
                            bf16=False)  # fmt: skip
    publish(tmp_path, labels, tmp_path / "default", single)
    default = (tmp_path / "default/m/config.pbtxt").read_text()
    assert "count: 1" in default and "intra_op_thread_count" not in default


def test_labels_that_differ_between_loaded_versions_get_no_shared_labels_file(tmp_path):
    repo = tmp_path / "repo"
    publish_model("m", tiny_onnx(tmp_path / "a.onnx"), ["a", "b", "c"], repo, publish_params())
    publish_model(
        "m", tiny_onnx(tmp_path / "b.onnx", classes=4), list("abcd"), repo, publish_params()
    )
    model = ModelDir(repo, "m")
    both = model.render(Lifecycle(serving=1, candidate=2, mode="canary", percent=10))
    assert "label_filename" not in both  # one file cannot name the classes of both
    assert labels_from_parameters(parameters_in(both)) == {1: tuple("abc"), 2: tuple("abcd")}
    assert 'label_filename: "2/labels.txt"' in model.render(Lifecycle(serving=2, previous=1))


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({"serving": 1, "candidate": 2, "mode": "canary", "percent": 101}, "within 0–100"),
        ({"serving": 1, "candidate": 2, "mode": "canary", "percent": -1}, "within 0–100"),
        ({"serving": 1, "candidate": 2, "mode": "blue-green", "percent": 5}, "mode must be"),
        ({"serving": 1, "candidate": 1, "mode": "canary", "percent": 5}, "is the serving"),
        ({"serving": 1, "mode": "canary", "percent": 5}, "need a candidate"),
    ],
)
def test_impossible_lifecycle_states_are_refused(state, message):
    with pytest.raises(ValueError, match=message):
        Lifecycle(**state)


def test_labels_with_quotes_and_unicode_survive_the_config(tmp_path):
    repo, names = tmp_path / "repo", ['say "hi"', "back\\slash", "café"]
    publish_model("m", tiny_onnx(tmp_path / "a.onnx"), names, repo, publish_params())
    params = parameters_in((repo / "m/config.pbtxt").read_text())
    assert labels_from_parameters(params) == {1: tuple(names)}


def test_a_publish_killed_half_way_leaves_the_served_model_untouched(tmp_path):
    """SIGKILL while the next version's model file is being copied: no partial version, the
    config unchanged, and the next publish works."""
    repo = tmp_path / "repo"
    publish_model("m", tiny_onnx(tmp_path / "a.onnx"), ["a", "b", "c"], repo, publish_params())
    before = _tree(repo / "m")
    code = f"""
import shutil, time, sys
sys.path[:0] = {[str(REPO)]!r}
from tests.models import tiny_onnx, publish_params
from model_preparation.publish import publish_model
real = shutil.copyfile
def slow(src, dst, *a, **k):
    real(src, dst, *a, **k)
    print("copied", flush=True)
    time.sleep(60)
shutil.copyfile = slow
publish_model("m", tiny_onnx({str(tmp_path / "b.onnx")!r}, classes=4), list("abcd"),
              __import__("pathlib").Path({str(repo)!r}), publish_params())
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "copied"
        staging = [p.name for p in (repo / "m").iterdir() if p.name.startswith(".staging-")]
        assert staging, "the version is built under a hidden name first"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    model = ModelDir(repo, "m")
    assert model.versions() == [1] and model.state() == Lifecycle(serving=1)
    assert {k: v for k, v in _tree(repo / "m").items() if not k.startswith(".")} == {
        k: v for k, v in before.items() if not k.startswith(".")
    }
    time.sleep(0.01)
    receipt = publish_model(
        "m", tiny_onnx(tmp_path / "c.onnx", classes=4), list("abcd"), repo, publish_params()
    )
    assert receipt["version"] == 2 and model.versions() == [1, 2]
    assert not [p for p in (repo / "m").iterdir() if p.name.startswith(".staging-")]


def test_a_version_whose_file_changed_after_publishing_is_refused(tmp_path):
    repo = tmp_path / "repo"
    publish_model("m", tiny_onnx(tmp_path / "a.onnx"), ["a", "b", "c"], repo, publish_params())
    with open(repo / "m/1/model.onnx", "ab") as fh:
        fh.write(b"tampered")
    with pytest.raises(RepositoryError, match=r"does not match its version\.json"):
        ModelDir(repo, "m").check_version(1)


def test_the_bf16_variant_is_the_fp32_graph_on_openvino(tmp_path):
    tiny_onnx(tmp_path / "model.onnx")
    labels = _labels(tmp_path, "a", "b", "c")
    receipt = publish(tmp_path, labels, tmp_path / "repo", publish_params(int8=False, bf16=True),
                      accuracy={"fp32": 0.9, "bf16": 0.89})  # fmt: skip
    assert receipt["bf16"]["model_name"] == "resnet50v2_bf16" and "int8" not in receipt
    config = (tmp_path / "repo/resnet50v2_bf16/config.pbtxt").read_text()
    assert 'backend: "openvino"' in config and 'default_model_filename: "model.onnx"' in config
    for key, value in (("INFERENCE_PRECISION_HINT", "bf16"), ("PERFORMANCE_HINT", "LATENCY"),
                       ("NUM_STREAMS", "1"), ("INFERENCE_NUM_THREADS", "1")):  # fmt: skip
        assert f'key: "{key}" value: {{ string_value: "{value}" }}' in config, key
    assert "intra_op_thread_count" not in config  # ONNX Runtime's key, not OpenVINO's
    assert ModelDir(tmp_path / "repo", "resnet50v2_bf16").version(1).accuracy == 0.89
