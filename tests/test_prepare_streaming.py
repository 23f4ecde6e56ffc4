"""The streaming, parallel prepare: same TFRecords whatever the number of workers, exactly the
API's preprocessing per record, the split decided from the list of readable files, the spool
removed. (On the 3000-image demo data, the output hash recorded in dvc.lock is unchanged.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from imgcls.preprocessing import load_image
from model_preparation.prepare import PrepareParams, Sample, discover, prepare, split
from model_preparation.tools.demo_data import generate

pytestmark = pytest.mark.slow  # imports TensorFlow to write and read TFRecords

PARAMS = PrepareParams(image_size=24, val_fraction=0.25, seed=7, shard_size=5)


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
    assert len(_records(tmp_path / "one")) == 5 + 2  # 21 train in shards of 5, 6 val
    assert not list(tmp_path.glob(".prepare-spool-*"))  # the spool is gone


def test_records_are_the_apis_preprocessing_in_the_decided_split(raw, tmp_path):
    import tensorflow as tf

    report = prepare(raw, tmp_path / "out", tmp_path / "r.json", PARAMS, workers=2)
    assert [s["path"] for s in report["skipped"]] == [str(raw / "square" / "zz_broken.jpg")]
    classes, files = discover(raw)
    readable = [
        Sample(p, label)
        for label, c in enumerate(classes)
        for p in files[c]
        if p.name != "zz_broken.jpg"
    ]
    train, val = split(readable, PARAMS.val_fraction, PARAMS.seed)
    for name, expected in (("train", train), ("val", val)):
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
