"""publish: the Triton config is generated from the ONNX graph and refuses inconsistent labels."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from model_preparation.common import PipelineError
from model_preparation.onnx_utils import session
from model_preparation.publish import publish


def _tiny_onnx(path, classes: int = 3, size: int = 8):
    """uint8 image → mean over pixels → softmax of a fixed projection (a real, runnable graph)."""
    inp = helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", size, size, 3])
    out = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", classes])
    weights = helper.make_tensor(
        "w", TensorProto.FLOAT, [3, classes], np.eye(3, classes).flatten().tolist()
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


def test_config_and_labels_follow_the_graph(tmp_path):
    model = _tiny_onnx(tmp_path / "m.onnx")
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\n")
    receipt = publish(model, labels, tmp_path / "repo", {"model_name": "m", "max_batch_size": 4})
    config = (tmp_path / "repo/m/config.pbtxt").read_text()
    assert 'name: "m"' in config and "max_batch_size: 4" in config
    assert "data_type: TYPE_UINT8" in config and "dims: [ 8, 8, 3 ]" in config
    assert "dims: [ 3 ]" in config and 'label_filename: "labels.txt"' in config
    assert (tmp_path / "repo/m/labels.txt").read_text() == "a\nb\nc\n"
    assert receipt["num_classes"] == 3
    probs = session(tmp_path / "repo/m/1/model.onnx").run(
        None, {"image": np.zeros((2, 8, 8, 3), np.uint8)}
    )[0]
    assert probs.shape == (2, 3)


def test_label_count_must_match_the_output(tmp_path):
    model = _tiny_onnx(tmp_path / "m.onnx", classes=3)
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\n")
    with pytest.raises(PipelineError, match="3 classes but there are 2 labels"):
        publish(model, labels, tmp_path / "repo", {})


def test_thread_layout_uses_the_native_backends_parameter_names(tmp_path):
    model = _tiny_onnx(tmp_path / "m.onnx")
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\n")
    layout = {"model_name": "m", "instance_count": 2, "ort_intra_op_threads": 1}
    publish(model, labels, tmp_path / "two", layout)
    config = (tmp_path / "two/m/config.pbtxt").read_text()
    assert "count: 2" in config and "kind:" not in config  # Triton picks GPU where there is one
    assert 'parameters { key: "intra_op_thread_count" value: { string_value: "1" } }' in config
    publish(model, labels, tmp_path / "default", {"model_name": "m"})
    default = (tmp_path / "default/m/config.pbtxt").read_text()
    assert "count: 1" in default and "intra_op_thread_count" not in default
