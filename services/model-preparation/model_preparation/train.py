"""Stage ``train``: ResNet50V2 from scratch on the prepared TFRecords.

The exported model takes raw uint8 pixels (``image``) and returns softmax ``probabilities``;
rescaling is inside the model, augmentation only in the training input pipeline, so the graph
that is served is exactly the inference graph.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .common import (
    INPUT_NAME,
    KERAS_MODEL,
    OUTPUT_NAME,
    PREPARED,
    PipelineError,
    load_params,
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


def make_optimizer(params: dict) -> keras.optimizers.Optimizer:
    name = str(params.get("optimizer", "adam")).lower()
    lr = float(params.get("learning_rate", 1e-3))
    if name == "adam":
        return keras.optimizers.Adam(lr)
    if name == "sgd":
        return keras.optimizers.SGD(lr, momentum=float(params.get("momentum", 0.9)), nesterov=True)
    if name == "adagrad":
        return keras.optimizers.Adagrad(lr)
    if name == "adasmooth":
        return AdaSmooth(lr)
    raise PipelineError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def augmenter(params: dict) -> keras.Sequential:
    """Flip / rotation / contrast, used on the training batches only."""
    layers = []
    if params.get("flip", True):
        layers.append(keras.layers.RandomFlip("horizontal"))
    if params.get("rotation", 0):
        layers.append(keras.layers.RandomRotation(float(params["rotation"]), fill_mode="constant"))
    if params.get("contrast", 0):
        layers.append(keras.layers.RandomContrast(float(params["contrast"])))
    return keras.Sequential(layers, name="augmentation")


def training_data(prepared: Path, image_size: int, params: dict, seed: int) -> tf.data.Dataset:
    """Shuffled, repeated, augmented batches (``.repeat()`` avoids Keras' per-epoch restart cost)."""
    augment = augmenter(params.get("augment", {}))
    batch = int(params.get("batch_size", 32))

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


def train(prepared: Path, out: Path, params: dict, live_dir: Path) -> keras.Model:
    from dvclive import Live
    from dvclive.keras import DVCLiveCallback

    meta = read_json(prepared / "meta.json")
    size, labels = int(meta["image_size"]), list(meta["labels"])
    seed = int(params.get("seed", 42))
    keras.utils.set_random_seed(seed)
    model = build_model(size, len(labels), float(params.get("bn_momentum", 0.9)))
    model.compile(
        optimizer=make_optimizer(params),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    epochs = int(params.get("epochs", 10))
    batch = int(params.get("batch_size", 32))
    val = read_split(prepared, "val", size).batch(batch).cache().repeat()
    val_steps = max(1, -(-int(meta["num_val"]) // batch))
    checkpoint = out.with_suffix(".best.keras")
    callbacks = [
        keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=int(params.get("patience", 3)), restore_best_weights=True
        ),
        keras.callbacks.ModelCheckpoint(str(checkpoint), monitor="val_loss", save_best_only=True),
        EpochLine(epochs),
    ]
    with Live(str(live_dir), dvcyaml=None, save_dvc_exp=False, report=None) as live:
        callbacks.append(DVCLiveCallback(live=live))
        model.fit(
            training_data(prepared, size, params, seed),
            steps_per_epoch=int(params.get("steps_per_epoch", 20)),
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
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prepared", type=Path, default=PREPARED)
    parser.add_argument("--out", type=Path, default=KERAS_MODEL)
    parser.add_argument("--live", type=Path, default=Path("artifacts/dvclive"))
    args = parser.parse_args()
    train(args.prepared, args.out, load_params("train"), args.live)
    print(f"train: best model (lowest val_loss) saved to {args.out}")


if __name__ == "__main__":
    run_cli(main)
