"""ONNX helpers without TensorFlow: the graph's signature; the runtimes (``imgcls.runtimes``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx

from imgcls.runtimes import OpenVinoSession, onnxruntime_session, predict

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
