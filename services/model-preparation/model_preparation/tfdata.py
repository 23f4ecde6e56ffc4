"""Reading the prepared TFRecords (train, export parity sample and evaluation share this)."""

from __future__ import annotations

from pathlib import Path

from .common import quiet_tensorflow

quiet_tensorflow()
import tensorflow as tf  # noqa: E402

_FEATURES = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "label": tf.io.FixedLenFeature([], tf.int64),
}


def split_files(prepared: Path, split: str) -> list[str]:
    files = sorted(str(p) for p in prepared.glob(f"{split}-*.tfrecord"))
    if not files:
        raise FileNotFoundError(f"no {split} TFRecords in {prepared}: run the prepare stage")
    return files


def read_split(prepared: Path, split: str, image_size: int) -> tf.data.Dataset:
    """(uint8 image HxWx3, int label) pairs, in file order."""

    def parse(record):
        ex = tf.io.parse_single_example(record, _FEATURES)
        image = tf.io.decode_png(ex["image"], channels=3)
        image = tf.ensure_shape(image, (image_size, image_size, 3))
        return image, tf.cast(ex["label"], tf.int32)

    return tf.data.TFRecordDataset(split_files(prepared, split)).map(
        parse, num_parallel_calls=tf.data.AUTOTUNE
    )


def load_arrays(prepared: Path, split: str, image_size: int):
    """The whole split as numpy arrays (evaluation splits are small enough)."""
    import numpy as np

    images, labels = [], []
    for image, label in read_split(prepared, split, image_size).as_numpy_iterator():
        images.append(image)
        labels.append(label)
    if not images:
        return np.zeros((0, image_size, image_size, 3), np.uint8), np.zeros((0,), np.int32)
    return np.stack(images), np.asarray(labels, dtype=np.int32)
