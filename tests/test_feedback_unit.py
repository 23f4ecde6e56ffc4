"""The production loop at unit speed (in-memory gateway, real app, real files): answers say how
familiar each input is, metrics follow the answers, the capture store keeps what was asked within
its cap, and POST /feedback stores a correction only for an answered image, with a label the
answering version knows."""

from __future__ import annotations

import base64
import errno
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgcls.gateway.memory import MemoryGateway
from imgcls_api import create_app
from imgcls_api.capture import Answer, CaptureStore
from tests.conftest import wait_until


def _app(tmp_path: Path | None, **config):
    if tmp_path is not None:
        config = {"capture_dir": str(tmp_path), "capture_rate": 1.0, **config}
    app = create_app(config)
    app.config["TESTING"] = True
    app.extensions["triton"] = MemoryGateway()
    return app


def _png(value: int, size=(8, 8)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (value, value, value)).save(out, format="PNG")
    return out.getvalue()


def _predict(client, *bodies: bytes, headers=None):
    files = [("image", (io.BytesIO(b), f"{i}.png")) for i, b in enumerate(bodies)]
    return client.post("/predict", data={"image": [f[1] for f in files]} if len(files) > 1
                       else {"image": files[0][1]}, headers=headers or {})  # fmt: skip


def _wait(predicate, timeout: float = 5.0):
    return wait_until(predicate, timeout, "the capture store")


def _answered(client, store_dir: Path, *bodies: bytes) -> str:
    """A request id whose record the store has written."""
    response = _predict(client, *bodies)
    assert response.status_code == 200, response.get_json()
    request_id = response.get_json()["request_id"]
    _wait(lambda: list((store_dir / "requests").glob("*.json")) and _find(store_dir, request_id))
    _wait(client.application.extensions["capture"].idle)  # the cap applied after the write
    return request_id


def _find(store_dir: Path, request_id: str):
    for path in (store_dir / "requests").glob("*.json"):
        record = json.loads(path.read_text())
        if record["request_id"] == request_id:
            return record
    return None


def _metric(client, name: str, **labels) -> float:
    text = client.get("/metrics").get_data(as_text=True)
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


# -- answers ------------------------------------------------------------------------------------
def test_answers_say_whether_the_input_looks_like_the_training_data(client):
    dark, bright = client.post("/predict", data={"image": (io.BytesIO(_png(20)), "d.png")}), \
        client.post("/predict", data={"image": (io.BytesIO(_png(250)), "b.png")})  # fmt: skip
    d, b = dark.get_json(), bright.get_json()
    assert d["familiar"] is True and d["drift"]["familiar"] is True
    assert b["familiar"] is False
    assert b["drift"] == {"score": pytest.approx(2.5), "threshold": 1.0, "familiar": False}
    assert d["request_id"] == dark.headers["X-Request-ID"]


def _rgb_png(rgb: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), rgb).save(out, "PNG")
    return out.getvalue()


def test_answers_say_whether_the_input_is_a_class_the_model_knows(client):
    """The stand-in's unknown-class score: 2 minus the spread of the channel means / 64,
    threshold 1 (a grey image is of no class it knows, a strongly coloured one is)."""
    grey = client.post("/predict", data={"image": (io.BytesIO(_rgb_png((90, 90, 90))), "g.png")})
    red = client.post("/predict", data={"image": (io.BytesIO(_rgb_png((200, 10, 10))), "r.png")})
    g, r = grey.get_json(), red.get_json()
    assert grey.status_code == red.status_code == 200
    assert g["known_class"] is False
    assert g["unknown"] == {"score": pytest.approx(2.0), "threshold": 1.0, "known_class": False}
    assert r["known_class"] is True and r["unknown"]["known_class"] is True
    assert g["label"] and r["label"]  # flagged or not, the nearest class is still answered
    before = _metric(client, "api_unknown_class_inputs_total")
    client.post("/predict", data={"image": (io.BytesIO(_rgb_png((90, 90, 90))), "g.png")})
    assert _metric(client, "api_unknown_class_inputs_total") == before + 1


def test_explanations_carry_the_unknown_class_flag_too(client):
    body = client.post("/explain", data={"image": (io.BytesIO(_rgb_png((90, 90, 90))), "g.png")})
    assert body.status_code == 200
    assert body.get_json()["known_class"] is False


