"""Stage ``export``: Keras → ONNX (tf2onnx) with named tensors and a dynamic batch dimension.

The stage fails, and leaves no ONNX file behind, if ONNX Runtime and Keras disagree on a
sample of validation images by more than ``tolerance``.

Memory: converting in-process (``tf2onnx.convert.from_keras``) peaks far above the model's size
at 224² (README "Performance" has the figures), almost all of it native protobuf memory held by
tf2onnx's graph optimiser. So the conversion runs in two child processes that hold nothing else:
Keras → SavedModel (the uint8 ``image`` serving signature), then tf2onnx's converter (its
``python -m tf2onnx.convert``, started through ``--tf2onnx``) on that SavedModel with protobuf's
pure-Python implementation, whose peak stays near the size of
TensorFlow's own graph freezing. The first child also answers the parity check's images with
Keras, so this process never imports TensorFlow and the stage's tree never holds two of them.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
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
    Prepared,
    load_settings,
    quiet_tensorflow,
    run_cli,
    write_json,
)
from .onnx_utils import predict, session, signature


@dataclass(frozen=True)
class ExportParams:
    """params.yaml ``export``."""

    opset: int
    tolerance: float  # max abs diff ONNX Runtime vs Keras
    parity_samples: int


@dataclass(frozen=True)
class Parity:
    """Validation images for Keras to answer in the child that already holds the model (this
    process then needs no TensorFlow of its own): the first ``samples`` of ``prepared``'s
    validation split, written with Keras' probabilities to ``answers`` (.npz)."""

    prepared: Path
    samples: int
    answers: Path


def _child(cmd: list[str], what: str, env: dict[str, str] | None = None) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if done.returncode != 0:
        raise PipelineError(f"{what} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")


def rename_output(model: onnx.ModelProto, new_name: str) -> None:
    """tf2onnx names outputs after the TF graph; the contract with Triton is ``probabilities``."""
    old = model.graph.output[0].name
    if old == new_name:
        return
    for node in model.graph.node:
        node.output[:] = [new_name if o == old else o for o in node.output]
        node.input[:] = [new_name if i == old else i for i in node.input]
    model.graph.output[0].name = new_name


def saved_model(keras_path: Path, out: Path, image_size: int, parity: Parity | None = None) -> None:
    """Keras → SavedModel with the serving signature (run in a child: ``--saved-model``), and
    with ``parity`` Keras' answers to those validation images, for the check after conversion."""
    quiet_tensorflow()
    import tensorflow as tf

    from .pixel_layers import load_model

    model = load_model(keras_path)
    spec = tf.TensorSpec((None, image_size, image_size, 3), tf.uint8, name=INPUT_NAME)
    model.export(str(out), format="tf_saved_model", input_signature=[spec], verbose=False)
    if parity is not None:
        from .records import load_arrays

        images, _ = load_arrays(parity.prepared, "val", image_size, limit=parity.samples)
        np.savez(parity.answers, images=images, keras=model.predict(images, verbose=0))


def convert(keras_path: Path, image_size: int, opset: int, out: Path,
            parity: Parity | None = None) -> None:  # fmt: skip
    """Keras file → ONNX file, each step in a child process (see the module's docstring)."""
    checked = [] if parity is None else [str(parity.prepared), str(parity.samples),
                                         str(parity.answers)]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="imgcls-export-") as tmp:
        exported = Path(tmp) / "saved_model"
        converted = Path(tmp) / "model.onnx"
        _child([sys.executable, "-m", "model_preparation.export", "--saved-model",
                str(keras_path), str(exported), str(image_size), *checked],
               "Keras → SavedModel")  # fmt: skip
        _child(
            [sys.executable, "-m", "model_preparation.export", "--tf2onnx", "--saved-model",
             str(exported), "--output", str(converted), "--opset", str(opset)],
            "tf2onnx",
            env={"PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python", "TF_CPP_MIN_LOG_LEVEL": "3"},
        )  # fmt: skip
        proto = onnx.load(str(converted))
    rename_output(proto, OUTPUT_NAME)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(out))


def export(model_path: Path, prepared: Path, out: Path, report: Path, params: ExportParams) -> dict:
    size = Prepared.read(prepared).image_size
    with tempfile.TemporaryDirectory(prefix="imgcls-parity-") as tmp:
        parity = Parity(prepared, params.parity_samples, Path(tmp) / "keras.npz")
        convert(model_path, size, params.opset, out, parity)
        with np.load(parity.answers) as answers:
            images, expected = answers["images"], answers["keras"]
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


def tf2onnx_main(argv: list[str]) -> None:
    """``python -m tf2onnx.convert`` with ``argv``, on TensorFlow imported the stages' way (the
    second child of convert())."""
    quiet_tensorflow()
    from tf2onnx import convert as tf2onnx_convert

    sys.argv = ["tf2onnx.convert", *argv]
    tf2onnx_convert.main()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--tf2onnx":
        tf2onnx_main(sys.argv[2:])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--saved-model":  # the first child of convert()
        parser = argparse.ArgumentParser(prog="python -m model_preparation.export --saved-model")
        parser.add_argument("--saved-model", nargs="+",
                            metavar="KERAS OUT SIZE [PREPARED SAMPLES ANSWERS]")  # fmt: skip
        keras_path, out, size, *checked = parser.parse_args().saved_model
        parity = Parity(Path(checked[0]), int(checked[1]), Path(checked[2])) if checked else None
        saved_model(Path(keras_path), Path(out), int(size), parity)
        return
    params = load_settings(ExportParams, "export")
    result = export(KERAS_MODEL, PREPARED, ONNX_MODEL, EXPORT_REPORT, params)
    print(
        f"export: {ONNX_MODEL}, ONNX vs Keras max abs diff {result['max_abs_diff']:.2e} "
        f"on {result['samples']} images"
    )


if __name__ == "__main__":
    run_cli(main)
