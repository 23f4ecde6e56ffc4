"""``train.pixels``: the served graph's first layer. ``standardize`` gives the network the same
input for an image, a darker copy and a paler one (PIL's own brightness and contrast), which
``rescale`` does not; a one-colour image becomes zeros; a saved model loads back with it; a
value that is not a choice stops the stage naming the key."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import yaml
from PIL import Image, ImageEnhance

from tests.builds import REPO

TRAIN = yaml.safe_load((REPO / "params.yaml").read_text())["train"]


def _photo() -> np.ndarray:
    rng = np.random.default_rng(0)
    img = np.full((32, 32, 3), (90, 140, 60), np.uint8)
    img[8:24, 10:20] = (230, 40, 40)
    return np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)


def _relit(pixels: np.ndarray) -> list[np.ndarray]:
    img = Image.fromarray(pixels)
    return [np.asarray(ImageEnhance.Brightness(img).enhance(0.5)),
            np.asarray(ImageEnhance.Contrast(img).enhance(0.4))]  # fmt: skip


@pytest.fixture(scope="module")
def models() -> dict:
    """One network per choice (a ResNet50V2 takes seconds to build)."""
    from model_preparation.network import build_model

    return {pixels: build_model(32, 3, pixels=pixels) for pixels in ("rescale", "standardize")}


def _first_layer(model, batch: np.ndarray) -> np.ndarray:
    return np.asarray(model.layers[1](batch))


def test_standardize_sees_the_same_image_in_any_light_and_rescale_does_not(models):
    photo = _photo()
    batch = np.stack([photo, *_relit(photo)])
    standardized = _first_layer(models["standardize"], batch)
    for relit in standardized[1:]:  # equal but for uint8 rounding of the darker/paler copy
        assert np.abs(relit - standardized[0]).mean() < 0.03
    rescaled = _first_layer(models["rescale"], batch)
    for relit in rescaled[1:]:
        assert np.abs(relit - rescaled[0]).mean() > 0.1


def test_a_one_colour_image_is_zeros_and_a_faint_one_is_not_blown_up(models):
    flat = np.full((1, 32, 32, 3), 128, np.uint8)
    assert not _first_layer(models["standardize"], flat).any()
    faint = flat.copy()
    faint[0, 0, 0] = 129  # one grey level on one pixel
    assert np.abs(_first_layer(models["standardize"], faint)).max() < 0.3


def test_a_saved_model_with_the_layer_loads_back_and_answers_the_same(models, tmp_path):
    from model_preparation.pixel_layers import load_model

    model = models["standardize"]
    model.save(tmp_path / "m.keras")
    batch = np.stack([_photo(), *_relit(_photo())])
    again = load_model(tmp_path / "m.keras")
    assert again.layers[1].name == "standardize"
    np.testing.assert_allclose(again.predict(batch, verbose=0), model.predict(batch, verbose=0),
                               atol=1e-6)  # fmt: skip


def test_an_unknown_pixels_value_names_the_key():
    from imgcls.params import load_settings
    from model_preparation.common import PipelineError
    from model_preparation.train_params import TrainParams

    params = load_settings(TrainParams, "train")
    assert params.pixels == TRAIN["pixels"]
    with pytest.raises(PipelineError, match=r"train\.pixels 'normalize'"):
        dataclasses.replace(params, pixels="normalize")
