"""The prepared TFRecords read without TensorFlow, for the stages that only need a split's arrays
or its source files (evaluate, quantize, shift, reference): starting TensorFlow costs each of them
more than everything else they do on a small split (docs/testing.md has the measured figures).

The format is TensorFlow's own (``prepare`` writes it with ``tf.train.Example``): each record is
its length (uint64, little-endian), the masked CRC-32C of that length, the data, the masked
CRC-32C of the data. The length's CRC is checked, so a cut or misaligned file is an error; the
data's is not (pure Python would take seconds per split): each PNG carries CRCs of its own, which
decoding checks, and DVC's checksums cover the files. An Example is three nested messages
(features → map entry → a list of bytes or int64), decoded here from protobuf's wire format. The
images decode with PIL, the same PNG pixels ``tf.io.decode_png`` gives (tests/test_records.py
compares both on a real prepared split).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from .common import PipelineError


def split_files(prepared: Path, split: str) -> list[str]:
    files = sorted(str(p) for p in prepared.glob(f"{split}-*.tfrecord"))
    if not files:
        raise FileNotFoundError(f"no {split} TFRecords in {prepared}: run the prepare stage")
    return files


def _crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def _masked(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def records(path: str | Path) -> Iterator[bytes]:
    """The serialized records of one TFRecord file, in order."""
    data = Path(path).read_bytes()
    at = 0
    while at < len(data):
        if at + 12 > len(data):
            raise PipelineError(f"{path}: cut short at byte {at} (run the prepare stage again)")
        header = data[at : at + 8]
        (length,) = struct.unpack("<Q", header)
        (length_crc,) = struct.unpack("<I", data[at + 8 : at + 12])
        if _masked(_crc32c(header)) != length_crc or at + 16 + length > len(data):
            raise PipelineError(f"{path}: not a TFRecord file, or damaged at byte {at}")
        yield data[at + 12 : at + 12 + length]
        at += 16 + length


def _varint(buf: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of one protobuf message: varints as ints, everything
    length-delimited as bytes (fixed-size fields as their raw bytes)."""
    at = 0
    while at < len(buf):
        key, at = _varint(buf, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = _varint(buf, at)
        elif wire == 2:
            size, at = _varint(buf, at)
            value, at = buf[at : at + size], at + size
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            value, at = buf[at : at + width], at + width
        else:
            raise PipelineError(f"not a tf.train.Example: wire type {wire}")
        yield number, wire, value


def _int64s(values: bytes) -> list[int]:
    out, at = [], 0
    while at < len(values):
        value, at = _varint(values, at)
        out.append(value - (1 << 64) if value >= 1 << 63 else value)
    return out


def parse_example(record: bytes) -> dict[str, list[bytes] | list[int]]:
    """A serialized ``tf.train.Example`` → {feature name: its bytes or int64 values}
    (``Example.features`` = 1, ``Features.feature`` = 1 (map entries: key 1, value 2),
    ``Feature``: bytes_list 1, int64_list 3, each list's ``value`` = 1, int64s packed or not)."""
    out: dict[str, list[bytes] | list[int]] = {}
    for _, _, features in _fields(record):
        for _, _, entry in _fields(features):
            parts = {number: value for number, _, value in _fields(entry)}
            name, feature = parts[1].decode(), parts.get(2, b"")
            for kind, _, values in _fields(feature):
                if kind == 1:
                    out[name] = [v for _, _, v in _fields(values)]
                elif kind == 3:
                    out[name] = [x for _, wire, v in _fields(values)
                                 for x in (_int64s(v) if wire == 2 else [v])]  # fmt: skip
                else:
                    raise PipelineError(f"feature {name!r}: only bytes and int64 lists are read")
    return out


def examples(prepared: Path, split: str) -> Iterator[dict]:
    for path in split_files(prepared, split):
        for record in records(path):
            yield parse_example(record)


def load_arrays(
    prepared: Path, split: str, image_size: int, limit: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The split (its first ``limit`` records) as (uint8 images N×H×W×3, int32 labels), in file
    order, as ``tfdata.read_split`` gives them."""
    images, labels = [], []
    for example in examples(prepared, split):
        if limit is not None and len(images) >= limit:
            break
        image = np.asarray(Image.open(io.BytesIO(example["image"][0])).convert("RGB"))
        if image.shape != (image_size, image_size, 3):
            raise PipelineError(f"a {split} image is {image.shape}, not {image_size}² RGB: "
                                "run the prepare stage again")  # fmt: skip
        images.append(image)
        labels.append(example["label"][0])
    if not images:
        return np.zeros((0, image_size, image_size, 3), np.uint8), np.zeros((0,), np.int32)
    return np.stack(images), np.asarray(labels, dtype=np.int32)


def read_sources(prepared: Path, split: str) -> list[tuple[Path, int]]:
    """The (source file, label) of every record of a split, in file order: the files the prepare
    stage read (paths relative to the project, as it was given them)."""
    return [(Path(ex["path"][0].decode()), int(ex["label"][0])) for ex in examples(prepared, split)]
