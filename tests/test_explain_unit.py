"""Occlusion maps (imgcls.explain) and POST /explain at unit speed: the map points where the
answer comes from, the API returns it for the version that answered, with /predict's refusals."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from imgcls.explain import (
    GRID,
    Occlusion,
    mass_inside,
    peak,
    points_inside,
    uniform_inside,
)

SIZE = 32


def _square_image(x0: int, y0: int, side: int = 8, colour=(255, 0, 0)) -> np.ndarray:
    img = np.zeros((SIZE, SIZE, 3), np.uint8)
    img[y0 : y0 + side, x0 : x0 + side] = colour
    return img


def _brightness_model(batch: np.ndarray, box) -> np.ndarray:
    """A 'model' whose class probability is how much of the box is still bright."""
    x0, y0, x1, y1 = box
    return batch[:, y0:y1, x0:x1, 0].mean(axis=(1, 2)) / 255


def test_the_map_peaks_where_the_answer_comes_from():
    box = (20, 4, 28, 12)  # x0, y0, x1, y1
    image = _square_image(20, 4)
    occlusion = Occlusion(SIZE, SIZE)
    batch = occlusion.batch(image)
    assert batch.shape == (len(occlusion.positions) + 1, SIZE, SIZE, 3) == (50, SIZE, SIZE, 3)
    assert (batch[0] == image).all()
    grid = occlusion.heatmap(_brightness_model(batch, box))
    assert grid.shape == (GRID, GRID)
    assert points_inside(grid, box, SIZE)
    assert mass_inside(grid, box, SIZE) > 3 * uniform_inside(box, SIZE)
    assert peak(grid)[0] <= 3 and peak(grid)[1] >= 4  # top right


def test_a_map_that_ignores_the_image_points_nowhere_in_particular():
    grid = np.zeros((GRID, GRID))
    assert mass_inside(grid, (0, 0, 8, 8), SIZE) == 0.0
    assert uniform_inside((0, 0, SIZE, SIZE), SIZE) == pytest.approx(1.0)
    assert uniform_inside((0, 0, SIZE / 2, SIZE / 2), SIZE) == pytest.approx(0.25)
    assert not points_inside(grid, (0, 0, SIZE, SIZE), SIZE)  # even a box that is everything


def test_rounding_in_an_answer_that_ignores_the_image_is_no_map():
    """The random-weight control answers the same to every copy but for float32 rounding (drops
    of 1e-7 whose signs depend on the runtime's threads): that must score as no map at all, while
    a real drop ten times the rounding's bound still points."""
    box = (0, 0, 8, 8)
    occlusion = Occlusion(SIZE, SIZE)
    noisy = np.float32(0.5) + np.random.default_rng(0).choice([-1, 0, 1], 50) * np.float32(6e-8)
    noisy[0] = np.float32(0.5)
    noisy[1] = np.float32(0.5) - np.float32(1.2e-7)  # the first patch covers the box
    grid = occlusion.heatmap(noisy)
    assert not grid.any() and not points_inside(grid, box, SIZE)
    assert mass_inside(grid, box, SIZE) == 0.0
    real = noisy.copy()
    real[1] = np.float32(0.5) - np.float32(1e-5)
    assert points_inside(occlusion.heatmap(real), box, SIZE)


def test_tiny_images_are_refused():
    with pytest.raises(ValueError, match="at least"):
        Occlusion(4, 4)


def _png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def _explain(client, data: bytes, **params):
    return client.post("/explain", data={"image": (io.BytesIO(data), "x.png")},
                       query_string=params)  # fmt: skip


def test_explain_answers_and_points_at_the_red_square(client, gateway):
    # the in-memory model's "circle" is the mean red: hiding the red square takes it away
    image = np.zeros((8, 8, 3), np.uint8)
    image[0:2, 6:8] = (255, 0, 0)
    response = _explain(client, _png(image), overlay="true")
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["label"] == "circle" and body["model"]["version"] == "1"
    explanation = body["explanation"]
    assert explanation["class"] == "circle" and explanation["passes"] == 50
    grid = np.array(explanation["grid"])
    assert grid.shape == (GRID, GRID) and peak(grid) in {(0, 6), (0, 7), (1, 6), (1, 7)}
    png = base64.b64decode(explanation["overlay"].removeprefix("data:image/png;base64,"))
    assert Image.open(io.BytesIO(png)).size == (8, 8)
    assert [len(b) for b in gateway.batches] == [50]  # one batch, one version


def test_a_chosen_class_is_explained_and_an_unknown_one_refused(client):
    image = _png(np.full((8, 8, 3), 40, np.uint8))
    body = _explain(client, image, **{"class": "square"}).get_json()
    assert body["explanation"]["class"] == "square" and "overlay" not in body["explanation"]
    bad = _explain(client, image, **{"class": "dog"})
    assert bad.status_code == 400 and bad.get_json()["error"]["code"] == "unknown_class"
    flag = _explain(client, image, overlay="maybe")
    assert flag.status_code == 400 and flag.get_json()["error"]["code"] == "invalid_overlay"


def test_explain_refuses_what_predict_refuses(client):
    text = client.post("/explain", data={"image": (io.BytesIO(b"not an image"), "x.png")})
    assert text.status_code == 400 and text.get_json()["error"]["code"] == "not_an_image"
    five = [(io.BytesIO(_png(np.zeros((8, 8, 3), np.uint8))), f"{i}.png") for i in range(5)]
    many = client.post("/explain", data={"image": five})
    assert many.status_code == 413 and many.get_json()["error"]["code"] == "too_many_images"
    model = _explain(client, _png(np.zeros((8, 8, 3), np.uint8)), model="nope")
    assert model.status_code == 400 and model.get_json()["error"]["code"] == "unknown_model"
    assert client.post("/explain", data="x", content_type="text/plain").status_code == 415


def test_explain_shares_the_admission_limit(gateway):
    from imgcls_api import create_app

    app = create_app({"max_in_flight": 1})
    app.extensions["triton"] = gateway
    app.extensions["admission"].acquire()  # a prediction in progress
    response = _explain(app.test_client(), _png(np.zeros((8, 8, 3), np.uint8)))
    assert response.status_code == 429 and response.headers["Retry-After"]


def test_masked_copies_are_not_counted_as_answers(client):
    def answered() -> float:
        text = client.get("/metrics").get_data(as_text=True)
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("api_predictions_total{"))  # fmt: skip

    before = answered()
    assert _explain(client, _png(np.zeros((8, 8, 3), np.uint8))).status_code == 200
    assert answered() == before
