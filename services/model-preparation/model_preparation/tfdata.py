"""The input pipelines over the prepared TFRecords: the streamed, augmented training batches and
the validation batches (a split's arrays, without TensorFlow: ``records``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .common import quiet_tensorflow
from .records import split_files

quiet_tensorflow()
import tensorflow as tf  # noqa: E402

SHUFFLE_BUFFER = 2048  # images; bounds the shuffle's memory whatever the dataset size
_FEATURES = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "label": tf.io.FixedLenFeature([], tf.int64),
}


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


def cached(ds: tf.data.Dataset, mode: str, cache_dir: Path, name: str) -> tf.data.Dataset:
    if mode == "memory":
        return ds.cache()
    if mode == "file":
        return ds.cache(str(cache_dir / name))
    return ds


def outlier_files(prepared: Path) -> list[str]:
    """The prepared outliers' shards (images of no class, label −1); none is fine."""
    return sorted(str(p) for p in prepared.glob("outliers-*.tfrecord"))


def _shuffled(files: list[str], context: tf.distribute.InputContext, image_size: int,
              cache: str, cache_dir: Path, name: str, seed: int) -> tf.data.Dataset:  # fmt: skip
    """This pipeline's share of ``files``' decoded records, shuffled and repeated. With several
    workers each reads its own shards (or every n-th record when there are fewer shards than
    workers)."""
    n, i = context.num_input_pipelines, context.input_pipeline_id
    enough = len(files) >= n
    records = stream_records(files[i::n]) if enough else stream_records(files).shard(n, i)
    ds = cached(decode(records, image_size), cache, cache_dir, name)
    return ds.shuffle(SHUFFLE_BUFFER, seed=seed).repeat()


def training_data(
    prepared: Path,
    image_size: int,
    *,
    batch_size: int,
    seed: int,
    cache: str,
    cache_dir: Path,
    augment: Callable,
    outliers: int = 0,
    context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
    """This input pipeline's share of the shuffled, repeated, augmented training batches.

    ``outliers`` of every ``batch_size`` images (split across replicas like the batch) come from
    the prepared outliers when there are any, after the images of the classes; ``.repeat()``
    avoids Keras' per-epoch restart cost.
    """
    context = context or tf.distribute.InputContext()
    keep = (cache, cache_dir)  # train.cache: where decoded images are kept between epochs
    ds = _shuffled(split_files(prepared, "train"), context, image_size, *keep, "train", seed)
    batch = context.get_per_replica_batch_size(batch_size)
    extra_files = outlier_files(prepared) if outliers else []
    if extra_files:
        extra = min(batch - 1, max(1, round(outliers * batch / batch_size)))
        others = _shuffled(extra_files, context, image_size, *keep, "outliers", seed + 1)
        ds = tf.data.Dataset.zip(ds.batch(batch - extra), others.batch(extra)).map(
            lambda a, b: (tf.concat([a[0], b[0]], 0), tf.concat([a[1], b[1]], 0))
        )
    else:
        ds = ds.batch(batch)

    def apply(images, labels):
        out = augment(tf.cast(images, tf.float32), training=True)
        return tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8), labels

    # Sequential on purpose: the augmentation layers draw from one seeded stream, and parallel
    # calls would take turns at it in a varying order (a cheap step next to a training step).
    return ds.map(apply).prefetch(2)


def validation_data(
    prepared: Path, image_size: int, *, batch_size: int, cache: str, cache_dir: Path
) -> tf.data.Dataset:
    """The whole validation split once per ``ceil(n / batch)`` steps, split across replicas."""
    records = tf.data.TFRecordDataset(split_files(prepared, "val"))
    ds = cached(decode(records, image_size), cache, cache_dir, "val")
    ds = ds.batch(batch_size).repeat()
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)
