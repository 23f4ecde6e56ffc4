"""The INT8 recipe's graph rewrites: exact where they claim to be, and they leave no float
Pad / per-channel Mul for ONNX Runtime to run between the INT8 convolutions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from model_preparation.int8 import (
    channel_scales_to_depthwise_conv,
    quantize_int8,
    zero_pads_in_uint8,
)

RNG = np.random.default_rng(0)


def _init(name: str, value: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(value, name)


def _stem_model() -> onnx.ModelProto:
    """uint8 NHWC image → conv → zero pad → max-pool → BN scale (one negative channel) → relu
    → 1×1 conv → global pool → softmax: the shapes of ResNet50V2's stem and pre-activation."""
    scale = RNG.uniform(0.5, 2.0, (1, 8, 1, 1)).astype(np.float32)
    scale[0, 3] = -0.7
    nodes = [
        helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["f", "rescale"], ["r"]),
        helper.make_node("Transpose", ["r"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node("Pad", ["c1", "pads"], ["padded"], mode="constant"),
        helper.make_node("MaxPool", ["padded"], ["pooled"], kernel_shape=[3, 3], strides=[2, 2]),
        helper.make_node("Mul", ["pooled", "bn_scale"], ["bn"]),
        helper.make_node("Relu", ["bn"], ["act"]),
        helper.make_node("Conv", ["act", "w2", "b2"], ["c2"], kernel_shape=[1, 1]),
        helper.make_node("GlobalAveragePool", ["c2"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"]),
    ]
    inits = [
        _init("rescale", np.array(1 / 255, np.float32)),
        _init("w1", RNG.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32)),
        _init("b1", RNG.normal(0, 0.1, 8).astype(np.float32)),
        _init("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)),
        _init("bn_scale", scale),
        _init("w2", RNG.normal(0, 0.5, (4, 8, 1, 1)).astype(np.float32)),
        _init("b2", RNG.normal(0, 0.1, 4).astype(np.float32)),
    ]
    graph = helper.make_graph(
        nodes,
        "stem",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", 16, 16, 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 4])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto | Path, x: np.ndarray) -> np.ndarray:
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _images(n: int) -> np.ndarray:
    return RNG.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)


def test_channel_scales_become_an_exact_depthwise_conv():
    model = _stem_model()
    x = _images(8)
    # a 1×1×1×1 scale broadcasts over all 8 channels: not a per-channel scale, it stays a Mul
    model.graph.initializer.append(_init("broadcast", np.full((1, 1, 1, 1), 0.5, np.float32)))
    model.graph.node.insert(4, helper.make_node("Mul", ["c1", "broadcast"], ["c1_half"]))
    next(n for n in model.graph.node if n.op_type == "Pad").input[0] = "c1_half"
    before = _run(model, x)
    # the scalar rescale and the broadcast scale are not per-channel and must stay Muls
    assert channel_scales_to_depthwise_conv(model) == 1
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Mul") == 2 and ops.count("Conv") == 3
    dw = next(n for n in model.graph.node if n.name.endswith("/dw"))
    assert helper.get_attribute_value(next(a for a in dw.attribute if a.name == "group")) == 8
    np.testing.assert_allclose(_run(model, x), before, rtol=1e-6, atol=1e-7)


def test_uint8_pad_is_bit_identical_to_dequantize_pad_quantize():
    scale, zero_point = np.array(0.05, np.float32), np.array(117, np.uint8)
    nodes = [
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["f"]),
        helper.make_node("Pad", ["f", "pads"], ["p"], mode="constant"),
        helper.make_node("QuantizeLinear", ["p", "s", "z"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "pad",
        [helper.make_tensor_value_info("q", TensorProto.UINT8, [2, 3, 5, 5])],
        [helper.make_tensor_value_info("out", TensorProto.UINT8, [2, 3, 7, 7])],
        [_init("s", scale), _init("z", zero_point), _init("pads", np.array([0, 0, 1, 1] * 2))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    q = RNG.integers(0, 256, (2, 3, 5, 5), dtype=np.uint8)
    before = _run(model, q)
    assert zero_pads_in_uint8(model) == 1
    assert [n.op_type for n in model.graph.node] == ["Pad"]
    np.testing.assert_array_equal(_run(model, q), before)
    assert (before[:, :, 0, :] == 117).all()


def test_quantized_stem_keeps_every_op_in_eight_bits(tmp_path: Path):
    fp32 = tmp_path / "fp32.onnx"
    onnx.save(_stem_model(), str(fp32))
    int8 = tmp_path / "int8.onnx"
    calibration = _images(64)
    quantize_int8(fp32, int8, calibration)

    graph = onnx.load(str(int8)).graph
    producer = {o: n.op_type for n in graph.node for o in n.output}
    (pad,) = (n for n in graph.node if n.op_type == "Pad")
    assert producer[pad.input[0]] != "DequantizeLinear"  # pads the uint8 tensor
    ops = [n.op_type for n in graph.node]
    assert ops.count("Mul") == 1 and ops.count("Conv") == 3  # only the scalar rescale is a Mul

    x = _images(32)
    expected, got = _run(fp32, x), _run(int8, x)
    assert np.abs(expected - got).max() < 0.05
    assert np.mean(expected.argmax(1) == got.argmax(1)) >= 0.9
