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


def test_a_warm_start_frees_the_model_it_read():
    """The serving version's network, read to copy its weights, is gone when ``warm_start``
    returns: left to the collector, it was found after training and freeing it then took 28 s of a
    120-step fine-tune (the grown project's, 2026-12-04)."""
    import gc
    import tempfile
    from pathlib import Path

    from model_preparation.network import build_model
    from model_preparation.warmstart import warm_start

    def models() -> list[keras.Model]:
        return [o for o in gc.get_objects() if isinstance(o, keras.Model)]

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        build_model(32, 2).save(path)
        gc.collect()
        model = build_model(32, 3)
        before = {id(m) for m in models()}  # ours, and whatever other tests of this worker hold
        source = {"model": "resnet50v2", "version": 1, "path": str(path), "labels": ["a", "b"]}
        said = warm_start(model, source, ["a", "b", "c"])
    assert said.endswith("the head of 2 classes (new, from random: c)"), said
    left = [m for m in models() if id(m) not in before]
    assert not left, left
