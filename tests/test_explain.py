"""Explanations of the served model: on the real Triton (FP32 and INT8) POST /explain returns the
occlusion map ONNX Runtime computes from the served file; on the tiny pipeline's held-out demo
images the map points inside the shape (the pointing game), and a random-weight copy of the
model fails that check."""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests

from imgcls.explain import Occlusion
from imgcls.preprocessing import load_image
from imgcls.runtimes import predict
from model_preparation.onnx_utils import session
from tests.conftest import run

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SIZE = 48


@pytest.mark.parametrize("model", ["resnet50v2", "resnet50v2_int8"])
def test_explain_returns_the_map_of_the_served_file(api, tiny_project, model):
    path = sorted((tiny_project / "data/raw/triangle").glob("triangle_*.jpg"))[-1]
    resp = requests.post(f"{api.url}/explain", files={"image": path.read_bytes()},
                         params={"model": model, "overlay": "true"}, timeout=60)  # fmt: skip
    assert resp.status_code == 200, resp.text
    body = resp.json()
    version = body["model"]["version"]
    served = session(tiny_project / f"model_repository/{model}/{version}/model.onnx")
    pixels = load_image(path, SIZE)
    occlusion = Occlusion(SIZE, SIZE)
    probs = predict(served, occlusion.batch(pixels))
    labels = (tiny_project / f"model_repository/{model}/{version}/labels.txt").read_text().split()
    index = labels.index(body["explanation"]["class"])
    assert body["explanation"]["class"] == body["label"] == labels[int(np.argmax(probs[0]))]
    expected = occlusion.heatmap(probs[:, index])
    np.testing.assert_allclose(body["explanation"]["grid"], expected, atol=2e-3)
    assert body["explanation"]["overlay"].startswith("data:image/png;base64,")
    predicted = requests.post(f"{api.url}/predict", files={"image": path.read_bytes()},
                              params={"model": model}, timeout=30).json()  # fmt: skip
    assert predicted["label"] == body["label"]


def test_the_map_points_at_the_shape_and_a_random_model_does_not(tiny_project, tmp_path):
    out = tmp_path / "explain.json"
    printed = run(["python", "-m", "model_preparation.tools.pointing", "--limit", "150",
                   "--out", str(out)], tiny_project).stdout  # fmt: skip
    print("\n" + printed.strip())
    result = json.loads(out.read_text())
    served, noise = result["served"], result["random_weights"]
    assert served["images"] == 150
    assert served["pointing"] >= 0.8
    assert served["mass_inside"] > served["uniform_inside"] + 0.1
    assert noise["pointing"] < 0.8 and noise["pointing"] < served["pointing"] - 0.2
