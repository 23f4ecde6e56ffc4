"""``train.augment``: each setting is one random change of the training images, off at 0, within
the pixel range, seeded; none of them is in the served graph (the augmenter is the input
pipeline's, ``network.augmenter``)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import yaml

from tests.builds import REPO

PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())["train"]["augment"]
STRONG = {"rotation": 0.2, "contrast": 0.5, "zoom_out": 1.0, "zoom_in": 0.5, "translate": 0.3,
          "stretch": 1.0, "noise": 24.0, "blur": 2.0, "brightness": 0.3}  # fmt: skip


def settings(**changes):
    from model_preparation.train_params import AugmentParams

    off = {k: (False if isinstance(v, bool) else 0.0) for k, v in PARAMS.items()}
    return AugmentParams(**{**off, **changes})


def images() -> np.ndarray:
    x = np.full((8, 32, 32, 3), 60.0, np.float32)
    x[:, 10:22, 10:22] = 200.0  # a bright square, centred
    return x


def augment(params, seed: int = 1) -> np.ndarray:
    from model_preparation.network import augmenter

    return np.asarray(augmenter(params, seed)(images(), training=True))


def test_every_setting_has_a_strong_value_here():
    assert set(STRONG) | {"flip"} == {f.name for f in dataclasses.fields(settings())}


def test_all_off_changes_nothing():
    from model_preparation.network import augmenter

    assert [type(layer).__name__ for layer in augmenter(settings(), 1).layers] == ["Identity"]
    np.testing.assert_array_equal(augment(settings()), images())


@pytest.mark.parametrize("name", sorted(STRONG))
def test_each_setting_changes_the_images_and_keeps_shape_and_range(name):
    out = augment(settings(**{name: STRONG[name]}))
    assert out.shape == images().shape
    assert out.min() >= -1e-3 and out.max() <= 255 + 1e-3
    assert np.abs(out - images()).max() > 10, name  # (blur: only half the images, at edges)


def test_zoom_out_makes_the_object_smaller_and_the_same_seed_repeats():
    params = settings(zoom_out=1.0)
    out = augment(params)
    area = (images()[..., 0] > 130).sum(axis=(1, 2))
    assert ((out[..., 0] > 130).sum(axis=(1, 2)) < area).mean() >= 0.75  # most images shrank
    np.testing.assert_allclose(augment(params), out)  # seeded: the run is reproducible


def test_every_setting_works_under_the_mixed_precision_policies_and_stays_float32():
    """train.mixed_precision sets Keras' global policy before the augmenter is built."""
    import keras

    params = settings(flip=True, **STRONG)
    try:
        for policy in ("mixed_bfloat16", "mixed_float16"):
            keras.mixed_precision.set_global_policy(policy)
            out = augment(params)
            assert out.dtype == np.float32 and out.shape == images().shape, policy
    finally:
        keras.mixed_precision.set_global_policy("float32")
