"""Stage ``train``: ResNet50V2 from scratch on the prepared TFRecords.

The exported model takes raw uint8 pixels (``image``) and returns softmax ``probabilities``;
rescaling is inside the model, augmentation only in the training input pipeline, so the graph
that is served is exactly the inference graph.

Built to grow past one machine's memory and one device:
- the training split is streamed from its shards (several read in parallel, interleaved, then a
  bounded shuffle buffer); ``train.cache`` decides whether decoded images are kept: ``none``
  (decode every pass, memory flat whatever the data size), ``file`` (on local disk next to the
  artifacts, removed after the run) or ``memory`` (fastest, grows with the data);
- one training loop runs under whichever ``tf.distribute`` strategy the host offers: a single
  device, every local GPU (MirroredStrategy) or several hosts (MultiWorkerMirroredStrategy, from
  ``TF_CONFIG``). It is a loop of our own rather than ``model.fit`` because Keras 3's ``fit``
  fails under MultiWorkerMirroredStrategy (keras-team/keras#20585, tensorflow#72388);
- ``train.mixed_precision``: ``mixed_bfloat16`` computes in bfloat16 (CPUs with bfloat16 or AMX
  units, and GPUs), ``mixed_float16`` in float16 with loss scaling (GPUs), ``float32`` not at all,
  ``auto`` bfloat16 on a CPU that has those units and no GPU, else float32 (elsewhere bfloat16 is
  emulated, slower); the saved model is always float32.
Every random choice (initial weights, shuffle, augmentation) derives from ``train.seed``, so the
cache mode changes speed and memory, never the trained model.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .common import (
    ARTIFACTS,
    DVCLIVE,
    INPUT_NAME,
    KERAS_MODEL,
    OPTIMIZERS,
    OUTPUT_NAME,
    PREPARED,
    PipelineError,
    load_settings,
    quiet_tensorflow,
    read_json,
    run_cli,
)

quiet_tensorflow()
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from .adasmooth import AdaSmooth  # noqa: E402
from .tfdata import decode, split_files, stream_records  # noqa: E402

CACHES = ("none", "file", "memory")
POLICIES = ("auto", "float32", "mixed_bfloat16", "mixed_float16")  # train.mixed_precision
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # a CPU that computes bfloat16 natively
SHUFFLE_BUFFER = 2048  # images; bounds the shuffle's memory whatever the dataset size


@dataclass(frozen=True)
class AugmentParams:
    flip: bool
    rotation: float  # fraction of a full turn; 0 = off
    contrast: float  # 0 = off


@dataclass(frozen=True)
class TrainParams:
    """params.yaml ``train``."""

    epochs: int
    steps_per_epoch: int
    batch_size: int  # global: split across every replica of every worker
    optimizer: str
    learning_rate: float
    momentum: float  # sgd only
    bn_momentum: float
    patience: int
    seed: int
    cache: str
    mixed_precision: str  # auto, or a Keras policy: float32 | mixed_bfloat16 | mixed_float16
    augment: AugmentParams

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise PipelineError(
                f"train.optimizer {self.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}"
            )
        if self.cache not in CACHES:
            raise PipelineError(f"train.cache {self.cache!r}: choose one of {', '.join(CACHES)}")
        if self.mixed_precision not in POLICIES:
            raise PipelineError(
                f"train.mixed_precision {self.mixed_precision!r}: choose one of "
                f"{', '.join(POLICIES)}"
            )
        for name in ("epochs", "steps_per_epoch", "batch_size"):
            if getattr(self, name) < 1:
                raise PipelineError(f"train.{name} must be at least 1")


def build_model(image_size: int, num_classes: int, bn_momentum: float = 0.9) -> keras.Model:
    """uint8 pixels → Rescaling to [-1, 1] → ResNet50V2 (random init) → softmax.

    BatchNorm momentum is lowered from Keras' 0.99: on short from-scratch runs the moving
    averages otherwise lag the weights and inference-mode accuracy collapses. The head computes
    in float32 even under mixed precision, so the softmax stays exact.
    """
    inputs = keras.Input((image_size, image_size, 3), dtype="uint8", name=INPUT_NAME)
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="rescale")(inputs)
    backbone = keras.applications.ResNet50V2(
        weights=None, include_top=False, input_shape=(image_size, image_size, 3), pooling="avg"
    )
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = bn_momentum
    x = backbone(x)
    outputs = keras.layers.Dense(
        num_classes, activation="softmax", dtype="float32", name=OUTPUT_NAME
    )(x)
    return keras.Model(inputs, outputs, name="resnet50v2_classifier")


def make_optimizer(params: TrainParams) -> keras.optimizers.Optimizer:
    lr = params.learning_rate
    if params.optimizer == "adam":
        optimizer = keras.optimizers.Adam(lr)
    elif params.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(lr, momentum=params.momentum, nesterov=True)
    elif params.optimizer == "adagrad":
        optimizer = keras.optimizers.Adagrad(lr)
    else:
        optimizer = AdaSmooth(lr)
    if precision_policy(params.mixed_precision) == "mixed_float16":  # bf16 needs no scaling
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def augmenter(params: AugmentParams, seed: int) -> keras.Sequential:
    """Flip / rotation / contrast, used on the training batches only, each seeded."""
    layers = []
    if params.flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if params.rotation:
        layers.append(
            keras.layers.RandomRotation(params.rotation, fill_mode="constant", seed=seed + 1)
        )
    if params.contrast:
        layers.append(keras.layers.RandomContrast(params.contrast, seed=seed + 2))
    return keras.Sequential(layers, name="augmentation")


def precision_policy(setting: str, cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The Keras policy for ``train.mixed_precision`` on this machine."""
    if setting != "auto":
        return setting
    if tf.config.list_logical_devices("GPU"):
        return "float32"  # not measured on a GPU here: the user chooses there
    try:
        flags = cpuinfo.read_text().split()
    except OSError:
        return "float32"
    return "mixed_bfloat16" if any(f in flags for f in BF16_CPU_FLAGS) else "float32"


