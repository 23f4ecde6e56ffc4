"""Small, real ONNX graphs for tests that need a model but not ResNet50V2."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper


def tiny_onnx(path, classes: int = 3, size: int = 8, scale: float = 1.0, weights=None):
    """uint8 image → mean over pixels → softmax of a fixed projection (a real, runnable graph):
    by default channel k's mean is class k's logit, so an image whose dominant colour is channel
    k is class k. Another ``scale`` gives another model (other weights, other bytes); ``weights``
    (3 × classes) another projection altogether."""
    inp = helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", size, size, 3])
    out = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", classes])
    matrix = np.eye(3, classes) * scale if weights is None else np.asarray(weights, float)
    weights = helper.make_tensor("w", TensorProto.FLOAT, [3, classes], matrix.flatten().tolist())
    nodes = [
        helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["f"], ["m"], axes=[1, 2], keepdims=0),
        helper.make_node("MatMul", ["m", "w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(nodes, "tiny", [inp], [out], [weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def publish_params(**override):
    """params.yaml's ``publish`` section with ``override`` applied, as the stage's settings."""
    from pathlib import Path

    import yaml

    from model_preparation.common import parse_settings
    from model_preparation.publish import PublishParams

    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    return parse_settings(PublishParams, {**params["publish"], **override}, "test publish")


def slowed(served, out, width: int = 2048, depth: int = 300):
    """``served`` (an ONNX file) computing the very same outputs, after ``depth`` dense layers of
    ``width`` on each image that add nothing (× 0): a version that is much slower and otherwise
    right, as a regression in a real model would be. Each layer is nonlinear, so no optimizer
    folds the chain away."""
    model = onnx.load(str(served))
    graph = model.graph
    image = graph.input[0].name
    probs = graph.output[0].name
    rng = np.random.default_rng(0)
    w = rng.normal(0, 1 / np.sqrt(width), (width, width)).astype(np.float32)
    graph.initializer.extend([
        helper.make_tensor("slow_w", TensorProto.FLOAT, [width, width], w.flatten().tolist()),
        helper.make_tensor("slow_ones", TensorProto.FLOAT, [1, width], [1.0] * width),
        helper.make_tensor("slow_zero", TensorProto.FLOAT, [], [0.0]),
        helper.make_tensor("slow_axes", TensorProto.INT64, [1], [1]),
    ])  # fmt: skip
    nodes = [
        helper.make_node("Cast", [image], ["slow_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["slow_f"], ["slow_m"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Reshape", ["slow_m", "slow_shape"], ["slow_u"]),
        helper.make_node("Mul", ["slow_u", "slow_ones"], ["slow_x0"]),
    ]
    graph.initializer.append(helper.make_tensor("slow_shape", TensorProto.INT64, [2], [-1, 1]))
    for i in range(depth):
        nodes.append(helper.make_node("MatMul", [f"slow_x{i}", "slow_w"], [f"slow_y{i}"]))
        nodes.append(helper.make_node("Tanh", [f"slow_y{i}"], [f"slow_x{i + 1}"]))
    nodes += [
        helper.make_node("ReduceSum", [f"slow_x{depth}", "slow_axes"], ["slow_s"], keepdims=1),
        helper.make_node("Mul", ["slow_s", "slow_zero"], ["slow_nothing"]),
        helper.make_node("Add", ["slow_probs", "slow_nothing"], [probs]),
    ]
    for node in graph.node:  # the original graph now writes its probabilities aside
        for k, name in enumerate(node.output):
            if name == probs:
                node.output[k] = "slow_probs"
    graph.node.extend(nodes)
    onnx.save(model, str(out))
    return out