def test_no_unknown_fields_when_the_version_has_no_such_output():
    app = create_app({})
    app.extensions["triton"] = MemoryGateway(unknown_threshold=None)
    body = app.test_client().post("/predict", data={"image": (io.BytesIO(_png(20)), "d.png")})
    assert body.status_code == 200
    assert "known_class" not in body.get_json() and "unknown" not in body.get_json()
    assert "familiar" in body.get_json()


def test_no_drift_fields_when_the_version_has_no_reference():
    app = create_app({})
    app.extensions["triton"] = MemoryGateway(drift_threshold=None)
    body = app.test_client().post("/predict", data={"image": (io.BytesIO(_png(20)), "d.png")})
    assert body.status_code == 200
    assert "familiar" not in body.get_json() and "drift" not in body.get_json()


def test_metrics_follow_the_answers(client):
    before = _metric(client, "api_unfamiliar_inputs_total")
    labelled = _metric(client, "api_predictions_total")
    for value in (20, 250, 250):
        assert (
            client.post("/predict", data={"image": (io.BytesIO(_png(value)), "x.png")}).status_code
            == 200
        )
    assert _metric(client, "api_predictions_total") == labelled + 3
    assert _metric(client, "api_unfamiliar_inputs_total") == before + 2
    text = client.get("/metrics").get_data(as_text=True)
    for family in ("api_prediction_confidence_bucket", "api_input_drift_ratio_bucket",
                   "api_low_confidence_total"):  # fmt: skip
        assert family in text


# -- the capture store ----------------------------------------------------------------------------
def test_every_answer_is_recorded_and_its_pixels_sampled(tmp_path):
    client = _app(tmp_path).test_client()
    request_id = _answered(client, tmp_path, _png(20))
    record = _find(tmp_path, request_id)
    assert record["model"] and record["version"] == "1"
    assert record["labels"] == ["circle", "square", "triangle"]
    (result,) = record["results"]
    assert result["label"] and result["drift"]["familiar"] is True
    pixels = np.asarray(Image.open(tmp_path / "requests" / result["image"]))
    assert pixels.shape == (8, 8, 3) and (pixels == 20).all()


def test_rate_zero_records_answers_without_images(tmp_path):
    client = _app(tmp_path, capture_rate=0.0).test_client()
    request_id = _answered(client, tmp_path, _png(20))
    assert _find(tmp_path, request_id)["results"][0]["image"] is None
    assert not list((tmp_path / "requests").glob("*.png"))


def test_capture_off_by_default_and_feedback_says_so(client):
    response = client.post("/feedback", json={"request_id": "x", "label": "circle"})
    assert response.status_code == 404 and response.get_json()["error"]["code"] == "feedback_off"


def _answer(i: int, pixels: np.ndarray) -> Answer:
    return Answer(f"req-{i}", "m", "1", ("a", "b"), [{"label": "a", "probability": 1.0}],
                  pixels[None])  # fmt: skip


def test_the_store_stays_within_its_cap_and_never_prunes_feedback(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)  # ~12 KB PNG
    store = CaptureStore(tmp_path, rate=1.0, max_mb=0.1)
    (tmp_path / "feedback" / "kept.png").write_bytes(b"x" * 20_000)
    for i in range(40):
        store._write_answer(_answer(i, noise), sampled=True)
        os.utime(tmp_path / "requests" / f"{store_key(i)}.json", (i, i))  # oldest first
    store.prune()
    total = sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())
    assert total <= 0.1 * 1024 * 1024 + 1024  # + the lock file
    assert (tmp_path / "feedback" / "kept.png").exists()
    assert store.find("req-39") is not None and store.find("req-0") is None


def store_key(i: int) -> str:
    from imgcls_api.capture import request_key

    return request_key(f"req-{i}")


def test_a_full_disk_stops_capture_not_predictions(tmp_path, monkeypatch, caplog):
    app = _app(tmp_path)
    store = app.extensions["capture"]

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store, "_write", full)
    client = app.test_client()
    failures = _metric(client, "api_capture_failures_total", reason="disk_full")
    for _ in range(3):
        assert _predict(client, _png(20)).status_code == 200
    _wait(lambda: _metric(client, "api_capture_failures_total", reason="disk_full") >= failures + 3)
    assert sum("capture stopped (disk_full)" in r.getMessage() for r in caplog.records) == 1


def test_files_a_crash_left_half_written_are_removed_at_start(tmp_path):
    CaptureStore(tmp_path, 1.0, 1.0)
    old, fresh = tmp_path / ".tmp" / "old.json", tmp_path / ".tmp" / "fresh.json"
    old.write_text("{")
    fresh.write_text("{")
    os.utime(old, (0, 0))
    CaptureStore(tmp_path, 1.0, 1.0)
    assert not old.exists() and fresh.exists()


