"""Small, real ONNX graphs for tests that need a model but not ResNet50V2."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper


def tiny_onnx(path, classes: int = 3, size: int = 8, scale: float = 1.0):
    """uint8 image → mean over pixels → softmax of a fixed projection (a real, runnable graph);
    another ``scale`` gives another model (other weights, other bytes)."""
    inp = helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", size, size, 3])
    out = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", classes])
    weights = helper.make_tensor(
        "w", TensorProto.FLOAT, [3, classes], (np.eye(3, classes) * scale).flatten().tolist()
    )
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
