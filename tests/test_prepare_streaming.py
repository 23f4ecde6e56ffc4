"""The streaming, parallel prepare: same TFRecords whatever the number of workers, exactly the
API's preprocessing per record, each file in the split its content decides (the gate set
included, with the pixels the served model takes), the spool removed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from imgcls.gateset import GateSet
from imgcls.preprocessing import load_image
from model_preparation.prepare import PrepareParams, Sample, discover, prepare, split
from model_preparation.tools.demo_data import generate

pytestmark = pytest.mark.slow  # imports TensorFlow to write and read TFRecords

PARAMS = PrepareParams(image_size=24, val_fraction=0.25, gate_fraction=0.15,
                       feedback_gate_fraction=0.5, shard_size=5)  # fmt: skip


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raw")
    generate(root, ["circle", "square", "triangle"], 9, seed=3, min_side=30, max_side=60)
    (root / "square" / "zz_broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    return root


def _records(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.tfrecord"))}


def test_one_worker_and_several_write_the_same_bytes(raw, tmp_path):
    one = prepare(raw, tmp_path / "one", tmp_path / "one.json", PARAMS, workers=1)
    three = prepare(raw, tmp_path / "three", tmp_path / "three.json", PARAMS, workers=3)
    assert one == three
    assert _records(tmp_path / "one") == _records(tmp_path / "three")
    shards = -(-one["num_train"] // 5) + -(-one["num_val"] // 5)
    assert len(_records(tmp_path / "one")) == shards
    assert one["num_train"] + one["num_val"] + one["num_gate"] == 27 and one["num_gate"] > 0
    assert not list(tmp_path.glob(".prepare-spool-*"))  # the spool is gone


def test_records_are_the_apis_preprocessing_in_the_decided_split(raw, tmp_path):
    import tensorflow as tf

    gate_path = tmp_path / "gate.npz"
    report = prepare(raw, tmp_path / "out", tmp_path / "r.json", PARAMS, workers=2,
                     gate_path=gate_path)  # fmt: skip
    assert [s["path"] for s in report["skipped"]] == [str(raw / "square" / "zz_broken.jpg")]
    classes, files = discover(raw)
    readable = [
        Sample(p, label)
        for label, c in enumerate(classes)
        for p in files[c]
        if p.name != "zz_broken.jpg"
    ]
    parts = split(readable, PARAMS)
    for name in ("train", "val"):
        expected = parts[name]
        seen = []
        for shard in sorted((tmp_path / "out").glob(f"{name}-*.tfrecord")):
            for raw_record in tf.data.TFRecordDataset(str(shard)).as_numpy_iterator():
                example = tf.train.Example.FromString(raw_record)
                feature = example.features.feature
                source = feature["path"].bytes_list.value[0].decode()
                pixels = tf.io.decode_png(feature["image"].bytes_list.value[0]).numpy()
                np.testing.assert_array_equal(pixels, load_image(source, PARAMS.image_size))
                seen.append((source, feature["label"].int64_list.value[0]))
        assert seen == [(str(s.path), s.label) for s in expected], name
    gate = GateSet.load(gate_path)
    assert list(gate.sources) == [s.path.relative_to(raw).as_posix() for s in parts["gate"]]
    assert list(gate.labels) == [classes[s.label] for s in parts["gate"]]
    for source, pixels in zip(gate.sources, gate.images, strict=True):
        np.testing.assert_array_equal(pixels, load_image(raw / source, PARAMS.image_size))
    assert report["per_class"]["circle"] == {
        name: sum(classes[s.label] == "circle" for s in part) for name, part in parts.items()
    }
