"""ONNX helpers without TensorFlow: graph signature and an ONNX Runtime session."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

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
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def predict(sess, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Probabilities for uint8 images, in batches."""
    name = sess.get_inputs()[0].name
    out = [
        sess.run(None, {name: images[i : i + batch_size]})[0]
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def quantize_int8(model: Path, out: Path, calibration: np.ndarray, batch_size: int = 16) -> None:
    """Static QDQ INT8: per-channel int8 weights, uint8 activations calibrated on ``calibration``
    (uint8 images ``N×H×W×3``). The one recipe of the project: the pipeline and the bench use it."""
    import tempfile

    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    input_name = signature(model)[0][0].name

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = (
                calibration[i : i + batch_size] for i in range(0, len(calibration), batch_size)
            )

        def get_next(self):
            chunk = next(self._it, None)
            return None if chunk is None else {input_name: chunk}

    with tempfile.TemporaryDirectory() as tmp:
        prepped = Path(tmp) / "prepped.onnx"
        quant_pre_process(str(model), str(prepped), skip_symbolic_shape=True)
        quantize_static(
            str(prepped),
            str(out),
            Batches(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
