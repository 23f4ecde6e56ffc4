"""``model_preparation.records``: the prepared TFRecords read without TensorFlow. Fast: the
framing (CRC-32C against its published check value, a cut or foreign file refused) and
``tf.train.Example`` decoding against messages protobuf itself encodes. Slow: on a real prepared
project, exactly the arrays, labels and sources TensorFlow's own reader gives."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from PIL import Image

from model_preparation import records
from model_preparation.common import PipelineError

EXAMPLE_PROTO = {  # tensorflow/core/example/{example,feature}.proto, the fields this reads
    "BytesList": [("value", 1, "TYPE_BYTES", "LABEL_REPEATED", None)],
    "Int64List": [("value", 1, "TYPE_INT64", "LABEL_REPEATED", None)],
    "Feature": [("bytes_list", 1, "TYPE_MESSAGE", "LABEL_OPTIONAL", ".t.BytesList"),
                ("int64_list", 3, "TYPE_MESSAGE", "LABEL_OPTIONAL", ".t.Int64List")],
    "Features": [("feature", 1, "TYPE_MESSAGE", "LABEL_REPEATED", ".t.Features.FeatureEntry")],
    "Example": [("features", 1, "TYPE_MESSAGE", "LABEL_OPTIONAL", ".t.Features")],
}  # fmt: skip


def _classes(packed: bool) -> dict:
    """Message classes built by protobuf from a descriptor (no TensorFlow here)."""
    f = descriptor_pb2.FileDescriptorProto(name=f"ex{int(packed)}.proto", package="t",
                                           syntax="proto3" if packed else "proto2")  # fmt: skip
    for name, fields in EXAMPLE_PROTO.items():
        msg = f.message_type.add(name=name)
        for fname, number, ftype, label, type_name in fields:
            field = msg.field.add(name=fname, number=number,
                                  type=getattr(descriptor_pb2.FieldDescriptorProto, ftype),
                                  label=getattr(descriptor_pb2.FieldDescriptorProto, label))  # fmt: skip
            if type_name:
                field.type_name = type_name
        if name == "Features":
            entry = msg.nested_type.add(name="FeatureEntry")
            entry.options.map_entry = True
            entry.field.add(name="key", number=1, type=9, label=1)
            entry.field.add(name="value", number=2, type=11, label=1, type_name=".t.Feature")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return {n: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"t.{n}"))
            for n in EXAMPLE_PROTO}  # fmt: skip


def _png(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), colour).save(buf, format="PNG")
    return buf.getvalue()


def _example(classes: dict, png: bytes, label: int, path: str) -> bytes:
    ex = classes["Example"]()
    ex.features.feature["image"].bytes_list.value.append(png)
    ex.features.feature["label"].int64_list.value.append(label)
    ex.features.feature["path"].bytes_list.value.append(path.encode())
    return ex.SerializeToString()


def _frame(data: bytes) -> bytes:
    header = struct.pack("<Q", len(data))
    return (header + struct.pack("<I", records._masked(records._crc32c(header))) + data
            + struct.pack("<I", records._masked(records._crc32c(data))))  # fmt: skip


def test_crc32c_is_the_castagnoli_crc():
    assert records._crc32c(b"123456789") == 0xE3069283  # the published check value


@pytest.mark.parametrize("packed", [True, False])
def test_examples_decode_as_protobuf_encoded_them(tmp_path, packed):
    classes = _classes(packed)
    rows = [((255, 0, 0), 0, "data/raw/a/1.jpg"), ((0, 0, 255), 300, "data/raw/é/2.png")]
    data = b"".join(_frame(_example(classes, _png(c), label, path)) for c, label, path in rows)
    (tmp_path / "val-00000-of-00001.tfrecord").write_bytes(data)
    images, labels = records.load_arrays(tmp_path, "val", 4)
    assert images.shape == (2, 4, 4, 3) and images.dtype == np.uint8
    assert images[0, 0, 0].tolist() == [255, 0, 0] and images[1, 3, 3].tolist() == [0, 0, 255]
    assert labels.tolist() == [0, 300] and labels.dtype == np.int32
    assert records.read_sources(tmp_path, "val") == [(Path(p), lab)
                                                    for _, lab, p in rows]  # fmt: skip
    first, _ = records.load_arrays(tmp_path, "val", 4, limit=1)
    assert len(first) == 1
    with pytest.raises(PipelineError, match="not 8² RGB"):
        records.load_arrays(tmp_path, "val", 8)


def test_a_cut_or_foreign_file_is_refused_and_an_empty_split_is_empty(tmp_path):
    classes = _classes(True)
    whole = _frame(_example(classes, _png((1, 2, 3)), 1, "x.jpg"))
    (tmp_path / "val-00000-of-00001.tfrecord").write_bytes(whole + whole[:30])
    with pytest.raises(PipelineError, match=r"damaged|cut short"):
        records.load_arrays(tmp_path, "val", 4)
    (tmp_path / "val-00000-of-00001.tfrecord").write_bytes(b"PK\x03\x04 not a tfrecord file")
    with pytest.raises(PipelineError, match="not a TFRecord file"):
        records.load_arrays(tmp_path, "val", 4)
    (tmp_path / "train-00000-of-00001.tfrecord").write_bytes(b"")
    images, labels = records.load_arrays(tmp_path, "train", 4)
    assert images.shape == (0, 4, 4, 3) and labels.shape == (0,)
    with pytest.raises(FileNotFoundError, match="no test TFRecords"):
        records.load_arrays(tmp_path, "test", 4)


@pytest.mark.slow
def test_the_same_arrays_and_sources_as_tensorflows_reader(tiny_project):
    import tensorflow as tf

    from model_preparation.common import Prepared
    from model_preparation.tfdata import decode, split_files

    prepared = tiny_project / "artifacts/prepared"
    size = Prepared.read(prepared).image_size
    for split in ("val", "train"):
        images, labels = records.load_arrays(prepared, split, size)
        pairs = list(decode(tf.data.TFRecordDataset(split_files(prepared, split)), size)
                     .as_numpy_iterator())  # fmt: skip
        assert len(images) == len(pairs) > 100
        assert np.array_equal(images, np.stack([p[0] for p in pairs]))
        assert labels.tolist() == [int(p[1]) for p in pairs]
    features = {"path": tf.io.FixedLenFeature([], tf.string)}
    paths = [tf.io.parse_single_example(r, features)["path"].numpy().decode()
             for r in tf.data.TFRecordDataset(split_files(prepared, "val"))]  # fmt: skip
    assert [str(p) for p, _ in records.read_sources(prepared, "val")] == paths
