"""Outlier exposure: the demo's images of no class, the prepare stage's ``outliers`` records, the
batches that mix them in, and the loss that teaches a flat answer on them (issue #33: new classes
in the training style must be flagged)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model_preparation.common import PipelineError
from model_preparation.tools.demo_data import OUTLIER_KINDS, SHAPES, draw_outlier, generate_outliers
from model_preparation.train_params import OutlierParams

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def test_every_kind_of_outlier_is_drawn_reproducibly():
    for kind in OUTLIER_KINDS:
        first = draw_outlier(kind, np.random.default_rng(1), 40, 60)
        again = draw_outlier(kind, np.random.default_rng(1), 40, 60)
        pixels = np.asarray(first)
        assert np.array_equal(pixels, np.asarray(again)) and 40 <= min(first.size) <= 60
        # a figure on the background: two clearly different colours, as the classes are drawn
        assert np.ptp(pixels.reshape(-1, 3).mean(1)) >= 100


def test_no_outlier_is_a_shape_the_reference_stage_calls_new():
    """The near set (demo shapes the model was never taught) must stay unseen."""
    assert not set(OUTLIER_KINDS) & set(SHAPES)
    with pytest.raises(ValueError, match="unknown outlier kind"):
        draw_outlier("star", np.random.default_rng(0), 40, 60)


def test_generate_outliers_writes_each_kind_in_turn(tmp_path):
    assert generate_outliers(tmp_path / "o", 12, seed=5, min_side=32, max_side=40) == 12
    files = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert len(files) == 12
    assert {f.split("_")[0] for f in files} == set(OUTLIER_KINDS)
    assert Image.open(tmp_path / "o" / files[0]).mode == "RGB"
    assert generate_outliers(tmp_path / "none", 0, seed=5) == 0
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize(
    ("share", "weight", "batch", "expected"),
    [(0.25, 0.5, 32, 8), (0.0, 0.5, 32, 0), (0.25, 0.0, 32, 0), (0.9, 1.0, 4, 3), (0.1, 1.0, 2, 0)],
)
def test_outliers_per_batch(share, weight, batch, expected):
    assert OutlierParams(share, weight, 0).per_batch(batch) == expected


@pytest.mark.parametrize(
    ("share", "weight", "start"), [(1.0, 0.5, 0), (-0.1, 0.5, 0), (0.2, -1.0, 0), (0.2, 0.5, -1)]
)
def test_bad_outlier_settings_are_refused(share, weight, start):
    with pytest.raises(PipelineError, match=r"train\.outliers"):
        OutlierParams(share, weight, start)


# --- with TensorFlow -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    from model_preparation.prepare import PrepareParams, prepare
    from model_preparation.tools.demo_data import generate

    root = tmp_path_factory.mktemp("project")
    generate(root / "raw", ["circle", "square"], 12, seed=3, min_side=30, max_side=40)
    generate_outliers(root / "outliers", 10, seed=3, min_side=30, max_side=40)
    (root / "outliers" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    params = PrepareParams(image_size=16, val_fraction=0.25, gate_fraction=0.0,
                           feedback_gate_fraction=0.0, shard_size=64)  # fmt: skip
    report = prepare(root / "raw", root / "prepared", root / "data.json", params, workers=1,
                     outlier_dir=root / "outliers")  # fmt: skip
    assert report["num_outliers"] == 10 and report["num_images"] == 24
    assert [s["class"] for s in report["skipped"]] == ["(outlier)"]
    return root / "prepared"


@pytest.mark.slow  # TensorFlow writes and reads the records
def test_prepare_keeps_outliers_out_of_every_split(prepared):
    from model_preparation.records import load_arrays

    labels = {s: load_arrays(prepared, s, 16)[1] for s in ("train", "val", "outliers")}
    assert (labels["outliers"] == -1).all() and len(labels["outliers"]) == 10
    assert all(((labels[s] >= 0) & (labels[s] < 2)).all() for s in ("train", "val"))
    assert len(labels["train"]) + len(labels["val"]) == 24


def _batches(prepared: Path, outliers: int, n: int = 3) -> list[np.ndarray]:
    from model_preparation.tfdata import training_data

    ds = training_data(prepared, 16, batch_size=8, seed=1, cache="none", cache_dir=prepared,
                       augment=lambda x, training: x, outliers=outliers)  # fmt: skip
    return [labels.numpy() for _, labels in ds.take(n)]


@pytest.mark.slow
def test_each_batch_mixes_in_its_share_of_outliers(prepared, tmp_path):
    for labels in _batches(prepared, 2):
        assert len(labels) == 8 and (labels[-2:] == -1).all() and (labels[:-2] >= 0).all()
    for labels in _batches(prepared, 0):  # off: the classes only
        assert len(labels) == 8 and (labels >= 0).all()
    bare = tmp_path / "bare"  # no outliers were prepared: the classes only, whatever the setting
    bare.mkdir()
    for f in prepared.glob("[tv]*.tfrecord"):
        (bare / f.name).write_bytes(f.read_bytes())
    assert all((labels >= 0).all() for labels in _batches(bare, 2))


@pytest.mark.slow
def test_the_outlier_loss_is_least_for_a_flat_answer():
    import tensorflow as tf

    from model_preparation.loop import outlier_loss

    flat = outlier_loss(tf.constant([[1 / 3, 1 / 3, 1 / 3]]))[0]
    sure = outlier_loss(tf.constant([[0.98, 0.01, 0.01]]))[0]
    assert float(flat) == pytest.approx(np.log(3), rel=1e-5) and float(sure) > float(flat) + 1


def _train(weight: float, steps: int = 150) -> tuple[float, float]:
    """A small network on colour-coded classes (red, green, blue) with grey noise as outliers: (its
    accuracy on the classes, its mean top probability on unseen grey images)."""
    import keras
    import tensorflow as tf

    from model_preparation.loop import Steps

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)

    def images(label: int, n: int) -> np.ndarray:
        x = rng.normal(0.2, 0.1, (n, 8, 8, 3))
        if label >= 0:
            x[..., label] += 0.6
        else:  # strong noise of no colour: no class, and a network left alone answers it surely
            x = rng.normal(0.2, 0.8, (n, 8, 8, 1)).repeat(3, -1)
        return x.astype(np.float32)

    def batches():
        labels = np.array([0] * 4 + [1] * 4 + [2] * 4 + [-1] * 4, np.int32)
        while True:
            yield np.concatenate([images(c, 4) for c in (0, 1, 2)] + [images(-1, 4)]), labels

    data = iter(tf.data.Dataset.from_generator(
        batches, output_signature=(tf.TensorSpec((16, 8, 8, 3)), tf.TensorSpec((16,), tf.int32))
    ))  # fmt: skip
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(),
                              keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(3, activation="softmax")])  # fmt: skip
    optimizer = keras.optimizers.Adam(0.01)
    optimizer.build(model.trainable_variables)
    step = Steps(model, optimizer, tf.distribute.get_strategy(), 16, outlier_weight=weight)
    for _ in range(steps):
        sums = step.train(data).numpy()
        assert sums[2] == 12  # only the images of the classes are counted
    known = np.concatenate([images(c, 30) for c in (0, 1, 2)])
    accuracy = float(np.mean(model.predict(known, verbose=0).argmax(1) == np.repeat([0, 1, 2], 30)))
    return accuracy, float(model.predict(images(-1, 90), verbose=0).max(1).mean())


@pytest.mark.slow
def test_outlier_exposure_flattens_the_answers_to_outliers():
    """Yes with a weight: the grey images' top probability near 1/3; no without one (the
    control, the same batches): the network answers them like a class. The classes are learned
    either way."""
    exposed_accuracy, exposed_top = _train(0.5)
    plain_accuracy, plain_top = _train(0.0)
    assert exposed_accuracy > 0.9 and plain_accuracy > 0.9
    assert exposed_top < 0.5 and plain_top > 0.55 and plain_top - exposed_top > 0.15


def _fit(prepared: Path, tmp_path: Path, **outliers) -> tuple[list[dict], str]:
    """The train stage's loop on the small prepared set with a small network: (history, what it
    printed); the weights it returns are those of the lowest val_loss among the epochs trained
    with outliers where they joined, else among all."""
    import contextlib
    import io

    import keras
    import tensorflow as tf

    from imgcls.params import load_params, parse_settings
    from model_preparation.loop import Run, fit
    from model_preparation.train_params import TrainParams

    raw = load_params("train")
    raw.update(epochs=3, steps_per_epoch=2, batch_size=8, patience=8, mixed_precision="float32",
               outliers={**raw["outliers"], **outliers})  # fmt: skip
    params = parse_settings(TrainParams, raw, "test")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Rescaling(1 / 255),
                              keras.layers.Flatten(), keras.layers.Dense(2, activation="softmax")])  # fmt: skip
    optimizer = keras.optimizers.Adam(0.01)
    optimizer.build(model.trainable_variables)
    snapshots = []  # the weights after each epoch, to find the checkpoint among them

    def keep(epoch: int, logs: dict) -> None:
        snapshots.append(model.get_weights())

    run = Run(prepared, params, 16, 6, tmp_path, tf.distribute.get_strategy(), None, keep)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        history, best = fit(model, optimizer, run)
    start = params.outliers.from_epoch if "outliers join" in out.getvalue() else 0
    chosen = min(range(start, len(history)), key=lambda e: history[e]["val_loss"])
    assert all(np.array_equal(b, w) for b, w in zip(best, snapshots[chosen], strict=True))
    return history, out.getvalue()


@pytest.mark.slow
def test_the_outliers_join_after_the_epochs_on_the_classes_alone(prepared, tmp_path):
    history, said = _fit(prepared, tmp_path, share=0.25, weight=0.5, from_epoch=1)
    assert len(history) == 3
    assert "from epoch 2, 2 of each 8 images are outliers" in said
    assert "outliers join the batches from epoch 2" in said
    history, said = _fit(prepared, tmp_path, share=0.0, weight=0.5, from_epoch=1)  # off
    assert len(history) == 3 and "outliers" not in said
