"""The project's one INT8 recipe: static QDQ quantization plus two graph rewrites that keep the
whole network in 8-bit on ONNX Runtime's CPU kernels.

Profiling the plain ``quantize_static`` output of ResNet50V2 (``make bench`` model, batch 8)
showed a third of the time outside the INT8 convolutions:

* the pre-activation BatchNorm scales (``Mul`` by a per-channel constant, the shift is already
  folded into the previous convolution by tf2onnx) become ``QLinearMul`` — an elementwise kernel
  with a broadcast, a large share of the run. As a depthwise 1×1 ``Conv`` (one weight per channel,
  exact in FP32) they quantize to ``QLinearConv`` with the following ``Relu`` fused in, and every
  per-channel INT8 weight is exactly ±127 (its scale is ``|s|/127``), so nothing is lost.
* ``ZeroPadding2D`` before the stem max-pool stays a float ``Pad`` (ONNX Runtime does not fuse
  DQ → Pad → Q): the stem's tensor is dequantized, padded and requantized. Padding the uint8
  tensor with its zero point is bit-identical, because 0.0 quantizes exactly to the zero point.

Both rewrites are exact (tests/test_int8.py); the speed they buy is measured by ``make bench``
and recorded in the README's tuning table, not here, where it would drift.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from .onnx_utils import signature


def quantize_int8(model: Path, out: Path, calibration: np.ndarray, batch_size: int = 16) -> None:
    """Static QDQ INT8: per-channel int8 weights, uint8 activations calibrated on ``calibration``
    (uint8 images ``N×H×W×3``). Used by the pipeline's quantize stage and by the bench."""
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    input_name = signature(model)[0][0].name
    # The sessions quantization opens print one "Removing initializer" warning per folded
    # constant (hundreds for ResNet50V2): errors only, so the pipeline's console shows progress.
    ort.set_default_logger_severity(3)

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = (
                calibration[i : i + batch_size] for i in range(0, len(calibration), batch_size)
            )

        def get_next(self):
            chunk = next(self._it, None)
            return None if chunk is None else {input_name: chunk}

    with tempfile.TemporaryDirectory() as tmp:
        prepped, rewritten, quantized = (Path(tmp) / n for n in ("pre.onnx", "dw.onnx", "q.onnx"))
        quant_pre_process(str(model), str(prepped), skip_symbolic_shape=True)
        graph = onnx.load(str(prepped))
        channel_scales_to_depthwise_conv(graph)
        onnx.save(graph, str(rewritten))
        quantize_static(
            str(rewritten),
            str(quantized),
            Batches(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        graph = onnx.load(str(quantized))
        zero_pads_in_uint8(graph)
        onnx.checker.check_model(graph)
        onnx.save(graph, str(out))


def _per_channel_constant(value: np.ndarray) -> bool:
    return value.ndim == 4 and value.shape[0] == 1 and value.shape[2:] == (1, 1)


def channel_scales_to_depthwise_conv(model: onnx.ModelProto) -> int:
    """Replace ``Mul(x, s)`` with ``s`` of shape 1×C×1×1 and ``x`` N×C×H×W (same C, known from
    shape inference) by a depthwise 1×1 Conv; a scale that broadcasts over channels stays a Mul.

    Returns how many were replaced. FP32 results are unchanged (one multiply per element).
    """
    inferred = shape_inference.infer_shapes(model)
    channels_of = {
        v.name: dims[1].dim_value if len(dims) == 4 and dims[1].HasField("dim_value") else None
        for v in [*inferred.graph.value_info, *inferred.graph.input]
        if v.type.tensor_type.HasField("shape")
        for dims in [v.type.tensor_type.shape.dim]
    }
    inits = {i.name: i for i in model.graph.initializer}
    nodes = list(model.graph.node)
    replaced = 0
    for pos, node in enumerate(nodes):
        if node.op_type != "Mul" or sum(i in inits for i in node.input) != 1:
            continue
        (const,) = (i for i in node.input if i in inits)
        (x,) = (i for i in node.input if i not in inits)
        scale = numpy_helper.to_array(inits[const])
        if scale.dtype != np.float32 or not _per_channel_constant(scale):
            continue
        channels = scale.shape[1]
        if channels_of.get(x) != channels:
            continue
        weight = numpy_helper.from_array(scale.reshape(channels, 1, 1, 1), f"{node.name}/dw_weight")
        model.graph.initializer.append(weight)
        nodes[pos] = helper.make_node(
            "Conv", [x, weight.name], list(node.output), name=f"{node.name}/dw",
            group=channels, kernel_shape=[1, 1],
        )  # fmt: skip
        replaced += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return replaced


def _pads_with_zero(pad: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> bool:
    if any(a.name == "mode" and a.s != b"constant" for a in pad.attribute):
        return False
    if len(pad.input) < 3 or not pad.input[2]:
        return True
    value = inits.get(pad.input[2])
    return value is not None and not numpy_helper.to_array(value).any()


def zero_pads_in_uint8(model: onnx.ModelProto) -> int:
    """Turn ``DequantizeLinear → Pad(constant 0) → QuantizeLinear`` (same scale and zero point)
    into a ``Pad`` of the quantized tensor with the zero point as its value. Returns the count."""
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    inits = {i.name: i for i in model.graph.initializer}
    drop: set[int] = set()
    replace: dict[int, onnx.NodeProto] = {}
    for pad in model.graph.node:
        dq = producer.get(pad.input[0])
        users = consumers.get(pad.output[0], [])
        if (
            pad.op_type != "Pad"
            or dq is None
            or dq.op_type != "DequantizeLinear"
            or len(users) != 1
            or users[0].op_type != "QuantizeLinear"
            or list(users[0].input[1:]) != list(dq.input[1:])
            or len(dq.input) < 3
            or not _pads_with_zero(pad, inits)
        ):
            continue
        q = users[0]
        zero_point = numpy_helper.to_array(inits[dq.input[2]]).reshape(())
        value = numpy_helper.from_array(zero_point, f"{pad.name}/zero_point")
        model.graph.initializer.append(value)
        replace[id(pad)] = helper.make_node(
            "Pad", [dq.input[0], pad.input[1], value.name], list(q.output),
            name=f"{pad.name}/uint8", mode="constant",
        )  # fmt: skip
        drop.add(id(q))
        if len(consumers[dq.output[0]]) == 1:
            drop.add(id(dq))
    nodes = [replace.get(id(n), n) for n in model.graph.node if id(n) not in drop]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return len(replace)
