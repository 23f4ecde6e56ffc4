"""Stage ``export``: Keras → ONNX (tf2onnx) with named tensors and a dynamic batch dimension.

The stage fails, and leaves no ONNX file behind, if ONNX Runtime and Keras disagree on a
sample of validation images by more than ``tolerance``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from .common import (
    EXPORT_REPORT,
    INPUT_NAME,
    KERAS_MODEL,
    ONNX_MODEL,
    OUTPUT_NAME,
    PREPARED,
    PipelineError,
    load_settings,
    quiet_tensorflow,
    read_json,
    run_cli,
    write_json,
)
from .onnx_utils import predict, session, signature

quiet_tensorflow()
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf2onnx  # noqa: E402

from .tfdata import read_split  # noqa: E402


@dataclass(frozen=True)
class ExportParams:
    """params.yaml ``export``."""

    opset: int
    tolerance: float  # max abs diff ONNX Runtime vs Keras
    parity_samples: int


def rename_output(model: onnx.ModelProto, new_name: str) -> None:
    """tf2onnx names outputs after the TF graph; the contract with Triton is ``probabilities``."""
    old = model.graph.output[0].name
    if old == new_name:
        return
    for node in model.graph.node:
        node.output[:] = [new_name if o == old else o for o in node.output]
        node.input[:] = [new_name if i == old else i for i in node.input]
    model.graph.output[0].name = new_name


def convert(keras_model: keras.Model, image_size: int, opset: int) -> onnx.ModelProto:
    spec = (tf.TensorSpec((None, image_size, image_size, 3), tf.uint8, name=INPUT_NAME),)
    model_proto, _ = tf2onnx.convert.from_keras(keras_model, input_signature=spec, opset=opset)
    rename_output(model_proto, OUTPUT_NAME)
    return model_proto


def export(model_path: Path, prepared: Path, out: Path, report: Path, params: ExportParams) -> dict:
    meta = read_json(prepared / "meta.json")
    size = int(meta["image_size"])
    keras_model = keras.models.load_model(model_path, compile=False)
    proto = convert(keras_model, size, params.opset)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(out))

    n = params.parity_samples
    images = np.stack(
        [img for img, _ in read_split(prepared, "val", size).take(n).as_numpy_iterator()]
    )
    expected = keras_model.predict(images, verbose=0)
    actual = predict(session(out), images)
    max_diff = float(np.max(np.abs(expected - actual)))
    tolerance = params.tolerance
    inputs, outputs = signature(out)
    result = {
        "max_abs_diff": max_diff,
        "tolerance": tolerance,
        "samples": len(images),
        "top1_agreement": float(np.mean(expected.argmax(1) == actual.argmax(1))),
        "input": {"name": inputs[0].name, "type": inputs[0].triton_type, "dims": inputs[0].dims},
        "output": {
            "name": outputs[0].name,
            "type": outputs[0].triton_type,
            "dims": outputs[0].dims,
        },
    }
    write_json(report, result)
    if not max_diff <= tolerance:
        out.unlink(missing_ok=True)
        raise PipelineError(f"ONNX Runtime differs from Keras by {max_diff:.2e} > {tolerance:.0e}")
    return result


def main() -> None:
    params = load_settings(ExportParams, "export")
    result = export(KERAS_MODEL, PREPARED, ONNX_MODEL, EXPORT_REPORT, params)
    print(
        f"export: {ONNX_MODEL}, ONNX vs Keras max abs diff {result['max_abs_diff']:.2e} "
        f"on {result['samples']} images"
    )


if __name__ == "__main__":
    run_cli(main)