@pytest.mark.parametrize("config", [{"capture_rate": 1.5}, {"capture_max_mb": 0}])
def test_bad_capture_settings_are_refused(tmp_path, config):
    with pytest.raises(ValueError):
        _app(tmp_path, **config)


# -- feedback -------------------------------------------------------------------------------------
def test_feedback_stores_the_image_the_model_saw_with_the_right_label(tmp_path):
    client = _app(tmp_path).test_client()
    request_id = _answered(client, tmp_path, _png(20), _png(40))
    response = client.post("/feedback", json={"request_id": request_id, "label": "triangle",
                                              "index": 1})  # fmt: skip
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert body["label"] == "triangle" and body["index"] == 1 and body["replaced"] is False
    (entry,) = [json.loads(p.read_text()) for p in (tmp_path / "feedback").glob("*.json")]
    assert entry["label"] == "triangle" and entry["predicted"] == body["predicted"]
    pixels = np.asarray(Image.open(tmp_path / "feedback" / entry["image"]))
    assert (pixels == 40).all()
    again = client.post("/feedback", json={"request_id": request_id, "label": "circle",
                                           "index": 1})  # fmt: skip
    assert again.status_code == 201 and again.get_json()["replaced"] is True
    assert len(list((tmp_path / "feedback").glob("*.json"))) == 1


def test_unsampled_requests_take_the_image_again_and_only_that_image(tmp_path):
    client = _app(tmp_path, capture_rate=0.0).test_client()
    request_id = _answered(client, tmp_path, _png(20))
    missing = client.post("/feedback", json={"request_id": request_id, "label": "circle"})
    assert missing.status_code == 422 and missing.get_json()["error"]["code"] == "image_required"
    other = client.post("/feedback", data={"request_id": request_id, "label": "circle",
                                           "image": (io.BytesIO(_png(21)), "x.png")})  # fmt: skip
    assert other.status_code == 422 and other.get_json()["error"]["code"] == "image_mismatch"
    same = client.post("/feedback", json={"request_id": request_id, "label": "circle",
                                          "image": base64.b64encode(_png(20)).decode()})  # fmt: skip
    assert same.status_code == 201, same.get_json()
    assert len(list((tmp_path / "feedback").glob("*.png"))) == 1


@pytest.mark.parametrize(("body", "status", "error"), [
    ({"label": "circle"}, 400, "invalid_request_id"),
    ({"request_id": "x" * 129, "label": "circle"}, 400, "invalid_request_id"),
    ({"request_id": "r", "label": ""}, 400, "invalid_label"),
    ({"request_id": "r", "label": "circle", "index": -1}, 400, "invalid_index"),
    ({"request_id": "r", "label": "circle", "index": True}, 400, "invalid_index"),
    ({"request_id": "r", "label": "circle", "image": "%%%"}, 400, "invalid_base64"),
    ({"request_id": "never-answered", "label": "circle"}, 404, "unknown_request"),
])  # fmt: skip
def test_bad_feedback_gets_a_clear_error_and_stores_nothing(tmp_path, body, status, error):
    client = _app(tmp_path).test_client()
    response = client.post("/feedback", json=body)
    assert response.status_code == status and response.get_json()["error"]["code"] == error
    assert not list((tmp_path / "feedback").iterdir())


def test_feedback_must_name_an_answered_image_and_a_known_label(tmp_path):
    client = _app(tmp_path).test_client()
    request_id = _answered(client, tmp_path, _png(20))
    for body, error in (({"index": 1, "label": "circle"}, "invalid_index"),
                        ({"label": "../../etc"}, "unknown_label"),
                        ({"label": "dog"}, "unknown_label")):  # fmt: skip
        response = client.post("/feedback", json={"request_id": request_id, **body})
        assert response.status_code == 422 and response.get_json()["error"]["code"] == error
    assert client.post("/feedback", data="x", content_type="text/plain").status_code == 415
    assert client.post("/feedback", data="[1]", content_type="application/json").status_code == 400
    assert not list((tmp_path / "feedback").iterdir())