def distribution_strategy() -> tf.distribute.Strategy:
    """Several hosts when ``TF_CONFIG`` names a cluster of two or more tasks, else every local
    GPU when there are several, else the default one-device strategy."""
    cluster = json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster", {})
    if sum(len(tasks) for tasks in cluster.values()) > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def describe(strategy: tf.distribute.Strategy) -> str:
    replicas = strategy.num_replicas_in_sync
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        spec = strategy.cluster_resolver.cluster_spec().as_dict()
        workers = sum(len(tasks) for tasks in spec.values())
        role = f"{strategy.cluster_resolver.task_type} {strategy.cluster_resolver.task_id}"
        return f"{replicas} replicas on {workers} workers (MultiWorkerMirroredStrategy, {role})"
    if isinstance(strategy, tf.distribute.MirroredStrategy):
        return f"{replicas} replicas (MirroredStrategy)"
    return "1 device"


def cached(ds: tf.data.Dataset, mode: str, cache_dir: Path, name: str) -> tf.data.Dataset:
    if mode == "memory":
        return ds.cache()
    if mode == "file":
        return ds.cache(str(cache_dir / name))
    return ds


def training_data(
    prepared: Path,
    image_size: int,
    params: TrainParams,
    cache_dir: Path,
    context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
    """This input pipeline's share of the shuffled, repeated, augmented training batches.

    With several workers each reads its own shards (or every n-th record when there are fewer
    shards than workers); ``.repeat()`` avoids Keras' per-epoch restart cost.
    """
    context = context or tf.distribute.InputContext()
    files = split_files(prepared, "train")
    n, i = context.num_input_pipelines, context.input_pipeline_id
    enough = len(files) >= n
    records = stream_records(files[i::n]) if enough else stream_records(files).shard(n, i)
    ds = cached(decode(records, image_size), params.cache, cache_dir, "train")
    ds = ds.shuffle(SHUFFLE_BUFFER, seed=params.seed).repeat()
    augment = augmenter(params.augment, params.seed)

    def apply(images, labels):
        out = augment(tf.cast(images, tf.float32), training=True)
        return tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8), labels

    batch = context.get_per_replica_batch_size(params.batch_size)
    # Sequential on purpose: the augmentation layers draw from one seeded stream, and parallel
    # calls would take turns at it in a varying order (a cheap step next to a training step).
    return ds.batch(batch).map(apply).prefetch(2)


def validation_data(
    prepared: Path, image_size: int, params: TrainParams, cache_dir: Path
) -> tf.data.Dataset:
    """The whole validation split once per ``ceil(n / batch)`` steps, split across replicas."""
    records = tf.data.TFRecordDataset(split_files(prepared, "val"))
    ds = cached(decode(records, image_size), params.cache, cache_dir, "val")
    ds = ds.batch(params.batch_size).repeat()
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


