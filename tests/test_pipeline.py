"""The real DVC pipeline, end to end, on the tiny demo configuration (tests/conftest.py)."""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml

from imgcls.preprocessing import load_image
from tests.conftest import make_project, run

pytestmark = pytest.mark.slow


def _json(path: Path):
    return json.loads(path.read_text())


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _labels(path: Path) -> list[str]:
    return path.read_text().split()


def test_heldout_accuracy_is_well_above_chance(tiny_project):
    metrics = _json(tiny_project / "artifacts/reports/metrics.json")
    n_classes = len(metrics["per_class"])
    assert n_classes == 3
    assert metrics["accuracy"] >= 0.6, metrics  # chance is 0.33
    assert set(metrics["per_class"]) == {"circle", "square", "triangle"}
    confusion = _json(tiny_project / "artifacts/reports/confusion.json")
    assert len(confusion) == metrics["num_images"]
    assert (tiny_project / "artifacts/reports/confusion.png").stat().st_size > 1000


def test_onnx_matches_keras_and_has_named_dynamic_tensors(tiny_project):
    report = _json(tiny_project / "artifacts/reports/export.json")
    assert report["max_abs_diff"] <= 1e-4 and report["top1_agreement"] == 1.0
    model = onnx.load(str(tiny_project / "artifacts/model.onnx"), load_external_data=False)
    (inp,), (out,) = model.graph.input, model.graph.output
    assert (inp.name, out.name) == ("image", "probabilities")
    batch_dim = inp.type.tensor_type.shape.dim[0]
    assert not batch_dim.HasField("dim_value"), "batch dimension must be dynamic"
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8


def test_served_files_are_consistent_with_the_graph(tiny_project):
    repo = tiny_project / "model_repository/resnet50v2"
    config = (repo / "config.pbtxt").read_text()
    labels = _labels(repo / "1/labels.txt")
    assert (
        labels
        == _labels(tiny_project / "artifacts/prepared/labels.txt")
        == ["circle", "square", "triangle"]
    )
    assert 'backend: "onnxruntime"' in config and "dynamic_batching" in config
    assert 'name: "image"' in config and 'name: "probabilities"' in config
    assert re.search(r"dims: \[ 48, 48, 3 \]", config)
    assert "version_policy: { specific: { versions: [ 1 ] } }" in config  # the first serves
    meta = _json(repo / "1/version.json")
    assert meta["labels"] == labels and meta["md5"] == _md5(repo / "1/model.onnx")
    assert meta["source"]["md5"] == _md5(tiny_project / "artifacts/model.onnx")
    assert meta["accuracy"] == _json(tiny_project / "artifacts/reports/metrics.json")["accuracy"]
    tracked = yaml.safe_load((tiny_project / "model.dvc").read_text())["outs"]
    assert [o["path"] for o in tracked] == ["model_repository"]  # all Triton serves, and how
    assert "model.dvc" not in run("dvc status model.dvc", tiny_project).stdout


def test_int8_model_is_quantized_evaluated_and_served_beside_fp32(tiny_project):
    report = _json(tiny_project / "artifacts/reports/int8.json")
    assert report["top1_agreement"] >= 0.8 and report["int8_accuracy"] >= 0.5, report
    int8 = onnx.load(str(tiny_project / "model_repository/resnet50v2_int8/1/model.onnx"))
    assert any(n.op_type == "QuantizeLinear" for n in int8.graph.node)
    config = (tiny_project / "model_repository/resnet50v2_int8/config.pbtxt").read_text()
    assert 'name: "resnet50v2_int8"' in config and 'label_filename: "1/labels.txt"' in config
    meta = _json(tiny_project / "model_repository/resnet50v2_int8/1/version.json")
    assert meta["accuracy"] == report["int8_accuracy"]
    assert meta["source"]["md5"] == _md5(tiny_project / "artifacts/model.int8.onnx")


def test_the_bf16_variant_is_checked_and_served_on_openvino(tiny_project):
    report = _json(tiny_project / "artifacts/reports/bf16.json")
    assert report["checked"] and report["top1_agreement"] >= 0.8, report  # TINY quantize gate
    assert abs(report["bf16_accuracy"] - report["fp32_accuracy"]) <= 0.05, report
    repo = tiny_project / "model_repository/resnet50v2_bf16"
    config = (repo / "config.pbtxt").read_text()
    assert 'backend: "openvino"' in config and 'default_model_filename: "model.onnx"' in config
    assert 'key: "INFERENCE_PRECISION_HINT" value: { string_value: "bf16" }' in config
    meta = _json(repo / "1/version.json")
    assert meta["accuracy"] == report["bf16_accuracy"]
    assert meta["source"]["md5"] == _md5(tiny_project / "artifacts/model.onnx")  # the FP32 graph


def test_data_report_counts_splits_and_the_skipped_file(tiny_project):
    report = _json(tiny_project / "artifacts/reports/data.json")
    assert report["num_skipped"] == 1
    (skipped,) = report["skipped"]
    assert skipped["path"].endswith("circle/broken.jpg") and skipped["reason"] in {
        "not_an_image",
        "corrupt_image",
    }
    per_class = report["per_class"]
    assert sum(per_class["circle"].values()) == 600  # the broken file is not counted
    for counts in per_class.values():  # each file's content decides its side: about the shares
        assert counts["val"] == pytest.approx(120, abs=40) and counts["gate"] == pytest.approx(
            60, abs=30
        )
    assert (
        report["num_train"] + report["num_val"] + report["num_gate"] == report["num_images"] == 1800
    )
    assert report["split"] == "content-hash"


