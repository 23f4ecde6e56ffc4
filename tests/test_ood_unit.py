"""The unknown-class scores (``model_preparation/ood.py``) on small synthetic features: each method
tells inputs unlike every class from the classes, the served graph computes exactly the numpy
score, the figures (AUROC, FPR@95, the threshold) are right on known tables, and the stage's
choice and settings follow params.yaml."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from imgcls.contract import OUTPUT_NAME, UNKNOWN_NAME
from imgcls.params import UserError
from model_preparation import ood
from model_preparation.onnx_utils import head_tensors, session
from model_preparation.reference import choose

D, CLASSES = 16, 3
PARAMS = ood.UnknownParams(method="auto", choose_by="auroc", false_flag_rate=0.02, components=4, knn_k=5,
                           knn_bank=200, react_percentile=90.0, near_images=0)  # fmt: skip


def _data(seed: int = 0):
    """Three tight classes far from the origin in a 4-dim subspace, a head that reads them, and
    inputs of no class: points about the origin, off the classes' subspace."""
    rng = np.random.default_rng(seed)
    means = np.zeros((CLASSES, D))
    means[np.arange(CLASSES), np.arange(CLASSES)] = 6.0
    labels = rng.integers(0, CLASSES, 600)
    train = means[labels] + rng.normal(0, 0.5, (600, D)) * (np.arange(D) < 4)
    train = np.abs(train + rng.normal(0, 0.01, train.shape))  # ReLU features are ≥ 0
    held = means[rng.integers(0, CLASSES, 200)] + rng.normal(0, 0.5, (200, D)) * (np.arange(D) < 4)
    held = np.abs(held)
    outside = np.abs(rng.normal(0, 1.0, (200, D)) + 1.5)
    head = ood.Head(means.T / 3.0, np.zeros(CLASSES))
    return train, labels, held, outside, head


@pytest.mark.parametrize("method", ood.METHODS)
def test_every_method_scores_inputs_of_no_class_higher(method):
    train, labels, held, outside, head = _data()
    # most of these features are ~0: react's clip must sit above the classes' few large ones
    params = dataclasses.replace(PARAMS, react_percentile=99.5)
    scorer = ood.fit(method, train, labels, head, params)
    inside, out = scorer.score(held), scorer.score(outside)
    assert ood.auroc(inside, out) > 0.9, method
    limit = ood.threshold(inside, 0.02)
    assert np.mean(inside > limit) <= 0.02 + 1e-9  # the stated false-flag rate holds
    assert np.mean(out > limit) > 0.5


def test_an_unknown_method_is_refused():
    train, labels, _, _, head = _data()
    with pytest.raises(ValueError, match="unknown method"):
        ood.fit("odin", train, labels, head, PARAMS)


