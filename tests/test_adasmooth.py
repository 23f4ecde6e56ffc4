"""AdaSmooth on convex problems: it must converge, and adapt its decay to the effective ratio."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

from model_preparation.adasmooth import AdaSmooth

pytestmark = pytest.mark.slow  # imports TensorFlow (Keras' backend): not for the seconds tier


def _minimise(optimizer, steps: int, scales=(1.0, 10.0, 0.1), target=(3.0, -2.0, 0.5)):
    """Ill-conditioned quadratic Σ s_i (x_i - t_i)²; returns the final x."""
    x = keras.Variable(np.zeros(3, np.float32))
    s = np.asarray(scales, np.float32)
    t = np.asarray(target, np.float32)
    for _ in range(steps):
        with np.errstate(over="ignore", invalid="ignore"):  # SGD is expected to blow up here
            grad = 2 * s * (x.numpy() - t)
        optimizer.apply_gradients([(keras.ops.convert_to_tensor(grad), x)])
    return x.numpy(), t


def test_converges_on_an_ill_conditioned_quadratic():
    x, target = _minimise(AdaSmooth(learning_rate=0.05), steps=600)
    np.testing.assert_allclose(x, target, atol=0.05)


def test_step_size_does_not_depend_on_the_gradient_scale():
    # Multiplying the objective by 1000 makes plain SGD diverge at this learning rate, while
    # AdaSmooth normalises by its running RMS of gradients and converges the same way.
    x_sgd, target = _minimise(keras.optimizers.SGD(0.05), steps=20, scales=(1000.0, 10000.0, 100.0))
    x_ada, _ = _minimise(AdaSmooth(0.05), steps=600, scales=(1000.0, 10000.0, 100.0))
    np.testing.assert_allclose(x_ada, target, atol=0.05)
    assert not np.all(np.abs(x_sgd - target) < 1.0)


def test_trains_a_logistic_regression_with_keras_fit():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 4)).astype("float32")
    y = (x @ np.array([1.5, -2.0, 0.5, 1.0]) > 0).astype("int32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(AdaSmooth(0.05), "sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x, y, epochs=15, batch_size=64, verbose=0)
    assert history.history["loss"][-1] < 0.5 * history.history["loss"][0]
    assert history.history["accuracy"][-1] > 0.95


def test_config_round_trip():
    opt = AdaSmooth(0.01, fast_decay=0.4, slow_decay=0.95, window=7)
    clone = AdaSmooth.from_config(opt.get_config())
    assert (clone.fast_decay, clone.slow_decay, clone.window) == (0.4, 0.95, 7)


def test_rejects_inverted_decays():
    with pytest.raises(ValueError):
        AdaSmooth(fast_decay=0.99, slow_decay=0.5)