def test_an_input_of_no_known_class_is_kept_for_a_person_to_name(tmp_path):
    client = _app(tmp_path).test_client()
    _answered(client, tmp_path, _rgb_png((200, 10, 10)))  # a known class: nothing to label
    assert not list((tmp_path / "tolabel").glob("*.json"))
    _answered(client, tmp_path, _rgb_png((90, 90, 90)), _rgb_png((90, 90, 90)))  # twice: one
    (entry,) = [json.loads(p.read_text()) for p in (tmp_path / "tolabel").glob("*.json")]
    assert entry["kind"] == "unknown" and entry["unknown_score"] == pytest.approx(2.0)
    assert entry["serving"]["version"] == "1" and entry["labels"] == ["circle", "square",
                                                                     "triangle"]  # fmt: skip
    assert (tmp_path / "tolabel" / entry["image"]).is_file()


def test_a_new_class_is_accepted_only_when_the_user_says_so_and_only_as_a_plain_name(tmp_path):
    client = _app(tmp_path).test_client()
    request_id = _answered(client, tmp_path, _png(20))
    refused = client.post("/feedback", json={"request_id": request_id, "label": "star"})
    assert refused.status_code == 422 and "new_class" in refused.get_json()["error"]["message"]
    for label in ("../../etc", ".hidden", "a/b", ""):
        bad = client.post("/feedback", json={"request_id": request_id, "label": label,
                                             "new_class": True})  # fmt: skip
        assert bad.status_code == 400, label
    bad_flag = client.post("/feedback", json={"request_id": request_id, "label": "star",
                                              "new_class": "maybe"})  # fmt: skip
    assert bad_flag.status_code == 400
    assert bad_flag.get_json()["error"]["code"] == "invalid_new_class"
    assert not list((tmp_path / "feedback").iterdir())
    ok = client.post("/feedback", data={"request_id": request_id, "label": "star",
                                        "new_class": "true"},
                     content_type="multipart/form-data")  # fmt: skip
    assert ok.status_code == 201 and ok.get_json()["new_class"] is True
    (stored,) = (tmp_path / "feedback").glob("*.json")
    assert json.loads(stored.read_text())["label"] == "star"
    known = client.post("/feedback", json={"request_id": request_id, "label": "circle",
                                           "new_class": True})  # fmt: skip
    assert known.status_code == 201 and known.get_json()["new_class"] is False


def test_feedback_floods_get_429_with_retry_after(tmp_path):
    client = _app(tmp_path, feedback_per_minute=2).test_client()
    codes = [client.post("/feedback", json={"request_id": "r", "label": "a"}).status_code
             for _ in range(3)]  # fmt: skip
    assert codes == [404, 404, 429]
    limited = client.post("/feedback", json={"request_id": "r", "label": "a"})
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1


def test_feedback_is_refused_with_507_when_feedback_fills_the_store(tmp_path):
    client = _app(tmp_path, capture_max_mb=0.01).test_client()
    request_id = _answered(client, tmp_path, _png(20))
    (tmp_path / "feedback" / "big.png").write_bytes(b"x" * 11_000)
    response = client.post("/feedback", json={"request_id": request_id, "label": "circle"})
    assert response.status_code == 507 and response.get_json()["error"]["code"] == "store_full"


def test_feedback_needs_a_key_when_keys_are_on(tmp_path):
    client = _app(tmp_path, api_keys="k-one-7f3a").test_client()
    headers = {"X-API-Key": "k-one-7f3a"}
    request_id = _answered_keyed(client, tmp_path, headers)
    body = {"request_id": request_id, "label": "circle"}
    assert client.post("/feedback", json=body).status_code == 401
    assert client.post("/feedback", json=body, headers=headers).status_code == 201


def _answered_keyed(client, store_dir, headers) -> str:
    response = _predict(client, _png(20), headers=headers)
    assert response.status_code == 200
    request_id = response.get_json()["request_id"]
    _wait(lambda: _find(store_dir, request_id))
    return request_id


def test_an_image_too_large_is_413_on_feedback_too(tmp_path):
    client = _app(tmp_path, capture_rate=0.0, max_image_pixels=10_000).test_client()
    request_id = _answered(client, tmp_path, _png(20))
    big = _png(20, size=(200, 200))
    response = client.post("/feedback", data={"request_id": request_id, "label": "circle",
                                              "image": (io.BytesIO(big), "big.png")})  # fmt: skip
    assert response.status_code == 413


def test_models_says_whether_feedback_is_on(client, tmp_path):
    assert client.get("/models").get_json()["feedback"] is False
    assert _app(tmp_path).test_client().get("/models").get_json()["feedback"] is True
