"""The production loop on the real Triton and the real API under gunicorn: every answer says how
familiar its input is (the served graph's drift output, equal to the reference stage's score),
/metrics follows the answers, the capture store keeps its rate and cap across a restart, and a
user's correction goes through POST /feedback and `harvest` into data/raw, where DVC sees it."""

from __future__ import annotations

import io
import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from imgcls.preprocessing import load_image
from model_preparation.ood import auroc as auc
from model_preparation.reference import Reference, embedder, features, photos
from tests.conftest import run, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SIZE = 48  # the tiny project's image_size


def _demo(project: Path, per_class: int) -> list[Path]:
    return [p for c in ("circle", "square", "triangle")
            for p in sorted((project / "data/raw" / c).glob(f"{c}_*.jpg"))[-per_class:]]  # fmt: skip


def _png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def _predict(api, data: bytes, **params) -> dict:
    resp = requests.post(f"{api.url}/predict", files={"image": data}, params=params, timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()


def _metrics(api) -> dict[str, float]:
    """Every sample of /metrics: ``name{labels}`` → value (labels as written). Lines end at
    "\\n" only, as the exposition format says (``str.splitlines`` also breaks at U+0085…)."""
    text = requests.get(f"{api.url}/metrics", timeout=10).text
    found = {}
    for line in text.split("\n"):
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            found[key] = float(value)
    return found


def _sum(samples: dict[str, float], name: str, **labels) -> float:
    pattern = re.compile(rf"^{re.escape(name)}(\{{|$)")
    return sum(v for k, v in samples.items() if pattern.match(k)
               and all(f'{a}="{b}"' in k for a, b in labels.items()))  # fmt: skip


def test_the_drift_score_is_low_on_held_out_images_and_high_on_photos(api, tiny_project):
    """The served score is the reference stage's own (same number, FP32), stays within the
    threshold on images like the training data and rises on real photos."""
    ref = Reference.load(tiny_project / "artifacts/reference.npz")
    sess, name = embedder(tiny_project / "artifacts/model.onnx", ref.tensor)
    demo = [load_image(p, SIZE) for p in _demo(tiny_project, 10)]
    real = list(photos(SIZE))
    served = {"demo": [], "photos": []}
    for kind, images in (("demo", demo), ("photos", real)):
        for pixels in images:
            body = _predict(api, _png(pixels))
            assert body["familiar"] is body["drift"]["familiar"]
            assert body["drift"]["threshold"] == pytest.approx(ref.threshold, rel=1e-4)
            served[kind].append(body["drift"]["score"])
    offline = ref.score(features(sess, name, np.stack(demo), 16)[0])
    np.testing.assert_allclose(served["demo"], offline, rtol=2e-3, atol=2e-3)
    demo_scores, photo_scores = np.array(served["demo"]), np.array(served["photos"])
    assert np.mean(demo_scores <= ref.threshold) >= 0.9
    assert np.median(photo_scores) > np.median(demo_scores)
    report = json.loads((tiny_project / "artifacts/reports/drift.json").read_text())
    print(f"\ntiny model: served photos-vs-demo ROC AUC {auc(demo_scores, photo_scores):.3f} "
          f"(reference stage: {report['photos']['auc']:.3f})")  # fmt: skip
    assert auc(demo_scores, photo_scores) >= 0.75


@pytest.mark.parametrize("model", ["resnet50v2_int8", "resnet50v2_bf16"])
def test_every_precision_answers_with_its_drift_score(api, tiny_project, model):
    path = _demo(tiny_project, 1)[0]
    body = _predict(api, path.read_bytes(), model=model)
    assert isinstance(body["familiar"], bool) and body["drift"]["score"] >= 0


#: how far a variant's served unknown-class score may be from the reference stage's numpy score
#: of that variant's own graph: FP32 and INT8 run the very graph (ONNX Runtime in Triton and
#: here); BF16 runs the FP32 graph in OpenVINO at bfloat16, whose 8-bit mantissa moves a score
#: of tens by a few tenths
TOLERANCE = {"resnet50v2": (2e-3, 2e-3), "resnet50v2_int8": (2e-3, 2e-3),
             "resnet50v2_bf16": (0.05, 0.5)}  # fmt: skip


@pytest.mark.parametrize("model", sorted(TOLERANCE))
def test_every_variant_serves_the_reference_stages_unknown_class_score(api, tiny_project, model):
    """Each variant's served ``unknown`` equals the reference stage's method on that variant's
    own graph's penultimate features and logits (the file Triton serves; BF16's is the FP32
    graph), and its flag is the threshold's verdict."""
    from model_preparation.reference import head_outputs

    ref = Reference.load(tiny_project / "artifacts/reference.npz")
    pixels = np.stack(
        [load_image(p, SIZE) for p in _demo(tiny_project, 4)] + list(photos(SIZE))[:6]
    )
    bodies = [_predict(api, _png(x), model=model) for x in pixels]
    served = np.array([b["unknown"]["score"] for b in bodies])
    for b in bodies:
        assert b["known_class"] is (b["unknown"]["score"] <= b["unknown"]["threshold"])
        assert b["unknown"]["threshold"] == pytest.approx(ref.unknown_threshold, rel=1e-4)
    (version,) = {b["model"]["version"] for b in bodies}
    graph = tiny_project / "model_repository" / model / version / "model.onnx"
    offline = ref.unknown.score(*head_outputs(graph, pixels))
    rtol, atol = TOLERANCE[model]
    np.testing.assert_allclose(served, offline, rtol=rtol, atol=atol)


def test_flat_colours_and_pure_noise_are_flagged_never_answered_without_one(api):
    """An image all of one colour, or of pure noise, is of no class and unlike the training
    data: every answer about one carries a raised flag (``familiar`` or ``known_class`` false)."""
    rng = np.random.default_rng(5)
    images = [np.full((SIZE, SIZE, 3), c, np.uint8) for c in rng.integers(0, 256, (6, 3))]
    images += [rng.integers(0, 256, (SIZE, SIZE, 3)).astype(np.uint8) for _ in range(6)]
    for pixels in images:
        body = _predict(api, _png(pixels))
        assert body["familiar"] is False or body["known_class"] is False, body


def test_the_reference_stage_compares_every_method_on_every_set(tiny_project):
    from model_preparation.ood import METHODS

    report = json.loads((tiny_project / "artifacts/reports/ood.json").read_text())
    assert report["served"] in METHODS
    assert set(report["methods"]) == {*METHODS, "drift"}
    for method, row in report["methods"].items():
        assert {"near", "photos", "flat", "noise"} <= set(row), method
        for name, figures in row.items():
            assert 0.0 <= figures["auroc"] <= 1.0 and 0.0 <= figures["flagged"] <= 1.0, name
    near = report["methods"][report["served"]]["near"]
    assert near["images"] == 5 * 100  # the five demo shapes the tiny model was not taught
    assert near["auroc"] == max(r["near"]["auroc"] for m, r in report["methods"].items()
                                if m != "drift")  # fmt: skip
    assert near["auroc"] > 0.5  # better than chance at telling a new shape from a known one


def test_metrics_follow_known_answers(captured_api, tiny_project):
    before = _metrics(captured_api)
    answers = [_predict(captured_api, p.read_bytes()) for p in _demo(tiny_project, 3)]
    # a uniform grey image: the demo model answers it with low confidence, or not; either way
    # the counters must agree with the answers
    answers.append(_predict(captured_api, _png(np.full((SIZE, SIZE, 3), 128, np.uint8))))
    after = _metrics(captured_api)

    def delta(name: str, **labels) -> float:
        return _sum(after, name, **labels) - _sum(before, name, **labels)

    v = {"model": "resnet50v2", "version": "1"}
    assert delta("api_predictions_total", **v) == len(answers)
    for label in ("circle", "square", "triangle"):
        expected = sum(a["label"] == label for a in answers)
        assert delta("api_predictions_total", **v, label=label) == expected, label
    assert delta("api_prediction_confidence_count", **v) == len(answers)
    low = sum(a["probability"] <= 0.5 for a in answers)
    assert delta("api_prediction_confidence_bucket", **v, le="0.5") == low
    assert delta("api_low_confidence_total", **v) == sum(a["probability"] < 0.5 for a in answers)
    assert delta("api_input_drift_ratio_count", **v) == len(answers)
    assert delta("api_unfamiliar_inputs_total", **v) == sum(not a["familiar"] for a in answers)


def test_capture_keeps_its_rate_and_cap_across_a_restart(triton, tiny_project, tmp_path):
    from local_stack.api import ApiServer

    store = tmp_path / "store"
    files = _demo(tiny_project, 10)
    first = ApiServer(triton.url, workdir=tmp_path / "a", env={"CAPTURE_DIR": str(store),
                                                               "CAPTURE_RATE": "1"})  # fmt: skip
    try:
        first.start()
        early = [_predict(first, p.read_bytes())["request_id"] for p in files[:5]]
        wait_until(lambda: len(list((store / "requests").glob("*.json"))) == 5)
    finally:
        first.stop()
    assert len(list((store / "requests").glob("*.png"))) == 5  # rate 1: every image

    cap_mb = 0.08  # ~80 KB: about 25 requests of a 48² PNG and its record
    second = ApiServer(triton.url, workdir=tmp_path / "b", env={
        "CAPTURE_DIR": str(store), "CAPTURE_RATE": "0.5", "CAPTURE_MAX_MB": str(cap_mb)})  # fmt: skip
    try:
        second.start()
        late = [_predict(second, files[i % len(files)].read_bytes())["request_id"]
                for i in range(60)]  # fmt: skip
        time.sleep(1.0)  # the last background writes
    finally:
        second.stop()
    records = {json.loads(p.read_text())["request_id"]: json.loads(p.read_text())
               for p in (store / "requests").glob("*.json")}  # fmt: skip
    total = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
    assert total <= cap_mb * 1024 * 1024 * (1 + 2 / 20) + 4096  # a scan per 1/20 of the cap
    assert late[-1] in records  # the newest kept, the oldest dropped
    assert not set(early) <= set(records)
    sampled = [r for rid, r in records.items() if rid in late and r["results"][0]["image"]]
    kept_late = [rid for rid in late if rid in records]
    assert 0.2 < len(sampled) / len(kept_late) < 0.8, (len(sampled), len(kept_late))
    assert not list((store / ".tmp").iterdir())


def _dvc_copy(project: Path, dest: Path) -> Path:
    """The tiny project's git + DVC metadata and data, without its models (its DVC cache
    shared: content-addressed, only ever added to)."""
    for name in (".git", ".dvc", "data"):
        shutil.copytree(project / name, dest / name, symlinks=True,
                        ignore=shutil.ignore_patterns("cache", "tmp"))  # fmt: skip
    (dest / ".dvc/cache").symlink_to(project / ".dvc/cache")
    for name in ("data.dvc", "dvc.yaml", "dvc.lock", "params.yaml", ".dvcignore", ".gitignore"):
        if (project / name).exists():
            shutil.copy2(project / name, dest / name)
    return dest


def test_a_correction_goes_from_the_api_into_data_raw_and_dvc_sees_it(
    captured_api, capture_dir, tiny_project, tmp_path
):
    project = _dvc_copy(tiny_project, tmp_path / "project")
    assert "changed" not in run("dvc status data.dvc", project).stdout
    path = _demo(tiny_project, 1)[0]  # a circle
    answer = _predict(captured_api, path.read_bytes())
    url = f"{captured_api.url}/feedback"

    def post(**body) -> requests.Response:
        return requests.post(url, json={"request_id": answer["request_id"], **body}, timeout=10)

    # the record is written in the background, right after the answer: until then, 404
    wait_until(lambda: post(label="square", index=3).status_code == 422)
    for bad, code in (({"label": "../../etc"}, 422), ({"label": "dog"}, 422),
                      ({"label": "square", "index": 3}, 422)):  # fmt: skip
        resp = requests.post(url, json={"request_id": answer["request_id"], **bad}, timeout=10)
        assert resp.status_code == code, resp.text
    unknown = requests.post(url, json={"request_id": "nope", "label": "square"}, timeout=10)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_request"
    resp = post(label="square")
    assert resp.status_code == 201, resp.text
    assert resp.json()["predicted"] == answer["label"]

    listed = run(["python", "-m", "model_preparation.tools.harvest", "list", "--store",
                  str(capture_dir)], project).stdout  # fmt: skip
    assert f"{answer['label']} → square" in listed
    out = run(["python", "-m", "model_preparation.tools.harvest", "import", "--all", "--store",
               str(capture_dir), "--data", "data/raw"], project).stdout  # fmt: skip
    added = list((project / "data/raw/square").glob("fb-*.png"))
    assert len(added) >= 1 and "imported" in out
    assert np.asarray(Image.open(added[0])).shape == (SIZE, SIZE, 3)
    assert "modified" in run("dvc status data.dvc", project).stdout
    before = (project / "data.dvc").read_text()
    run("dvc add -q data", project)  # what `make model` does first
    assert (project / "data.dvc").read_text() != before
    assert "changed" not in run("dvc status data.dvc", project).stdout
    again = run(["python", "-m", "model_preparation.tools.harvest", "list", "--store",
                 str(capture_dir)], project).stdout  # fmt: skip
    assert "no pending feedback" in again


def test_what_a_shadowed_candidate_disagrees_on_is_kept_to_be_labelled(
    model_repository, tiny_project, tmp_path
):
    """A candidate that answers by colour, shadowed with capture on: each image it and the
    serving version name differently is kept once in tolabel/ with both answers (what ONNX
    Runtime computes from each served file), and `harvest list` shows them first."""
    from imgcls.model_records import Lifecycle
    from imgcls.repository import ModelDir
    from model_preparation.onnx_utils import session
    from model_preparation.publish import publish_model
    from tests import stacks
    from tests.models import publish_params, tiny_onnx

    source = tmp_path / "source"
    shutil.copytree(model_repository, source)
    labels = ("circle", "square", "star", "triangle")
    v2 = tiny_onnx(tmp_path / "v2.onnx", classes=4, size=SIZE)
    publish_model("resnet50v2", v2, list(labels), source, publish_params(max_batch_size=16), 0.5)
    ModelDir(source, "resnet50v2").write_config(Lifecycle(1, 2, "shadow", 100))
    store = tmp_path / "capture"
    paths = _demo(tiny_project, 4)
    with stacks.stack(source, tiny_project / "artifacts/gate.npz", tmp_path / "s", {},
                      api_env={"CAPTURE_DIR": str(store), "CAPTURE_RATE": "0"}) as stack:  # fmt: skip
        for _ in range(2):  # twice: one entry per distinct image
            for path in paths:
                assert _predict(stack.api, path.read_bytes())["model"]["version"] == "1"
        s1, s2 = (session(stack.repo / f"resnet50v2/{v}/model.onnx") for v in (1, 2))
        v1_labels = ModelDir(stack.repo, "resnet50v2").version(1).labels
        expected = {}
        for path in paths:
            x = load_image(path, SIZE)[None]
            said, says = v1_labels[s1.run(None, {"image": x})[0].argmax()], labels[
                s2.run(None, {"image": x})[0].argmax()]  # fmt: skip
            if said != says:
                expected[(said, says)] = expected.get((said, says), 0) + 1
        assert expected, "the two versions agree on every image tried"
        entries = wait_until(lambda: (found := list((store / "tolabel").glob("*.json")))
                             and len(found) == sum(expected.values()) and found, timeout=30,
                             what="the disagreements")  # fmt: skip
    kept: dict = {}
    for path in entries:
        record = json.loads(path.read_text())
        assert (record["serving"]["version"], record["candidate"]["version"]) == ("1", "2")
        key = (record["serving"]["label"], record["candidate"]["label"])
        kept[key] = kept.get(key, 0) + 1
        assert (store / "tolabel" / record["image"]).is_file()
    assert kept == expected
    listed = run(["python", "-m", "model_preparation.tools.harvest", "list", "--store",
                  str(store)], tiny_project).stdout  # fmt: skip
    assert listed.startswith("to label") and f"{len(entries)} to label" in listed
