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


def decode(records: tf.data.Dataset, image_size: int) -> tf.data.Dataset:
    """Serialized examples → (uint8 image HxWx3, int32 label), order kept."""

    def parse(record):
        ex = tf.io.parse_single_example(record, _FEATURES)
        image = tf.io.decode_png(ex["image"], channels=3)
        image = tf.ensure_shape(image, (image_size, image_size, 3))
        return image, tf.cast(ex["label"], tf.int32)

    return records.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def read_split(prepared: Path, split: str, image_size: int) -> tf.data.Dataset:
    """(uint8 image HxWx3, int label) pairs, in file order."""
    return decode(tf.data.TFRecordDataset(split_files(prepared, split)), image_size)


def stream_records(files: list[str], cycle_length: int = 4) -> tf.data.Dataset:
    """Records of several shards read in parallel and interleaved one by one, in a fixed order.

    Memory is a few read buffers whatever the number of shards; the order depends only on the
    file list, so a run is reproducible with or without a cache.
    """
    return tf.data.Dataset.from_tensor_slices(files).interleave(
        tf.data.TFRecordDataset,
        cycle_length=max(1, min(cycle_length, len(files))),
        block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
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