class Steps:
    """One distributed training step and one evaluation step, each returning the sums
    (loss, correct, images) over every replica, so an epoch's means are exact."""

    def __init__(self, model, optimizer, strategy: tf.distribute.Strategy, global_batch: int):
        self.model, self.optimizer, self.strategy = model, optimizer, strategy
        self.global_batch = global_batch

    @staticmethod
    def _sums(labels, probs):
        per_image = keras.losses.sparse_categorical_crossentropy(labels, probs)
        hits = tf.equal(tf.argmax(probs, axis=-1, output_type=tf.int32), labels)
        count = tf.cast(tf.size(labels), tf.float32)
        sums = tf.stack([tf.reduce_sum(per_image), tf.reduce_sum(tf.cast(hits, tf.float32)), count])
        return per_image, sums

    def _train_replica(self, images, labels):
        with tf.GradientTape() as tape:
            probs = tf.cast(self.model(images, training=True), tf.float32)
            per_image, sums = self._sums(labels, probs)
            loss = tf.nn.compute_average_loss(per_image, global_batch_size=self.global_batch)
            scaled = self.optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, self.model.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables, strict=True))
        return sums

    def _eval_replica(self, images, labels):
        probs = tf.cast(self.model(images, training=False), tf.float32)
        return self._sums(labels, probs)[1]

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


def train(
    prepared: Path,
    out: Path | None,
    params: TrainParams,
    live_dir: Path | None,
    strategy: tf.distribute.Strategy | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """Train; the chief saves the best model (float32, lowest val_loss) to ``out`` and the
    DVCLive logs to ``live_dir`` (either None: not written). ``on_epoch(epoch, logs)`` runs
    after every epoch and may raise to stop the run (a pruned search trial does).

    Returns the per-epoch history (the same on every worker)."""
    meta = read_json(prepared / "meta.json")
    size, labels = int(meta["image_size"]), list(meta["labels"])
    strategy = strategy or distribution_strategy()
    chief = strategy.extended.should_checkpoint
    replicas = strategy.num_replicas_in_sync
    if params.batch_size % replicas:
        raise PipelineError(
            f"train.batch_size {params.batch_size} must be a multiple of the {replicas} replicas"
        )
    policy = precision_policy(params.mixed_precision)
    print(f"train: {describe(strategy)}, cache={params.cache}, {policy}", flush=True)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(tempfile.mkdtemp(prefix=".train-cache-", dir=ARTIFACTS))
    run = Run(
        prepared,
        params,
        size,
        int(meta["num_val"]),
        cache_dir,
        strategy,
        live_dir if chief else None,
        on_epoch,
    )
    keras.utils.set_random_seed(params.seed)
    keras.mixed_precision.set_global_policy(policy)
    try:
        with strategy.scope():
            model = build_model(size, len(labels), params.bn_momentum)
            optimizer = make_optimizer(params)
        history, best = fit(model, optimizer, run)
    finally:
        keras.mixed_precision.set_global_policy("float32")
        shutil.rmtree(cache_dir, ignore_errors=True)
    if chief and out is not None:
        final = build_model(size, len(labels), params.bn_momentum)  # plain float32, no strategy
        final.set_weights(best)
        out.parent.mkdir(parents=True, exist_ok=True)
        final.save(out)
        print(f"train: best model (lowest val_loss) saved to {out}")
    return history


def fit(model: keras.Model, optimizer, run: Run) -> tuple[list[dict[str, float]], list]:
    """The epoch loop: per-epoch history, and the weights of the lowest val_loss."""
    from dvclive import Live

    params, strategy = run.params, run.strategy
    train_it = iter(
        strategy.distribute_datasets_from_function(
            lambda ctx: training_data(run.prepared, run.image_size, params, run.cache_dir, ctx)
        )
    )
    val_it = iter(
        strategy.experimental_distribute_dataset(
            validation_data(run.prepared, run.image_size, params, run.cache_dir)
        )
    )
    val_steps = max(1, -(-run.num_val // params.batch_size))
    steps = Steps(model, optimizer, strategy, params.batch_size)
    stopper, history, started = EarlyStopping(params.patience), [], time.monotonic()
    live = None
    if run.live_dir is not None:
        live = Live(str(run.live_dir), dvcyaml=None, save_dvc_exp=False, report=None)
    try:
        for epoch in range(params.epochs):
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
                break
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


def main() -> None:
    train(PREPARED, KERAS_MODEL, load_settings(TrainParams, "train"), DVCLIVE)


if __name__ == "__main__":
    run_cli(main)
