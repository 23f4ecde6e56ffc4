"""Stage ``prepare``: data/raw/<class>/* → validated, letterboxed PNGs in sharded TFRecords, and
the gate set; data/outliers/* (images of no class, if any) → ``outliers-*`` TFRecords (label −1)
that training shows the model as answers it must not give (``train.outliers``).

Every file goes through :func:`imgcls.preprocessing.load_image`, the same function the API uses.
Unreadable files are skipped and counted in the data report; data that cannot train a classifier
(no images, one class, an empty class) stops the stage with a clear error.

Each file's **content** decides its split (``imgcls.gateset.split_of``): training, validation
(which picks the checkpoint) or the gate set (which judges a candidate against the serving
version, and which no stage trains or checkpoints on). Adding data never moves an image from one
side to another; users' corrections go to the gate set at ``feedback_gate_fraction``.

Memory does not grow with the dataset: a process pool (every core) decodes and encodes the files
and spools each PNG to disk next to the output; the shards are then written by streaming the
spooled PNGs. The TFRecords are the same bytes whatever the number of workers.
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

from imgcls.gateset import GateSet, file_digest, is_feedback, split_of
from imgcls.preprocessing import ImageError, load_image

from .common import (
    DATA_REPORT,
    GATE_SET,
    OUTLIER_DATA,
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
    val_fraction: float  # share of the images that validate (and pick the checkpoint)
    gate_fraction: float  # share that only ever judges candidates (the gate set)
    feedback_gate_fraction: float  # the gate's share of users' corrections (fb-* files)
    shard_size: int  # examples per TFRecord shard

    def __post_init__(self) -> None:
        for name in ("val_fraction", "gate_fraction", "feedback_gate_fraction"):
            if not 0 <= getattr(self, name) < 1:
                raise PipelineError(f"prepare.{name} must be within 0–1 (1 excluded)")
        for name in ("gate_fraction", "feedback_gate_fraction"):
            if getattr(self, name) + self.val_fraction >= 1:
                raise PipelineError(f"prepare.val_fraction + prepare.{name} must stay below 1: "
                                    "nothing would be left to train on")  # fmt: skip

    def split_of(self, path: Path, digest: str) -> str:
        gate = self.feedback_gate_fraction if is_feedback(path) else self.gate_fraction
        return split_of(digest, gate, self.val_fraction)


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int
    png: Path | None = None  # the spooled, letterboxed PNG
    digest: str = ""  # SHA-256 of the file: decides its split


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


OUTLIER_LABEL = -1  # an outlier record's label: no class


def discover_outliers(folder: Path | None) -> list[Path]:
    """Every file under ``folder`` (none when it is absent); hidden ones ignored."""
    if folder is None or not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in
                                             p.relative_to(folder).parts))  # fmt: skip


def split(samples: list[Sample], params: PrepareParams) -> dict[str, list[Sample]]:
    """Each sample's split from its content (``PrepareParams.split_of``), in input order."""
    parts: dict[str, list[Sample]] = {"train": [], "val": [], "gate": []}
    for s in samples:
        parts[params.split_of(s.path, s.digest or file_digest(s.path))].append(s)
    return parts


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _encode(job: tuple[int, Path, int, Path]) -> tuple[int, str, str | None, str | None]:
    """Worker: letterbox one file and spool its PNG; returns (index, digest, error code,
    detail)."""
    index, path, size, spool = job
    digest = file_digest(path)
    try:
        png = _png(load_image(path, size))
    except ImageError as exc:
        return index, digest, exc.code, exc.message
    (spool / f"{index:09d}.png").write_bytes(png)
    return index, digest, None, None


def encode_all(
    jobs: list[tuple[Path, int]], size: int, spool: Path, workers: int
) -> tuple[list[Sample], list[tuple[Sample, str, str]]]:
    """(readable samples in input order, unreadable ones with code and detail), in parallel;
    only the small per-file results come back, the PNGs stay on disk."""
    tasks = [(i, path, size, spool) for i, (path, _label) in enumerate(jobs)]
    samples, failed = [], []
    context = multiprocessing.get_context("fork")  # before TensorFlow is imported
    with context.Pool(max(1, workers)) as pool:
        for index, digest, code, detail in pool.imap(_encode, tasks, chunksize=8):
            path, label = jobs[index]
            if code is None:
                samples.append(Sample(path, label, spool / f"{index:09d}.png", digest))
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


