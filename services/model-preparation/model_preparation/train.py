"""Stage ``train``: ResNet50V2 from scratch on the prepared TFRecords.

The exported model takes raw uint8 pixels (``image``) and returns softmax ``probabilities``;
rescaling is inside the model, augmentation only in the training input pipeline, so the graph
that is served is exactly the inference graph.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from .common import (
    DVCLIVE,
    INPUT_NAME,
    KERAS_MODEL,
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
import tensorflow as tf  # noqa: E402

from .adasmooth import AdaSmooth  # noqa: E402
from .tfdata import read_split  # noqa: E402

OPTIMIZERS = ("adam", "sgd", "adagrad", "adasmooth")


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
    batch_size: int
    optimizer: str
    learning_rate: float
    momentum: float  # sgd only
    bn_momentum: float
    patience: int
    seed: int
    augment: AugmentParams

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise PipelineError(
                f"train.optimizer {self.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}"
            )


def build_model(image_size: int, num_classes: int, bn_momentum: float = 0.9) -> keras.Model:
    """uint8 pixels → Rescaling to [-1, 1] → ResNet50V2 (random init) → softmax.

    BatchNorm momentum is lowered from Keras' 0.99: on short from-scratch runs the moving
    averages otherwise lag the weights and inference-mode accuracy collapses.
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
    outputs = keras.layers.Dense(num_classes, activation="softmax", name=OUTPUT_NAME)(x)
    return keras.Model(inputs, outputs, name="resnet50v2_classifier")


def make_optimizer(params: TrainParams) -> keras.optimizers.Optimizer:
    lr = params.learning_rate
    if params.optimizer == "adam":
        return keras.optimizers.Adam(lr)
    if params.optimizer == "sgd":
        return keras.optimizers.SGD(lr, momentum=params.momentum, nesterov=True)
    if params.optimizer == "adagrad":
        return keras.optimizers.Adagrad(lr)
    return AdaSmooth(lr)


def augmenter(params: AugmentParams) -> keras.Sequential:
    """Flip / rotation / contrast, used on the training batches only."""
    layers = []
    if params.flip:
        layers.append(keras.layers.RandomFlip("horizontal"))
    if params.rotation:
        layers.append(keras.layers.RandomRotation(params.rotation, fill_mode="constant"))
    if params.contrast:
        layers.append(keras.layers.RandomContrast(params.contrast))
    return keras.Sequential(layers, name="augmentation")


def training_data(prepared: Path, image_size: int, params: TrainParams) -> tf.data.Dataset:
    """Shuffled, repeated, augmented batches (``.repeat()`` avoids Keras' per-epoch restart cost)."""
    augment = augmenter(params.augment)
    batch, seed = params.batch_size, params.seed

    def apply(images, labels):
        out = augment(tf.cast(images, tf.float32), training=True)
        return tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8), labels

    ds = read_split(prepared, "train", image_size).cache().shuffle(2048, seed=seed).repeat()
    return ds.batch(batch).map(apply, num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)


class EpochLine(keras.callbacks.Callback):
    """One readable progress line per epoch on the console."""

    def __init__(self, epochs: int) -> None:
        super().__init__()
        self.epochs = epochs
        self.started = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        parts = " ".join(f"{k}={v:.4f}" for k, v in logs.items() if k != "learning_rate")
        print(
            f"epoch {epoch + 1}/{self.epochs} {parts} ({time.monotonic() - self.started:.0f}s)",
            flush=True,
        )


def train(prepared: Path, out: Path, params: TrainParams, live_dir: Path) -> keras.Model:
    from dvclive import Live
    from dvclive.keras import DVCLiveCallback

    meta = read_json(prepared / "meta.json")
    size, labels = int(meta["image_size"]), list(meta["labels"])
    keras.utils.set_random_seed(params.seed)
    model = build_model(size, len(labels), params.bn_momentum)
    model.compile(
        optimizer=make_optimizer(params),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    epochs, batch = params.epochs, params.batch_size
    val = read_split(prepared, "val", size).batch(batch).cache().repeat()
    val_steps = max(1, -(-int(meta["num_val"]) // batch))
    checkpoint = out.with_suffix(".best.keras")
    callbacks = [
        keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=params.patience, restore_best_weights=True
        ),
        keras.callbacks.ModelCheckpoint(str(checkpoint), monitor="val_loss", save_best_only=True),
        EpochLine(epochs),
    ]
    with Live(str(live_dir), dvcyaml=None, save_dvc_exp=False, report=None) as live:
        callbacks.append(DVCLiveCallback(live=live))
        model.fit(
            training_data(prepared, size, params),
            steps_per_epoch=params.steps_per_epoch,
            epochs=epochs,
            validation_data=val,
            validation_steps=val_steps,
            callbacks=callbacks,
            verbose=0,
        )
    best = keras.models.load_model(checkpoint, compile=False)
    checkpoint.unlink(missing_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    best.save(out)
    return best


def main() -> None:
    train(PREPARED, KERAS_MODEL, load_settings(TrainParams, "train"), DVCLIVE)
    print(f"train: best model (lowest val_loss) saved to {KERAS_MODEL}")


if __name__ == "__main__":
    run_cli(main)
