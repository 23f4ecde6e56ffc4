"""ONNX helpers without TensorFlow: the graph's signature; the runtimes (``imgcls.runtimes``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from imgcls.contract import DRIFT_NAME, OUTPUT_NAME
from imgcls.runtimes import OpenVinoSession, onnxruntime_session, predict

from .common import PipelineError

__all__ = ["OpenVinoSession", "TensorSpec", "predict", "session", "signature"]

_ONNX_TO_TRITON = {
    onnx.TensorProto.UINT8: "TYPE_UINT8",
    onnx.TensorProto.FLOAT: "TYPE_FP32",
    onnx.TensorProto.FLOAT16: "TYPE_FP16",
    onnx.TensorProto.INT64: "TYPE_INT64",
    onnx.TensorProto.INT32: "TYPE_INT32",
}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    triton_type: str
    dims: list[int]  # without the batch dimension; -1 for dynamic


def _spec(value: onnx.ValueInfoProto) -> TensorSpec:
    tensor = value.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
    return TensorSpec(value.name, _ONNX_TO_TRITON[tensor.elem_type], dims[1:])


def signature(path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """(inputs, outputs) of the graph, batch dimension removed."""
    model = onnx.load(str(path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    inputs = [_spec(v) for v in model.graph.input if v.name not in initializers]
    return inputs, [_spec(v) for v in model.graph.output]


def session(path: Path, threads: int = 0):
    """An ONNX Runtime session (``imgcls.runtimes``: one home for the runtimes)."""
    return onnxruntime_session(path, threads)


def layer_tensor(model: onnx.ModelProto, layer: str) -> str:
    """The float activation a Keras ``layer`` outputs in the converted graph: the first node
    output named ``layer`` or ``…/<layer>_<n>/…`` (tf2onnx's naming), quantize/dequantize nodes
    aside, so the FP32 graph and its INT8 copy give the same tensor. An exact tensor name works
    too."""
    pattern = re.compile(rf"(^|/){re.escape(layer)}(_\d+)?(/|:|$)")
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for out in node.output:
            if out == layer or pattern.search(out):
                return out
    raise PipelineError(f"the graph has no activation of a layer named {layer!r}: "
                        "set reference.layer to one of the model's layers")  # fmt: skip


def add_drift_output(
    model: onnx.ModelProto,
    tensor: str,
    axes: tuple[int, int],
    projection: np.ndarray,
    offset: np.ndarray,
    class_means: np.ndarray,
) -> None:
    """Append ``drift`` (N×1): the reference's Mahalanobis score (``reference.py``) of the
    per-channel mean and standard deviation of ``tensor`` over ``axes``,
    ``min_c ||e @ A - b - a_c||² / k``, computed as ``||y||² - 2 y·a_c + ||a_c||²`` so it needs
    two reductions, two matrix products and a min."""
    from onnx import numpy_helper

    k = projection.shape[1]
    consts = {
        "drift_A": projection.astype(np.float32),
        "drift_b": offset.astype(np.float32),
        "drift_Ct": (-2.0 * class_means.T).astype(np.float32),
        "drift_n": (class_means**2).sum(1, keepdims=True).T.astype(np.float32),
        "drift_axes": np.array([1], np.int64),
        "drift_spatial": np.array(axes, np.int64),
        "drift_scale": np.array(1.0 / k, np.float32),
    }
    model.graph.initializer.extend(numpy_helper.from_array(v, n) for n, v in consts.items())
    make = onnx.helper.make_node
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)

    def reduce(op: str, x: str, out: str, axes_name: str, values: list[int], keep: int):
        if (op == "ReduceSum" and opset >= 13) or opset >= 18:  # axes became an input
            return make(op, [x, axes_name], [out], keepdims=keep)
        return make(op, [x], [out], axes=values, keepdims=keep)

    spatial = list(axes)
    model.graph.node.extend([
        reduce("ReduceMean", tensor, "drift_mean", "drift_spatial", spatial, 1),
        make("Sub", [tensor, "drift_mean"], ["drift_dev"]),
        make("Mul", ["drift_dev", "drift_dev"], ["drift_dev2"]),
        reduce("ReduceMean", "drift_dev2", "drift_var", "drift_spatial", spatial, 1),
        make("Sqrt", ["drift_var"], ["drift_std"]),
        make("Flatten", ["drift_mean"], ["drift_mean_f"], axis=1),
        make("Flatten", ["drift_std"], ["drift_std_f"], axis=1),
        make("Concat", ["drift_mean_f", "drift_std_f"], ["drift_e"], axis=1),
        make("MatMul", ["drift_e", "drift_A"], ["drift_eA"]),
        make("Sub", ["drift_eA", "drift_b"], ["drift_y"]),
        make("Mul", ["drift_y", "drift_y"], ["drift_y2"]),
        reduce("ReduceSum", "drift_y2", "drift_norm", "drift_axes", [1], 1),
        make("MatMul", ["drift_y", "drift_Ct"], ["drift_cross"]),
        make("Add", ["drift_norm", "drift_cross"], ["drift_part"]),
        make("Add", ["drift_part", "drift_n"], ["drift_dist"]),
        reduce("ReduceMin", "drift_dist", "drift_min", "drift_axes", [1], 1),
        make("Mul", ["drift_min", "drift_scale"], [DRIFT_NAME]),
    ])  # fmt: skip
    model.graph.output.append(
        onnx.helper.make_tensor_value_info(DRIFT_NAME, onnx.TensorProto.FLOAT, ["N", 1])
    )


@dataclass(frozen=True)
class HeadTensors:
    """Where the classifier's last layer is in a graph: its input (the penultimate features,
    N×D), its output (the logits, N×C) and, where they are plain initializers, its weights."""

    features: str
    logits: str
    weight: np.ndarray | None  # D × C
    bias: np.ndarray | None  # C


def head_tensors(model: onnx.ModelProto) -> HeadTensors:
    """Walk back from the Softmax that makes ``OUTPUT_NAME``: Softmax ← Add(bias) ← MatMul(W) (or
    one Gemm, or a MatMul without a bias), passing quantize/dequantize nodes, so an INT8 copy of
    the graph is read the same."""
    from onnx import numpy_helper

    producer = {out: node for node in model.graph.node for out in node.output}
    inits = {i.name: i for i in model.graph.initializer}

    def back(name: str) -> onnx.NodeProto:
        node = producer.get(name)
        while node is not None and node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            node = producer.get(node.input[0])
        if node is None:
            raise PipelineError(f"cannot find what computes {name} in the graph")
        return node

    def constant(name: str) -> np.ndarray | None:  # None where quantized (INT8)
        return numpy_helper.to_array(inits[name]) if name in inits else None

    softmax = back(OUTPUT_NAME)
    if softmax.op_type != "Softmax":
        raise PipelineError(f"the graph's {OUTPUT_NAME} is not a softmax ({softmax.op_type})")
    logits = softmax.input[0]
    top = back(logits)
    if top.op_type == "Gemm":
        weight, bias = constant(top.input[1]), constant(top.input[2])
        return HeadTensors(_undq(top.input[0], producer), logits, weight, bias)
    if top.op_type == "MatMul":  # a dense layer without a bias
        weight = constant(top.input[1])
        bias = None if weight is None else np.zeros(weight.shape[1], weight.dtype)
        return HeadTensors(_undq(top.input[0], producer), logits, weight, bias)
    if top.op_type != "Add":
        raise PipelineError(f"the logits come from {top.op_type}, not a dense layer's Add")
    matmul_out, bias_name = top.input
    matmul = back(matmul_out)
    if matmul.op_type != "MatMul":
        matmul_out, bias_name = bias_name, matmul_out
        matmul = back(matmul_out)
    if matmul.op_type != "MatMul":
        raise PipelineError("the logits do not come from a MatMul and an Add")
    return HeadTensors(_undq(matmul.input[0], producer), logits,
                       constant(matmul.input[1]), constant(bias_name))  # fmt: skip


def _undq(name: str, producer: dict) -> str:
    """The float tensor before a quantize/dequantize pair (what an FP32 graph also has)."""
    node = producer.get(name)
    while node is not None and node.op_type in ("QuantizeLinear", "DequantizeLinear"):
        name = node.input[0]
        node = producer.get(name)
    return name