def _head_graph(path: Path, head: ood.Head, opset: int, gemm: bool = False) -> Path:
    """features (a graph input) → dense → softmax, as tf2onnx (MatMul + Add) or a quantizer
    (Gemm) writes the classifier's last layer."""
    x = helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", D])
    out = helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", CLASSES])
    inits = [onnx.numpy_helper.from_array(head.weight.astype(np.float32), "W"),
             onnx.numpy_helper.from_array(head.bias.astype(np.float32), "b")]  # fmt: skip
    if gemm:
        nodes = [helper.make_node("Gemm", ["features", "W", "b"], ["logits"])]
    else:
        nodes = [helper.make_node("MatMul", ["features", "W"], ["xw"]),
                 helper.make_node("Add", ["xw", "b"], ["logits"])]  # fmt: skip
    nodes.append(helper.make_node("Softmax", ["logits"], [OUTPUT_NAME], axis=1))
    graph = helper.make_graph(nodes, "head", [x], [out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("gemm", [False, True])
def test_head_tensors_finds_the_features_the_logits_and_the_weights(tmp_path, gemm):
    *_, head = _data()
    graph = onnx.load(str(_head_graph(tmp_path / "m.onnx", head, 13, gemm)))
    found = head_tensors(graph)
    assert (found.features, found.logits) == ("features", "logits")
    np.testing.assert_allclose(found.weight, head.weight, rtol=1e-6)
    np.testing.assert_allclose(found.bias, head.bias)


@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize("method", ood.METHODS)
def test_the_served_graph_computes_the_methods_score(tmp_path, method, opset):
    train, labels, held, outside, head = _data()
    scorer = ood.fit(method, train, labels, head, PARAMS)
    path = _head_graph(tmp_path / "m.onnx", head, opset)
    graph = onnx.load(str(path))
    found = head_tensors(graph)
    ood.add_output(graph, found.features, found.logits, scorer)
    onnx.checker.check_model(graph)
    onnx.save(graph, str(path))
    batch = np.concatenate([held[:20], outside[:20]]).astype(np.float32)
    served = session(path).run([UNKNOWN_NAME], {"features": batch})[0]
    assert served.shape == (40, 1)
    np.testing.assert_allclose(served[:, 0], scorer.score(batch), rtol=1e-4, atol=1e-4)


def test_auroc_on_a_known_table_counts_ties_half():
    inside, outside = np.array([0.0, 1.0, 2.0]), np.array([1.0, 3.0])
    # pairs outside > inside: 1>0, 3>0, 3>1, 3>2 = 4; one tie (1 = 1) counts half: 4.5 / 6
    assert ood.auroc(inside, outside) == pytest.approx(4.5 / 6)
    assert ood.auroc(inside, inside + 10) == 1.0
    assert ood.auroc(inside + 10, inside) == 0.0
    assert np.isnan(ood.auroc(inside, np.array([])))


def test_fpr95_and_the_threshold_on_known_scores():
    inside = np.arange(100, dtype=float)  # 95 % of them are at most 94.05
    assert ood.fpr_at_95_tpr(inside, np.array([10.0, 50.0, 94.0, 200.0])) == 0.75
    assert ood.threshold(inside, 0.02) == pytest.approx(97.02)
    row = ood.evaluate(inside, np.array([10.0, 98.0, 120.0, 150.0]), 97.02)
    # above: 10 + 98 + 100 + 100 of 400 pairs, and two ties (10, 98) at half: 309 / 400
    assert row == {"images": 4, "auroc": pytest.approx(0.7725, abs=1e-4), "fpr95": 0.25,
                   "flagged": 0.75}  # fmt: skip


def _row(near: float | None, photos: float, flagged: float = 0.1) -> dict:
    row = {"photos": {"auroc": photos, "flagged": flagged},
           "noise": {"auroc": 0.5, "flagged": 0.0}}  # fmt: skip
    if near is not None:
        row["near"] = {"auroc": near, "flagged": flagged}
    return row


def test_auto_serves_the_best_near_auroc_else_the_best_on_photos():
    table = {m: _row(0.6, 0.9) for m in ood.METHODS} | {"drift": _row(0.99, 0.99)}
    table["vim"], table["knn"] = _row(0.8, 0.7), _row(0.7, 0.95)
    assert choose(table, "auto") == "vim"  # drift answers another question: never served here
    assert choose(table, "knn") == "knn"  # a named method is served as named
    without_near = {m: _row(None, r["photos"]["auroc"]) for m, r in table.items()}
    assert choose(without_near, "auto") == "knn"
    # the digits' case: the best ranking flags little at the served rate, another flags more
    table["vim"], table["rmds"] = _row(0.962, 0.99, flagged=0.04), _row(0.958, 0.99, flagged=0.47)
    assert choose(table, "auto") == "vim"
    assert choose(table, "auto", by="flagged") == "rmds"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"method": "odin"}, "method"),
        ({"choose_by": "luck"}, "choose_by"),
        ({"false_flag_rate": 0.0}, "false_flag_rate"),
        ({"false_flag_rate": 0.6}, "false_flag_rate"),
        ({"components": 0}, "components"),
        ({"knn_k": 0}, "knn_k"),
        ({"react_percentile": 120.0}, "react_percentile"),
        ({"near_images": -1}, "near_images"),
    ],
)
def test_settings_out_of_range_name_their_key(change, message):
    with pytest.raises(UserError, match=message):
        dataclasses.replace(PARAMS, **change)


def test_the_digits_tool_keeps_the_unknown_digits_apart(tmp_path):
    from model_preparation.tools.digits import write

    images = np.stack([np.full((8, 8), 16 * d, np.uint8) for d in range(10)] * 2)
    labels = np.array(list(range(10)) * 2)
    counts = write(images, labels, {8, 9}, 16, tmp_path / "raw", tmp_path / "unknown")
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == sorted(
        ["zero", "one", "two", "three", "four", "five", "six", "seven"])  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "unknown").iterdir()) == ["eight", "nine"]
    assert counts["nine"] == 2 and sum(counts.values()) == 20
    from PIL import Image

    scan = Image.open(next((tmp_path / "raw" / "zero").iterdir()))
    assert scan.size == (16, 16) and scan.mode == "RGB"
    assert np.asarray(scan).min() == 255  # digit 0's stand-in has no ink: white, as on paper


def test_the_near_set_is_the_unknown_folder_and_it_may_not_hold_a_known_class(tmp_path):
    from PIL import Image

    from model_preparation.reference import unknown_images

    assert len(unknown_images(tmp_path / "absent", ("a", "b"), 16)) == 0
    for name in ("c", "d"):
        (tmp_path / "u" / name).mkdir(parents=True)
        Image.new("RGB", (20, 10), (9, 9, 9)).save(tmp_path / "u" / name / "x.png")
    found = unknown_images(tmp_path / "u", ("a", "b"), 16)
    assert found.shape == (2, 16, 16, 3) and found.dtype == np.uint8
    with pytest.raises(UserError, match="classes the model knows \\(c\\)"):
        unknown_images(tmp_path / "u", ("a", "c"), 16)