def gate_set(samples: list[Sample], classes: list[str], raw_dir: Path, size: int) -> GateSet:
    """The gate split's spooled pixels, with their class names and digests."""
    if not samples:
        return GateSet.empty(size)
    images = np.stack([np.asarray(Image.open(s.png).convert("RGB")) for s in samples])
    return GateSet(images, tuple(classes[s.label] for s in samples),
                   tuple(s.digest for s in samples),
                   tuple(s.path.relative_to(raw_dir).as_posix() for s in samples))  # fmt: skip


def prepare(
    raw_dir: Path,
    out_dir: Path,
    report_path: Path,
    params: PrepareParams,
    workers: int | None = None,
    gate_path: Path | None = None,
    outlier_dir: Path | None = None,
) -> dict:
    """``workers`` processes decode and encode (default: every core this process may use)."""
    classes, files = discover(raw_dir)
    jobs = [(path, label) for label, name in enumerate(classes) for path in files[name]]
    jobs += [(path, OUTLIER_LABEL) for path in discover_outliers(outlier_dir)]
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=".prepare-spool-") as spool:
        samples, failed = encode_all(
            jobs, params.image_size, Path(spool), workers or len(os.sched_getaffinity(0))
        )
        skipped = [
            {"path": str(s.path), "class": _name(classes, s.label), "reason": code,
             "detail": detail}
            for s, code, detail in failed
        ]  # fmt: skip
        outliers = [s for s in samples if s.label == OUTLIER_LABEL]
        samples = [s for s in samples if s.label != OUTLIER_LABEL]
        valid = Counter(classes[s.label] for s in samples)
        unusable = [c for c in classes if valid[c] == 0]
        if unusable:
            raise PipelineError(f"no readable image in class folder(s): {', '.join(unusable)}")
        parts = split(samples, params)
        train, val = parts["train"], parts["val"]
        untrained = sorted(set(classes) - {classes[s.label] for s in train})
        if untrained or not val:
            raise PipelineError(f"{len(samples)} readable images leave {len(val)} to validate "
                                f"and none to train class(es) {', '.join(untrained) or '–'} "
                                "on (the split goes by content): add images")  # fmt: skip
        for old in out_dir.glob("*.tfrecord"):
            old.unlink()
        for name, part in (("train", train), ("val", val), ("outliers", outliers)):
            if part:
                write_shards(name, part, out_dir, params.shard_size)
        if gate_path is not None:
            gate_set(parts["gate"], classes, raw_dir, params.image_size).save(gate_path)
    (out_dir / "labels.txt").write_text("".join(f"{c}\n" for c in classes), encoding="utf-8")
    counts = {c: {name: sum(classes[s.label] == c for s in part) for name, part in parts.items()}
              for c in classes}  # fmt: skip
    Prepared(params.image_size, tuple(classes), len(train), len(val)).write(out_dir)
    report = {
        "num_classes": len(classes),
        "num_images": len(samples),
        "num_train": len(train),
        "num_val": len(val),
        "num_gate": len(parts["gate"]),
        "num_outliers": len(outliers),
        "split": "content-hash",
        "num_skipped": len(skipped),
        "per_class": counts,
        "skipped": skipped,
    }
    write_json(report_path, report)
    return report


def _name(classes: list[str], label: int) -> str:
    return classes[label] if label != OUTLIER_LABEL else "(outlier)"


def main() -> None:
    params = load_settings(PrepareParams, "prepare")
    report = prepare(RAW_DATA, PREPARED, DATA_REPORT, params, gate_path=GATE_SET,
                     outlier_dir=OUTLIER_DATA)  # fmt: skip
    print(
        f"prepare: {report['num_classes']} classes, {report['num_train']} train / "
        f"{report['num_val']} val / {report['num_gate']} gate images, "
        f"{report['num_outliers']} outliers, {report['num_skipped']} skipped (see {DATA_REPORT})"
    )
    for item in report["skipped"]:
        print(f"  skipped {item['path']}: {item['reason']}")


if __name__ == "__main__":
    run_cli(main)