def test_tfrecords_hold_exactly_what_the_api_preprocessing_produces(tiny_project):
    """Parity: pixels in the training data == load_image() on the same file (the API path)."""
    import tensorflow as tf

    records = sorted((tiny_project / "artifacts/prepared").glob("val-*.tfrecord"))
    features = {
        "image": tf.io.FixedLenFeature([], tf.string),
        "path": tf.io.FixedLenFeature([], tf.string),
    }
    checked = 0
    for raw in tf.data.TFRecordDataset([str(r) for r in records]).take(5):
        ex = tf.io.parse_single_example(raw, features)
        stored = tf.io.decode_png(ex["image"], channels=3).numpy()
        source = tiny_project / ex["path"].numpy().decode()
        np.testing.assert_array_equal(stored, load_image(source, 48))
        checked += 1
    assert checked == 5


def test_second_repro_does_nothing(tiny_project):
    out = run("dvc repro", tiny_project).stdout
    assert "Running stage" not in out
    status = run("dvc status", tiny_project).stdout
    assert "up to date" in status, status


def test_metrics_and_plots_are_visible_to_dvc(tiny_project):
    metrics = json.loads(run("dvc metrics show --json", tiny_project).stdout)
    flat = json.dumps(metrics)
    assert '"accuracy"' in flat and '"max_abs_diff"' in flat and '"num_skipped"' in flat
    run("dvc plots show -o plots_html", tiny_project)
    assert (tiny_project / "plots_html/index.html").exists()
    history = (
        (tiny_project / "artifacts/dvclive/plots/metrics/train/loss.tsv").read_text().splitlines()
    )
    assert len(history) >= 2  # header + one row per epoch


def test_dvc_remote_round_trip_into_a_fresh_clone(tiny_project, tmp_path):
    remote = tmp_path / "remote"
    run(f"dvc remote add --local -f rt {remote} && dvc push -q -r rt", tiny_project)
    clone = tmp_path / "clone"
    run(f"git clone -q {tiny_project} {clone}", tmp_path)
    assert not (clone / "model_repository/resnet50v2/1/model.onnx").exists()
    run(f"dvc remote add --local rt {remote} && dvc pull -q -r rt data.dvc model.dvc", clone)
    model = "model_repository/resnet50v2/1/model.onnx"
    assert _md5(clone / model) == _md5(tiny_project / model)
    assert len(list((clone / "data/raw").rglob("*.jpg"))) == len(
        list((tiny_project / "data/raw").rglob("*.jpg"))
    )


def test_adding_a_class_folder_extends_model_labels_config_and_evaluation(tiny_project,
                                                                         grown_project):  # fmt: skip
    """The shared grown project (tests/builds.py): `demo_data --classes star`, `dvc add data`,
    `train.init: serving`, `dvc repro` in a copy of the tiny project."""
    project = grown_project
    # the new model is version 2 beside version 1, a candidate: version 1 still serves
    receipt = _json(project / "artifacts/reports/publish.json")
    assert (receipt["version"], receipt["role"], receipt["num_classes"]) == (2, "candidate", 4)
    labels = _labels(project / "model_repository/resnet50v2/2/labels.txt")
    assert labels == ["circle", "square", "star", "triangle"]
    assert _labels(project / "model_repository/resnet50v2/1/labels.txt") == [
        "circle", "square", "triangle",
    ]  # fmt: skip
    assert _md5(project / "model_repository/resnet50v2/1/model.onnx") == _md5(
        tiny_project / "model_repository/resnet50v2/1/model.onnx"
    )
    metrics = _json(project / "artifacts/reports/metrics.json")
    assert set(metrics["per_class"]) == set(labels)
    assert _json(project / "artifacts/reports/export.json")["output"]["dims"] == [4]
    # it started from the serving version (train.init: serving), and says so
    source = _json(project / "model_repository/resnet50v2/2/version.json")["source"]
    assert source["init"] == {"init": "serving", "model": "resnet50v2", "version": 1}
    assert (project / "model_repository/resnet50v2/2/model.keras").is_file()
    assert not (project / "model_repository/resnet50v2_int8/2/model.keras").exists()
    # its gate set holds the new class, and every image it held before, on the same side
    from imgcls.gateset import GateSet

    before, after = (GateSet.load(p / "artifacts/gate.npz") for p in (tiny_project, project))
    assert "star" in after.classes and set(before.digests) <= set(after.digests)


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({"cats": 3, "dogs": 0}, "class folder(s) with no files: dogs"),
        ({"cats": 3}, "only one class"),
        ({}, "no images found"),
    ],
    ids=["empty-class", "single-class", "no-images"],
)
def test_bad_datasets_stop_prepare_with_a_clear_error(tmp_path, layout, message):
    from tests import images

    project = make_project(tmp_path / "p")
    raw = project / "data/raw"
    raw.mkdir(parents=True)
    for name, count in layout.items():
        (raw / name).mkdir()
        for i in range(count):
            (raw / name / f"{i}.jpg").write_bytes(images.jpeg())
    result = run([sys.executable, "-m", "model_preparation.prepare"], project, check=False)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
