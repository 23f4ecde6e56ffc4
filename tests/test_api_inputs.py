"""Every body `/predict` accepts or refuses, through the real app with an in-memory gateway.

Fast (no Triton): what a client sees — status, JSON, error code — for each branch of
``imgcls_api.inputs``, plus what reached the model (letterboxed uint8 at the model's size).
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest

from imgcls.preprocessing import letterbox_array, load_image
from tests import images

SIZE = (8, 8)


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _sent(gateway) -> np.ndarray:
    (batch,) = gateway.batches
    return batch


def test_one_multipart_image_answers_one_result(client, gateway):
    resp = client.post("/predict", data={"image": (io.BytesIO(images.jpeg()), "a.jpg")})
    assert resp.status_code == 200, resp.json
    body = resp.json
    assert body["model"] == {"name": "resnet50v2", "version": "1"}
    assert body["label"] == body["predictions"][0]["label"]
    assert [p["label"] for p in body["predictions"]] != [] and "results" not in body
    np.testing.assert_array_equal(_sent(gateway)[0], load_image(images.jpeg(), SIZE))


def test_several_multipart_images_answer_in_order(client, gateway):
    red, blue = (np.full((10, 10, 3), c, np.uint8) for c in ((255, 0, 0), (0, 0, 255)))
    files = [(io.BytesIO(images.encode(images.Image.fromarray(a), "PNG")), f"{i}.png")
             for i, a in enumerate((red, blue, red))]  # fmt: skip
    resp = client.post("/predict", data={"image": files})
    assert resp.status_code == 200
    labels = [r["label"] for r in resp.json["results"]]
    assert labels == ["circle", "triangle", "circle"]  # mean red → class 0, blue → class 2
    assert _sent(gateway).shape == (3, *SIZE, 3)


def test_top_k_limits_the_distribution(client):
    resp = client.post("/predict?top_k=2", data={"image": (io.BytesIO(images.jpeg()), "a.jpg")})
    assert len(resp.json["predictions"]) == 2


@pytest.mark.parametrize("top_k", ["0", "-1", "two"])
def test_bad_top_k_is_400(client, top_k):
    resp = client.post(f"/predict?top_k={top_k}", data={"image": (io.BytesIO(images.jpeg()), "a")})
    assert resp.status_code == 400 and resp.json["error"]["code"] == "invalid_top_k"


@pytest.mark.parametrize("instance", ["plain", "dict"])
def test_json_base64_instances(client, gateway, instance):
    b64 = base64.b64encode(images.png_rgba()).decode()
    payload = {"instances": [b64 if instance == "plain" else {"b64": b64}]}
    resp = client.post("/predict", json=payload)
    assert resp.status_code == 200 and len(resp.json["results"]) == 1
    np.testing.assert_array_equal(_sent(gateway)[0], load_image(images.png_rgba(), SIZE))


def test_json_pixel_lists_are_letterboxed_like_files(client, gateway):
    pixels = np.random.default_rng(0).integers(0, 256, (12, 6, 3))
    resp = client.post("/predict", json={"instances": [pixels.tolist()]})
    assert resp.status_code == 200
    np.testing.assert_array_equal(_sent(gateway)[0], letterbox_array(pixels, SIZE))


@pytest.mark.parametrize("orient", ["split", "records"])
def test_dataframe_bodies(client, gateway, orient):
    rows = np.random.default_rng(1).integers(0, 256, (3, 4 * 4 * 3))
    if orient == "split":
        body = {"columns": list(range(rows.shape[1])), "index": [0, 1, 2], "data": rows.tolist()}
    else:
        body = [{str(i): int(v) for i, v in enumerate(r)} for r in rows]
    resp = client.post("/predict", json=body)
    assert resp.status_code == 200 and len(resp.json["results"]) == 3
    np.testing.assert_array_equal(
        _sent(gateway)[1], letterbox_array(rows[1].reshape(4, 4, 3), SIZE)
    )


def test_dataframe_gray_rows_with_a_shape(client, gateway):
    rows = np.arange(2 * 6 * 4).reshape(2, 24) % 256
    resp = client.post("/predict?shape=6,4,1", json={"data": rows.tolist()})
    assert resp.status_code == 200
    gray = np.repeat(rows[0].reshape(6, 4, 1), 3, axis=2)
    np.testing.assert_array_equal(_sent(gateway)[0], letterbox_array(gray, SIZE))


@pytest.mark.parametrize("arr", [np.zeros((5, 7, 3), np.uint8), np.zeros((2, 5, 7, 3), np.float32)])
def test_npy_single_and_batch(client, gateway, arr):
    resp = client.post("/predict", data=_npy(arr), content_type="application/x-npy")
    assert resp.status_code == 200
    assert len(resp.json["results"]) == (1 if arr.ndim == 3 else 2)


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"data": {"file": (io.BytesIO(images.jpeg()), "a.jpg")}}, 400, "missing_field"),
        ({"data": {"image": (io.BytesIO(b""), "a.jpg")}}, 400, "empty_file"),
        ({"data": {"image": (io.BytesIO(images.TEXT_AS_JPG), "a.jpg")}}, 400, "not_an_image"),
        ({"data": {"image": (io.BytesIO(images.truncated_jpeg()), "a.jpg")}}, 400, "corrupt_image"),
        ({"data": {"image": (io.BytesIO(images.decompression_bomb()), "b.png")}}, 413,
         "image_too_large"),
        ({"data": b"{not json", "content_type": "application/json"}, 400, "invalid_json"),
        ({"json": {"instances": ["%%%"]}}, 400, "invalid_base64"),
        ({"json": {"instances": "x"}}, 422, "invalid_instances"),
        ({"json": {"instances": [42]}}, 422, "invalid_instance"),
        ({"json": {"instances": []}}, 400, "no_images"),
        ({"json": {"something": "else"}}, 422, "invalid_body"),
        ({"json": {"instances": [[[1, 2], [3, 4]]]}}, 422, "invalid_shape"),
        ({"json": {"instances": [[[[[1, 2, 3]]]]]}}, 422, "invalid_shape"),
        ({"json": {"instances": [[[[1, 2, 3, 4]]]]}}, 422, "invalid_channels"),
        ({"json": {"instances": [[[[0, 0, 300]]]]}}, 422, "out_of_range"),
        ({"json": {"instances": [[[["a", "b", "c"]]]]}}, 422, "invalid_pixels"),
        ({"json": {"instances": [[[[0, 1], [2]]]]}}, 422, "invalid_pixels"),
        ({"json": {"data": [[1, 2, 3, 4, 5]]}}, 422, "invalid_shape"),
        ({"json": {"data": [[1, 2, 3]]}, "query_string": {"shape": "2,2,3"}}, 422, "invalid_shape"),
        ({"json": {"data": [[1]]}, "query_string": {"shape": "a,b"}}, 422, "invalid_shape"),
        ({"json": {"data": [[1]]}, "query_string": {"shape": "1,1,2"}}, 422, "invalid_shape"),
        ({"data": b"not npy", "content_type": "application/x-npy"}, 400, "invalid_npy"),
        ({"data": _npy(np.zeros((3, 3))), "content_type": "application/x-npy"}, 422,
         "invalid_shape"),
        ({"data": _npy(np.full((2, 2, 3), np.nan)), "content_type": "application/x-npy"}, 422,
         "invalid_pixels"),
        ({"data": b"hello", "content_type": "text/plain"}, 415, "unsupported_media_type"),
        ({"json": {"instances": [[[[0, 0, 0]]]] * 9}}, 413, "too_many_images"),
    ],
)  # fmt: skip
def test_bad_bodies_get_a_clear_json_error(client, gateway, kwargs, status, code):
    resp = client.post("/predict", **kwargs)
    assert resp.status_code == status, resp.json
    assert resp.json["error"]["code"] == code and resp.json["error"]["message"]
    assert gateway.batches == []  # nothing reached the model


def test_npz_archives_are_refused(client):
    buf = io.BytesIO()
    np.savez(buf, a=np.zeros((2, 2, 3)))
    resp = client.post("/predict", data=buf.getvalue(), content_type="application/x-npy")
    assert resp.status_code == 400 and resp.json["error"]["code"] == "invalid_npy"


@pytest.mark.parametrize(
    ("status", "code", "retry"),
    [
        (503, "triton_unavailable", True),
        (504, "triton_timeout", False),
        (502, "triton_error", False),
    ],
)
def test_gateway_errors_map_to_json_statuses(client, gateway, status, code, retry):
    from imgcls.gateway.errors import ApiError

    gateway.error = ApiError(status, code, "from the gateway", retry_after=2 if retry else None)
    resp = client.post("/predict", data={"image": (io.BytesIO(images.jpeg()), "a.jpg")})
    assert resp.status_code == status and resp.json["error"]["code"] == code
    assert ("Retry-After" in resp.headers) is retry


def test_readyz_reports_model_and_labels(client):
    resp = client.get("/readyz")
    assert resp.status_code == 200
    assert resp.json == {
        "status": "ready",
        "model": {"name": "resnet50v2", "version": "1"},
        "labels": ["circle", "square", "triangle"],
    }


def test_every_response_carries_a_request_id(client):
    resp = client.post("/predict", data={"image": (io.BytesIO(images.jpeg()), "a.jpg")})
    assert len(resp.headers["X-Request-ID"]) == 32
