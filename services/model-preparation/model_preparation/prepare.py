"""Stage ``prepare``: data/raw/<class>/* → validated, letterboxed PNGs in sharded TFRecords.

Every file goes through :func:`imgcls.preprocessing.load_image`, the same function the API uses.
Unreadable files are skipped and counted in the data report; data that cannot train a classifier
(no images, one class, an empty class) stops the stage with a clear error.

Memory does not grow with the dataset: a process pool (every core) decodes and encodes the files
and spools each PNG to disk next to the output; the split is then taken from the list of
readable files, and the shards are written by streaming the spooled PNGs. The TFRecords are the
same bytes whatever the number of workers.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from imgcls.preprocessing import ImageError, load_image

from .common import (
    DATA_REPORT,
    PREPARED,
    RAW_DATA,
    PipelineError,
    Prepared,
    load_settings,
    quiet_tensorflow,
    run_cli,
    write_json,
)


@dataclass(frozen=True)
class PrepareParams:
    """params.yaml ``prepare``."""

    image_size: int  # letterbox target (square)
    val_fraction: float
    seed: int
    shard_size: int  # examples per TFRecord shard


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int
    png: Path | None = None  # the spooled, letterboxed PNG


def discover(raw_dir: Path) -> tuple[list[str], dict[str, list[Path]]]:
    """Class names are the sub-folder names (sorted); hidden files and folders are ignored."""
    if not raw_dir.is_dir():
        raise PipelineError(f"no image folder at {raw_dir}: put images in {raw_dir}/<class>/")
    classes = sorted(p.name for p in raw_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = {
        c: sorted(p for p in (raw_dir / c).rglob("*") if p.is_file() and not p.name.startswith("."))
        for c in classes
    }
    if not classes or not any(files.values()):
        raise PipelineError(f"no images found under {raw_dir}: expected {raw_dir}/<class>/<image>")
    if len(classes) < 2:
        raise PipelineError(f"only one class ({classes[0]!r}) in {raw_dir}: a classifier needs ≥ 2")
    empty = [c for c in classes if not files[c]]
    if empty:
        raise PipelineError(f"class folder(s) with no files: {', '.join(empty)}")
    return classes, files


def split(
    samples: list[Sample], val_fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Stratified split: each class contributes ``val_fraction`` of its images (at least one)."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in sorted({s.label for s in samples}):
        group = [s for s in samples if s.label == label]
        order = rng.permutation(len(group))
        n_val = max(1, round(val_fraction * len(group))) if len(group) > 1 else 0
        val += [group[i] for i in order[:n_val]]
        train += [group[i] for i in order[n_val:]]
    return train, val


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _encode(job: tuple[int, Path, int, Path]) -> tuple[int, str | None, str | None]:
    """Worker: letterbox one file and spool its PNG; returns (index, error code, detail)."""
    index, path, size, spool = job
    try:
        png = _png(load_image(path, size))
    except ImageError as exc:
        return index, exc.code, exc.message
    (spool / f"{index:09d}.png").write_bytes(png)
    return index, None, None


def encode_all(
    jobs: list[tuple[Path, int]], size: int, spool: Path, workers: int
) -> tuple[list[Sample], list[tuple[Sample, str, str]]]:
    """(readable samples in input order, unreadable ones with code and detail), in parallel;
    only the small per-file results come back, the PNGs stay on disk."""
    tasks = [(i, path, size, spool) for i, (path, _label) in enumerate(jobs)]
    samples, failed = [], []
    context = multiprocessing.get_context("fork")  # before TensorFlow is imported
    with context.Pool(max(1, workers)) as pool:
        for index, code, detail in pool.imap(_encode, tasks, chunksize=8):
            path, label = jobs[index]
            if code is None:
                samples.append(Sample(path, label, spool / f"{index:09d}.png"))
            else:
                failed.append((Sample(path, label), code, detail))
    return samples, failed


def write_shards(name: str, samples: list[Sample], out_dir: Path, shard_size: int) -> int:
    """Write ``name-0000i-of-0000n.tfrecord`` shards of (PNG bytes, label, source path),
    reading one spooled PNG at a time."""
    quiet_tensorflow()
    import tensorflow as tf

    n_shards = max(1, -(-len(samples) // shard_size))
    for shard in range(n_shards):
        path = out_dir / f"{name}-{shard:05d}-of-{n_shards:05d}.tfrecord"
        with tf.io.TFRecordWriter(str(path)) as writer:
            for sample in samples[shard * shard_size : (shard + 1) * shard_size]:
                png, label, source = sample.png.read_bytes(), sample.label, str(sample.path)
                feature = {
                    "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[png])),
                    "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
                    "path": tf.train.Feature(
                        bytes_list=tf.train.BytesList(value=[source.encode()])
                    ),
                }
                example = tf.train.Example(features=tf.train.Features(feature=feature))
                # deterministic: protobuf's map order varies otherwise, and so would dvc.lock
                writer.write(example.SerializeToString(deterministic=True))
    return n_shards


def prepare(
    raw_dir: Path,
    out_dir: Path,
    report_path: Path,
    params: PrepareParams,
    workers: int | None = None,
) -> dict:
    """``workers`` processes decode and encode (default: every core this process may use)."""
    classes, files = discover(raw_dir)
    jobs = [(path, label) for label, name in enumerate(classes) for path in files[name]]
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=".prepare-spool-") as spool:
        samples, failed = encode_all(
            jobs, params.image_size, Path(spool), workers or len(os.sched_getaffinity(0))
        )
        skipped = [
            {"path": str(s.path), "class": classes[s.label], "reason": code, "detail": detail}
            for s, code, detail in failed
        ]
        valid = Counter(classes[s.label] for s in samples)
        unusable = [c for c in classes if valid[c] == 0]
        if unusable:
            raise PipelineError(f"no readable image in class folder(s): {', '.join(unusable)}")
        train, val = split(samples, params.val_fraction, params.seed)
        for old in out_dir.glob("*.tfrecord"):
            old.unlink()
        for name, part in (("train", train), ("val", val)):
            write_shards(name, part, out_dir, params.shard_size)
    (out_dir / "labels.txt").write_text("".join(f"{c}\n" for c in classes), encoding="utf-8")
    counts = {
        c: {
            "train": sum(classes[s.label] == c for s in train),
            "val": sum(classes[s.label] == c for s in val),
        }
        for c in classes
    }
    Prepared(params.image_size, tuple(classes), len(train), len(val)).write(out_dir)
    report = {
        "num_classes": len(classes),
        "num_images": len(samples),
        "num_train": len(train),
        "num_val": len(val),
        "num_skipped": len(skipped),
        "per_class": counts,
        "skipped": skipped,
    }
    write_json(report_path, report)
    return report


def main() -> None:
    report = prepare(RAW_DATA, PREPARED, DATA_REPORT, load_settings(PrepareParams, "prepare"))
    print(
        f"prepare: {report['num_classes']} classes, {report['num_train']} train / "
        f"{report['num_val']} val images, {report['num_skipped']} skipped (see {DATA_REPORT})"
    )
    for item in report["skipped"]:
        print(f"  skipped {item['path']}: {item['reason']}")


if __name__ == "__main__":
    run_cli(main)
