"""The drift reference (stage ``reference``) and the drift output ``publish`` adds to every served
graph: the score separates unlike inputs, the graph computes exactly the reference's score, and the
served config declares the output only when every loaded version has it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from imgcls.model_records import Lifecycle
from imgcls.repository import ModelDir
from imgcls.triton_config import drift_from_parameters, parameters_in
from model_preparation.common import PipelineError
from model_preparation.onnx_utils import add_drift_output, layer_tensor, session
from model_preparation.ood import auroc as auc
from model_preparation.publish import publish_model, served_onnx
from model_preparation.reference import (
    Reference,
    embedder,
    features,
    fit,
    pool,
    spatial_axes,
)
from tests.models import publish_params, tiny_onnx

LAYER = "conv2_block3_out"
TENSOR = f"net/{LAYER}_1/Mul:0"  # tf2onnx's naming of a Keras layer's output


def layered_onnx(path: Path, opset: int = 13, size: int = 8, seed: int = 0) -> Path:
    """uint8 image → an 'activation' (per-channel scaled, channels last) named like a Keras
    layer → mean over the image → softmax of a projection."""
    rng = np.random.default_rng(seed)
    inp = helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", size, size, 3])
    out = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 3])
    inits = [
        helper.make_tensor("scale", TensorProto.FLOAT, [3], rng.uniform(0.5, 2, 3).tolist()),
        helper.make_tensor("w", TensorProto.FLOAT, [3, 3], rng.normal(size=9).tolist()),
        helper.make_tensor("axes", TensorProto.INT64, [2], [1, 2]),
    ]
    mean = (helper.make_node("ReduceMean", [TENSOR, "axes"], ["m"], keepdims=0) if opset >= 18
            else helper.make_node("ReduceMean", [TENSOR], ["m"], axes=[1, 2], keepdims=0))  # fmt: skip
    nodes = [
        helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["f", "scale"], [TENSOR]),
        mean,
        helper.make_node("MatMul", ["m", "w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(nodes, "layered", [inp], [out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _images(n: int, seed: int, low: int = 0, high: int = 256) -> np.ndarray:
    return np.random.default_rng(seed).integers(low, high, (n, 8, 8, 3), dtype=np.uint8)


def _reference(model: Path) -> Reference:
    sess, name = embedder(model, LAYER)
    train, axes = features(sess, name, _images(200, 1, 0, 128), 64)
    labels = np.arange(200) % 3
    ref = fit(train, labels, components=4, tensor=name, axes=axes)
    held_out = ref.score(features(sess, name, _images(100, 2, 0, 128), 64)[0])
    return Reference(name, axes, ref.projection, ref.offset, ref.class_means,
                     float(np.quantile(held_out, 0.99)))  # fmt: skip


def test_auc_is_the_probability_an_outside_score_is_higher():
    assert auc(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 1.0
    assert auc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 0.0
    assert auc(np.array([1.0]), np.array([1.0])) == 0.5


def test_the_score_tells_a_shifted_distribution_apart():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 10)) * 3
    labels = np.arange(600) % 3

    def sample(n, shift=0.0):
        return centres[np.arange(n) % 3] + rng.normal(size=(n, 10)) + shift

    ref = fit(sample(600), labels, components=10)
    inside, outside = ref.score(sample(300)), ref.score(sample(300, shift=4.0))
    assert np.median(inside) == pytest.approx(1.0, rel=0.25)  # whitened: ~1 per dimension
    assert auc(inside, outside) > 0.99


def test_layer_tensor_finds_a_keras_layer_and_says_when_there_is_none(tmp_path):
    model = onnx.load(str(layered_onnx(tmp_path / "m.onnx")))
    assert layer_tensor(model, LAYER) == TENSOR
    assert layer_tensor(model, TENSOR) == TENSOR
    with pytest.raises(PipelineError, match="no activation of a layer named 'conv9'"):
        layer_tensor(model, "conv9")
    with pytest.raises(PipelineError, match="no activation"):
        layer_tensor(model, "conv2_block3")  # a prefix is not the layer


def test_spatial_axes_of_square_activations():
    assert spatial_axes((4, 16, 16, 256)) == (1, 2)
    assert spatial_axes((4, 256, 16, 16)) == (2, 3)
    with pytest.raises(PipelineError, match=r"reference\.layer"):
        spatial_axes((4, 16, 16, 16))
    with pytest.raises(PipelineError):
        spatial_axes((4, 2048))


def test_pool_is_the_mean_and_spread_per_channel():
    a = np.arange(2 * 2 * 2 * 3, dtype=np.float32).reshape(2, 2, 2, 3)
    pooled = pool(a, (1, 2))
    assert pooled.shape == (2, 6)
    np.testing.assert_allclose(pooled[:, :3], a.mean((1, 2)))
    np.testing.assert_allclose(pooled[:, 3:], a.std((1, 2)))


@pytest.mark.parametrize("opset", [13, 18])
def test_the_served_graph_computes_the_references_score(tmp_path, opset):
    model = layered_onnx(tmp_path / "m.onnx", opset)
    ref = _reference(model)
    graph = onnx.load(str(model))
    add_drift_output(graph, ref.tensor, ref.axes, ref.projection, ref.offset, ref.class_means)
    onnx.save(graph, str(tmp_path / "d.onnx"))
    probe = np.concatenate([_images(8, 3, 0, 128), _images(8, 4, 128, 256)])
    probs, drift = session(tmp_path / "d.onnx").run(None, {"image": probe})
    assert probs.shape == (16, 3) and drift.shape == (16, 1)
    expected = ref.score(features(*embedder(model, LAYER), probe, 16)[0])
    np.testing.assert_allclose(drift[:, 0], expected, rtol=1e-3, atol=1e-3)
    assert np.median(drift[8:]) > ref.threshold > np.median(drift[:8])  # bright: unfamiliar


def test_a_reference_survives_save_and_load_and_its_digest_follows_it(tmp_path):
    ref = _reference(layered_onnx(tmp_path / "m.onnx"))
    ref.save(tmp_path / "r.npz")
    back = Reference.load(tmp_path / "r.npz")
    assert (back.tensor, back.axes) == (ref.tensor, ref.axes)
    assert back.md5 == ref.md5
    moved = Reference(ref.tensor, ref.axes, ref.projection, ref.offset, ref.class_means, 9.0)
    assert moved.md5 != ref.md5
    with pytest.raises(PipelineError, match="dvc repro reference"):
        Reference.load(tmp_path / "missing.npz")


def test_served_copy_is_refused_when_its_drift_output_disagrees(tmp_path):
    model = layered_onnx(tmp_path / "m.onnx")
    ref = _reference(model)
    served_onnx(model, ["a", "b", "c"], tmp_path / "ok.onnx", ref)
    other = layered_onnx(tmp_path / "other.onnx", seed=5)  # same names, other weights
    wrong = _reference(other)
    wrong = Reference(ref.tensor, ref.axes, wrong.projection * 2, wrong.offset, wrong.class_means,
                      wrong.threshold)  # fmt: skip
    # the reference of the other model is checked against the other model: accepted ...
    served_onnx(other, ["a", "b", "c"], tmp_path / "o.onnx", _reference(other))
    # ... a graph whose head is built from one reference but checked against another is not
    import model_preparation.publish as publish

    real = publish.add_drift_output
    try:
        publish.add_drift_output = lambda g, *a: real(g, wrong.tensor, wrong.axes,
                                                     wrong.projection, wrong.offset,
                                                     wrong.class_means)  # fmt: skip
        with pytest.raises(PipelineError, match="drift output"):
            served_onnx(model, ["a", "b", "c"], tmp_path / "bad.onnx", ref)
    finally:
        publish.add_drift_output = real


def test_the_config_declares_drift_only_when_every_loaded_version_has_it(tmp_path):
    repo = tmp_path / "repo"
    model = layered_onnx(tmp_path / "m.onnx")
    ref = _reference(model)
    publish_model("m", model, ["a", "b", "c"], repo, publish_params(), 0.9, reference=ref)
    target = ModelDir(repo, "m")
    assert target.version(1).drift_threshold == pytest.approx(ref.threshold)
    config = target.render(Lifecycle(1))
    assert 'name: "drift"' in config
    assert drift_from_parameters(parameters_in(config)) == {1: pytest.approx(ref.threshold)}
    # a version without a reference (another graph, published without one) loaded beside it
    publish_model("m", tiny_onnx(tmp_path / "t.onnx", size=8), ["a", "b", "c"], repo,
                  publish_params(), 0.9)  # fmt: skip
    assert target.version(2).drift_threshold is None
    both = target.render(Lifecycle(1, 2, "canary", 10))
    assert 'name: "drift"' not in both and "imgcls.drift" not in both
    assert 'name: "drift"' in target.render(Lifecycle(1))


def _with_unknown(model: Path, ref: Reference, method: str = "mahalanobis") -> Reference:
    """``ref`` with an unknown-class score fitted on the model's own head (layered_onnx: the
    3 channel means feed a bias-less MatMul)."""
    from dataclasses import replace

    from model_preparation import ood
    from model_preparation.onnx_utils import head_tensors
    from model_preparation.reference import head_outputs

    head = head_tensors(onnx.load(str(model)))
    images = _images(60, 11, 0, 128)
    feats, logits = head_outputs(model, images)
    params = ood.UnknownParams(method=method, choose_by="auroc", false_flag_rate=0.05,
                               components=2, knn_k=3, knn_bank=50, react_percentile=95.0,
                               near_images=0)  # fmt: skip
    scorer = ood.fit(method, feats, np.arange(60) % 3, ood.Head(head.weight, head.bias), params)
    return replace(
        ref, unknown=scorer, unknown_threshold=ood.threshold(scorer.score(feats, logits), 0.05)
    )


def test_the_unknown_output_is_published_declared_and_checked(tmp_path):
    from imgcls.contract import UNKNOWN_NAME
    from model_preparation.reference import head_outputs

    model = layered_onnx(tmp_path / "m.onnx")
    ref = _with_unknown(model, _reference(model))
    repo = tmp_path / "repo"
    publish_model("m", model, ["a", "b", "c"], repo, publish_params(), 0.9, reference=ref)
    target = ModelDir(repo, "m")
    assert target.version(1).unknown_threshold == pytest.approx(ref.unknown_threshold)
    config = target.render(Lifecycle(1))
    assert f'name: "{UNKNOWN_NAME}"' in config
    assert drift_from_parameters(parameters_in(config), UNKNOWN_NAME) == {
        1: pytest.approx(ref.unknown_threshold)}  # fmt: skip
    served = repo / "m/1/model.onnx"
    probe = _images(6, 12, 0, 256)
    probs, drift, unknown = session(served).run(None, {"image": probe})
    assert probs.shape == (6, 3) and drift.shape == unknown.shape == (6, 1)
    expected = ref.unknown.score(*head_outputs(model, probe))
    np.testing.assert_allclose(unknown[:, 0], expected, rtol=1e-4, atol=1e-4)
    # a version published without the unknown score, loaded beside it: no such output declared
    publish_model("m", model, ["a", "b", "c"], repo, publish_params(), 0.9,
                  reference=Reference(ref.tensor, ref.axes, ref.projection, ref.offset,
                                      ref.class_means, ref.threshold))  # fmt: skip
    both = target.render(Lifecycle(1, 2, "canary", 10))
    assert f'name: "{UNKNOWN_NAME}"' not in both and 'name: "drift"' in both


def test_served_copy_is_refused_when_its_unknown_output_disagrees(tmp_path):
    from model_preparation import ood

    model = layered_onnx(tmp_path / "m.onnx")
    ref = _with_unknown(model, _reference(model))
    other = _with_unknown(model, _reference(model), method="energy").unknown
    real = ood.add_output
    try:
        ood.add_output = lambda g, f, z, _scorer: real(g, f, z, other)
        with pytest.raises(PipelineError, match="unknown output"):
            served_onnx(model, ["a", "b", "c"], tmp_path / "bad.onnx", ref)
    finally:
        ood.add_output = real
    served_onnx(model, ["a", "b", "c"], tmp_path / "ok.onnx", ref)  # the right one: accepted


def test_a_reference_with_an_unknown_score_survives_save_and_load(tmp_path):
    model = layered_onnx(tmp_path / "m.onnx")
    ref = _with_unknown(model, _reference(model))
    ref.save(tmp_path / "r.npz")
    back = Reference.load(tmp_path / "r.npz")
    assert back.unknown.method == "mahalanobis" and back.md5 == ref.md5
    assert back.unknown_threshold == pytest.approx(ref.unknown_threshold)
    probe = _images(5, 13, 0, 256)
    from model_preparation.reference import head_outputs

    np.testing.assert_allclose(back.unknown.score(*head_outputs(model, probe)),
                               ref.unknown.score(*head_outputs(model, probe)))  # fmt: skip
    from dataclasses import replace

    assert replace(ref, unknown_threshold=ref.unknown_threshold + 1).md5 != ref.md5


def test_republishing_with_another_reference_makes_a_new_version(tmp_path):
    repo = tmp_path / "repo"
    model = layered_onnx(tmp_path / "m.onnx")
    ref = _reference(model)
    first = publish_model("m", model, ["a", "b", "c"], repo, publish_params(), reference=ref)
    again = publish_model("m", model, ["a", "b", "c"], repo, publish_params(), reference=ref)
    moved = Reference(ref.tensor, ref.axes, ref.projection, ref.offset, ref.class_means, 7.0)
    other = publish_model("m", model, ["a", "b", "c"], repo, publish_params(), reference=moved)
    assert first["version"] == again["version"] != other["version"]
