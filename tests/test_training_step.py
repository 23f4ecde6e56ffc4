"""The training step is traced once: ``tf.function`` traces a step a second time when the first
call creates a variable (an optimizer's slots, built lazily), and for ResNet50V2 a trace is most of
a short training's cost (a search trial, an experiment; docs/testing.md)."""

from __future__ import annotations

import os
from types import SimpleNamespace

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
import tensorflow as tf

from model_preparation.common import OPTIMIZERS
from model_preparation.loop import Steps
from model_preparation.network import _optimizer, make_optimizer

pytestmark = pytest.mark.slow  # imports TensorFlow: not for the seconds tier


def _model() -> keras.Model:
    return keras.Sequential([
        keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3), keras.layers.BatchNormalization(),
        keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3, activation="softmax"),
    ])  # fmt: skip


def _traces(model: keras.Model, optimizer, steps: int = 3) -> int:
    """How many times the project's training step was traced over ``steps`` calls."""
    rng = np.random.default_rng(0)
    batch = (rng.random((8, 8, 8, 3), np.float32), rng.integers(0, 3, 8).astype(np.int32))
    data = iter(tf.data.Dataset.from_tensors(batch).repeat())
    step = Steps(model, optimizer, tf.distribute.get_strategy(), global_batch=8)
    for _ in range(steps):
        step.train(data)
    return step.train.experimental_get_tracing_count()


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_the_training_step_is_traced_once_with_every_optimizer(name):
    model = _model()
    params = SimpleNamespace(optimizer=name, learning_rate=0.01, momentum=0.9)
    before = [v.numpy().copy() for v in model.trainable_variables]
    assert _traces(model, make_optimizer(params, "float32", model.trainable_variables)) == 1
    after = model.trainable_variables
    assert any(not np.array_equal(b, a.numpy()) for b, a in zip(before, after, strict=True))


def test_the_loss_scaled_optimizer_is_built_too():
    model = _model()
    params = SimpleNamespace(optimizer="adam", learning_rate=0.01, momentum=0.9)
    optimizer = make_optimizer(params, "mixed_float16", model.trainable_variables)
    assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    assert _traces(model, optimizer) == 1


def test_an_optimizer_left_to_build_itself_traces_the_step_twice():
    """The control: what the build in ``make_optimizer`` saves."""
    model = _model()
    params = SimpleNamespace(optimizer="adam", learning_rate=0.01, momentum=0.9)
    assert _traces(model, _optimizer(params, "float32")) == 2
