"""The robustness stage: the attacks themselves, and the stage's curve in the tiny project."""

from __future__ import annotations

import csv
import itertools
import json

import numpy as np
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def random_model():
    """A ResNet50V2 classifier with random weights (nothing learned)."""
    import keras

    from model_preparation.robustness import float_input_model, input_gradient
    from model_preparation.train import build_model

    keras.utils.set_random_seed(3)
    model = build_model(32, 3)
    return model, input_gradient(float_input_model(model), batch_size=8)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(5).integers(0, 256, (24, 32, 32, 3), dtype=np.uint8)


@pytest.mark.parametrize("eps", [1, 2.5, 8])
def test_attacks_stay_within_epsilon_and_are_valid_images(random_model, images, eps):
    from model_preparation.robustness import fgsm, pgd

    _model, grad = random_model
    labels = np.zeros(len(images), np.int32)
    first = grad(images.astype(np.float32), labels)
    for adv in (
        fgsm(images, first, eps),
        pgd(grad, images, labels, eps, 3, 0.5, first),
        pgd(grad, images, labels, eps, 3, 0.5, rng=np.random.default_rng(0)),  # random start
    ):
        assert adv.dtype == np.uint8 and adv.shape == images.shape
        delta = np.abs(adv.astype(np.int16) - images.astype(np.int16))
        assert delta.max() <= eps
        assert (delta > 0).mean() > 0.3  # the attack did move pixels (not clipped away)


def test_a_random_model_is_not_robust_by_accident(random_model, images):
    """Gradients must reach the pixels with the right sign: on a network with random weights
    (which answers one class for nearly everything, so accuracy says little), FGSM must raise
    the loss of almost every image. A uint8 cast, a clip or a sign error that hid the gradient
    would leave the loss where it was or lower it."""
    from model_preparation.robustness import fgsm

    model, grad = random_model
    labels = model.predict(images, verbose=0).argmax(axis=1).astype(np.int32)
    adv = fgsm(images, grad(images.astype(np.float32), labels), 8)

    def loss(x):
        p = model.predict(x, verbose=0)[np.arange(len(labels)), labels]
        return -np.log(np.maximum(p, 1e-12))

    clean, attacked = loss(images), loss(adv)
    assert (attacked > clean).mean() >= 0.9, (clean, attacked)


def test_the_stage_curve_starts_at_the_evaluated_accuracy_and_falls(tiny_project):
    reports = tiny_project / "artifacts/reports"
    clean = json.loads((reports / "metrics.json").read_text())["accuracy"]
    int8 = json.loads((reports / "int8.json").read_text())
    with open(reports / "robustness.csv", encoding="utf-8") as fh:
        rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]
    assert rows[0]["epsilon"] == 0
    assert rows[0]["fgsm_fp32"] == rows[0]["pgd_fp32"] == clean  # exactly the evaluate stage's
    assert rows[0]["pgd_int8"] == int8["int8_accuracy"]  # and the quantize stage's INT8 figure
    last = rows[-1]
    assert last["epsilon"] == max(r["epsilon"] for r in rows)
    assert last["pgd_fp32"] < clean and last["pgd_int8"] < rows[0]["pgd_int8"]
    for model in ("fp32", "int8"):
        pgd = [r[f"pgd_{model}"] for r in rows]
        fgsm = [r[f"fgsm_{model}"] for r in rows]
        assert all(b <= a + 0.05 for a, b in itertools.pairwise(pgd)), pgd  # monotone-ish
        assert np.mean(pgd) <= np.mean(fgsm) + 1e-9, (pgd, fgsm)  # PGD at least as strong
    metrics = json.loads((reports / "robustness.json").read_text())
    assert metrics["num_images"] == json.loads((reports / "metrics.json").read_text())["num_images"]
    assert (reports / "robustness.png").stat().st_size > 1000
    from PIL import Image

    with Image.open(reports / "robustness_attention.png") as picture:  # clean | attacked, 4 rows
        assert picture.width >= 400 and picture.height >= 400


def test_the_attention_picture_shows_each_fooled_image_clean_and_attacked(tmp_path):
    from PIL import Image

    from model_preparation.onnx_utils import session
    from model_preparation.robustness import EXAMPLES, attention_picture
    from tests.models import tiny_onnx

    sess = session(tiny_onnx(tmp_path / "m.onnx", size=16))  # class = the brightest channel
    images = np.zeros((6, 16, 16, 3), np.uint8)
    images[..., 0] = 200  # all "a" (red), rightly
    attacked = images.copy()
    attacked[..., 0], attacked[..., 1] = 0, 200  # turned into "b" (green)
    labels = np.zeros(6, np.int64)
    attention_picture(sess, images, labels, 8.0, attacked, ("a", "b", "c"), tmp_path / "p.png")
    with Image.open(tmp_path / "p.png") as picture:
        assert picture.height >= 2.2 * EXAMPLES * 100 * 0.9  # one row per fooled image, 4 shown
