"""The training loop of the train stage: distributed steps that sum exactly over replicas, epochs,
early stopping on val_loss, DVCLive logs and one progress line per epoch.

A loop of our own rather than ``model.fit``: Keras 3's ``fit`` fails under
MultiWorkerMirroredStrategy (keras-team/keras#20585, tensorflow#72388).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .common import quiet_tensorflow

quiet_tensorflow()
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from .network import augmenter  # noqa: E402
from .tfdata import outlier_files, training_data, validation_data  # noqa: E402

if TYPE_CHECKING:
    from .train_params import TrainParams


def outlier_loss(probs):
    """Per image: the cross-entropy of the answer to the uniform one (outlier exposure),
    −mean_k log p_k; its least, log K, is reached by a flat answer."""
    return -tf.reduce_mean(tf.math.log(tf.clip_by_value(probs, 1e-7, 1.0)), axis=-1)


class Steps:
    """One distributed training step and one evaluation step, each returning the sums
    (loss, correct, images) over every replica's images of the classes, so an epoch's means are
    exact. With an ``outlier_weight`` (``train.outliers``), a label of −1 marks an outlier: it adds
    ``outlier_weight`` × ``outlier_loss`` to the loss trained on, and nothing to the sums."""

    def __init__(self, model, optimizer, strategy: tf.distribute.Strategy, global_batch: int,
                 outlier_weight: float | None = None):  # fmt: skip
        self.model, self.optimizer, self.strategy = model, optimizer, strategy
        self.global_batch, self.outlier_weight = global_batch, outlier_weight

    @staticmethod
    def _sums(labels, probs):
        per_image = keras.losses.sparse_categorical_crossentropy(labels, probs)
        hits = tf.equal(tf.argmax(probs, axis=-1, output_type=tf.int32), labels)
        count = tf.cast(tf.size(labels), tf.float32)
        sums = tf.stack([tf.reduce_sum(per_image), tf.reduce_sum(tf.cast(hits, tf.float32)), count])
        return per_image, sums

    def _objective(self, labels, probs):
        """(per-image loss to train on, sums of the images of the classes)."""
        if self.outlier_weight is None:  # no outliers: the plain loss
            return self._sums(labels, probs)
        known = labels >= 0
        per_image, sums = self._sums(tf.boolean_mask(labels, known), tf.boolean_mask(probs, known))
        extra = self.outlier_weight * outlier_loss(tf.boolean_mask(probs, ~known))
        return tf.concat([per_image, extra], 0), sums

    def _train_replica(self, images, labels):
        with tf.GradientTape() as tape:
            probs = tf.cast(self.model(images, training=True), tf.float32)
            per_image, sums = self._objective(labels, probs)
            loss = tf.nn.compute_average_loss(per_image, global_batch_size=self.global_batch)
            scaled = self.optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, self.model.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables, strict=True))
        return sums

    def _eval_replica(self, images, labels):
        """A replica's sums; zeros for the empty batch a worker gets when the last global batch
        has fewer images than replicas need (calling the model on it fails in oneDNN)."""

        def sums():
            probs = tf.cast(self.model(images, training=False), tf.float32)
            return self._sums(labels, probs)[1]

        return tf.cond(tf.size(labels) > 0, sums, lambda: tf.zeros(3))

    @tf.function
    def train(self, iterator):
        sums = self.strategy.run(self._train_replica, args=next(iterator))
        return self.strategy.reduce("SUM", sums, axis=None)

    @tf.function
    def evaluate(self, iterator):
        sums = self.strategy.run(self._eval_replica, args=next(iterator))
        return self.strategy.reduce("SUM", sums, axis=None)


def run_epoch(step, iterator, steps: int) -> tuple[float, float]:
    """Mean loss and accuracy over ``steps`` distributed steps."""
    total = np.zeros(3)
    for _ in range(steps):
        total += step(iterator).numpy()
    return total[0] / max(total[2], 1.0), total[1] / max(total[2], 1.0)


@dataclass
class EarlyStopping:
    """Keep the weights of the lowest val_loss; stop after ``patience`` epochs without one."""

    patience: int
    best_loss: float = math.inf
    best_weights: list | None = None
    waited: int = 0

    def update(self, val_loss: float, model: keras.Model) -> bool:
        """Record this epoch; True when training should stop."""
        if val_loss < self.best_loss:
            self.best_loss, self.best_weights, self.waited = val_loss, model.get_weights(), 0
            return False
        self.waited += 1
        return self.waited >= self.patience


def epoch_line(epoch: int, epochs: int, logs: dict[str, float], started: float, rate: float):
    parts = " ".join(f"{k}={v:.4f}" for k, v in logs.items())
    print(
        f"epoch {epoch + 1}/{epochs} {parts} {rate:.0f} img/s ({time.monotonic() - started:.0f}s)",
        flush=True,
    )


@dataclass(frozen=True)
class Run:
    """What one training run needs besides the model: data, settings, where it writes."""

    prepared: Path
    params: TrainParams
    image_size: int
    num_val: int
    cache_dir: Path
    strategy: tf.distribute.Strategy
    live_dir: Path | None  # None on workers other than the chief: they write nothing
    on_epoch: Callable[[int, dict[str, float]], None] | None = None  # e.g. a search's pruner


def fit(model: keras.Model, optimizer, run: Run) -> tuple[list[dict[str, float]], list]:
    """The epoch loop: per-epoch history, and the weights of the lowest val_loss.

    With outliers (``train.outliers``), the first ``from_epoch`` epochs train on the classes
    alone, as without them (a network from scratch learns the classes far more slowly with
    outliers from the first step: docs/monitoring.md has the measurement); then each batch mixes
    them in, and the checkpoint is the lowest val_loss of those exposed epochs. Early stopping
    before them only brings them forward."""
    from dvclive import Live

    params, strategy = run.params, run.strategy
    augment = augmenter(params.augment, params.seed)
    outliers = params.outliers.per_batch(params.batch_size) if outlier_files(run.prepared) else 0
    exposed_from = min(params.outliers.from_epoch, params.epochs - 1) if outliers else None
    if outliers:
        print(f"train: from epoch {exposed_from + 1}, {outliers} of each {params.batch_size} "
              f"images are outliers (weight {params.outliers.weight:g})", flush=True)  # fmt: skip

    def batches(mixed_in: int):
        return iter(strategy.distribute_datasets_from_function(
            lambda ctx: training_data(
                run.prepared, run.image_size, batch_size=params.batch_size, seed=params.seed,
                cache=params.cache, cache_dir=run.cache_dir, augment=augment,
                outliers=mixed_in, context=ctx,
            )
        ))  # fmt: skip

    train_it = batches(0 if exposed_from else outliers)
    val_it = iter(
        strategy.experimental_distribute_dataset(
            validation_data(run.prepared, run.image_size, batch_size=params.batch_size,
                            cache=params.cache, cache_dir=run.cache_dir)
        )
    )  # fmt: skip
    val_steps = max(1, -(-run.num_val // params.batch_size))
    weight = params.outliers.weight if outliers else None
    steps = Steps(model, optimizer, strategy, params.batch_size, weight)
    stopper, history, started = EarlyStopping(params.patience), [], time.monotonic()
    live = None
    if run.live_dir is not None:
        live = Live(str(run.live_dir), dvcyaml=None, save_dvc_exp=False, report=None)
    try:
        for epoch in range(params.epochs):
            if exposed_from and epoch >= exposed_from:
                # created only now: the augmentation's seeded stream stays the plain run's before
                train_it, exposed_from = batches(outliers), None
                stopper = EarlyStopping(params.patience)
                print(f"train: outliers join the batches from epoch {epoch + 1}", flush=True)
            t0 = time.monotonic()
            loss, acc = run_epoch(steps.train, train_it, params.steps_per_epoch)
            rate = params.steps_per_epoch * params.batch_size / (time.monotonic() - t0)
            val_loss, val_acc = run_epoch(steps.evaluate, val_it, val_steps)
            logs = {"accuracy": acc, "loss": loss, "val_accuracy": val_acc, "val_loss": val_loss}
            history.append({**logs, "train_img_per_s": rate})
            if live is not None:
                log_epoch(live, logs)
            epoch_line(epoch, params.epochs, logs, started, rate)
            if run.on_epoch is not None:
                run.on_epoch(epoch, logs)
            if stopper.update(val_loss, model):
                if not exposed_from:
                    break
                exposed_from = epoch + 1  # the plain epochs stopped improving: expose now
    finally:
        if live is not None:
            live.end()
    return history, stopper.best_weights


def log_epoch(live, logs: dict[str, float]) -> None:
    """The names DVCLive's Keras callback used, so plots and ``dvc metrics`` keep their keys."""
    for name, key in (
        ("train/accuracy", "accuracy"),
        ("train/loss", "loss"),
        ("eval/accuracy", "val_accuracy"),
        ("eval/loss", "val_loss"),
    ):
        live.log_metric(name, logs[key])
    live.next_step()
