"""Explanations of the served model: on the real Triton (FP32 and INT8) POST /explain returns the
occlusion map ONNX Runtime computes from the served file; on the tiny pipeline's held-out demo
images the map points inside the shape (the pointing game), while a random-weight copy of the
model and a model trained on shuffled labels fail that check."""

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
# The suite's tiny stand-in model (300 steps at 48²) is held to less than the 0.8, which is
# the demo model's goal (docs/explain.md): it pointed 0.800 trained in bfloat16 (a CPU with AMX)
# and 0.793 in float32, as `train.mixed_precision: auto` trains on a CPU without bfloat16 units
# (2026-12-04). Its controls point 0.49 (label-shuffled) and 0.0 (random weights).
TINY_POINTING = 0.75


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


def test_the_map_points_at_the_shape_and_control_models_do_not(tiny_project, shuffled_control,
                                                                tmp_path):  # fmt: skip
    """The label-shuffled control is the suite's shared one (trained once, tests/builds.py, by
    the tool's own ``label_shuffled``)."""
    out = tmp_path / "explain.json"
    printed = run(["python", "-m", "model_preparation.tools.pointing", "--limit", "150",
                   "--label-shuffled-model", str(shuffled_control), "--out", str(out)],
                  tiny_project).stdout  # fmt: skip
    print("\n" + "\n".join(printed.strip().splitlines()[-3:]))
    result = json.loads(out.read_text())
    served, controls = result["served"], result["controls"]
    assert served["images"] == 150
    assert served["pointing"] >= TINY_POINTING
    assert served["mass_inside"] > served["uniform_inside"] + 0.1
    assert set(controls) == {"random_weights", "label_shuffled"}
    for control in controls.values():
        assert control["images"] == 150
        assert control["pointing"] < 0.8 and control["pointing"] < served["pointing"] - 0.15
    assert "label-shuffled: pointing" in printed and "PASSES" not in printed
    assert not list(tiny_project.glob("data/raw/*/*-*")), "the control's files stay out of data/"
