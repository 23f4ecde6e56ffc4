"""Stage ``quantize``: the reduced-precision variants of the model, each checked against FP32.

- INT8: static QDQ (per-channel) ONNX model, calibrated on training images (the recipe, and why
  its graph rewrites, in ``int8.py``).
- BF16: the FP32 graph itself, run by OpenVINO with bfloat16 inference precision (the CPU's
  bfloat16 or matrix units; no file of its own: ``publish`` serves the FP32 file on OpenVINO).

For each, on the held-out split: its accuracy, FP32's, and how often both agree on the top-1
class; the stage fails if the agreement falls under ``min_agreement``. How much faster each
runs is ``make bench``'s business.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .common import (
    BF16_REPORT,
    INT8_MODEL,
    INT8_REPORT,
    ONNX_MODEL,
    PREPARED,
    PipelineError,
    Prepared,
    load_settings,
    run_cli,
    write_json,
)
from .int8 import quantize_int8
from .onnx_utils import OpenVinoSession, predict, session
from .records import load_arrays


@dataclass(frozen=True)
class QuantizeParams:
    """params.yaml ``quantize``."""

    calibration_images: int  # training images that calibrate the activation ranges
    min_agreement: float  # fail if INT8 or BF16 and FP32 agree on fewer held-out top-1 classes
    bf16: bool  # check the bfloat16 variant too


def _agreement(name: str, fp32: np.ndarray, other: np.ndarray, labels: np.ndarray) -> dict:
    return {
        "fp32_accuracy": float(np.mean(fp32 == labels)),
        f"{name}_accuracy": float(np.mean(other == labels)),
        "top1_agreement": float(np.mean(fp32 == other)),
        "num_images": len(labels),
    }


def _gate(name: str, result: dict, params: QuantizeParams) -> None:
    if result["top1_agreement"] < params.min_agreement:
        raise PipelineError(
            f"{name} agrees with FP32 on only {result['top1_agreement']:.3f} of images "
            f"(quantize.min_agreement {params.min_agreement})"
        )


def quantize(model: Path, prepared: Path, out: Path, report: Path, params: QuantizeParams) -> dict:
    size = Prepared.read(prepared).image_size
    count = params.calibration_images
    calibration, _ = load_arrays(prepared, "train", size, limit=count)
    quantize_int8(model, out, calibration)
    images, labels = load_arrays(prepared, "val", size)
    fp32 = predict(session(model), images).argmax(1)
    result = _agreement("int8", fp32, predict(session(out), images).argmax(1), labels)
    result["size_mb"] = round(out.stat().st_size / 1e6, 1)
    write_json(report, result)
    _gate("INT8", result, params)
    return result


def check_bf16(model: Path, prepared: Path, report: Path, params: QuantizeParams) -> dict:
    """The FP32 file on OpenVINO in bfloat16 against ONNX Runtime in FP32, on the held-out split."""
    size = Prepared.read(prepared).image_size
    images, labels = load_arrays(prepared, "val", size)
    fp32 = predict(session(model), images).argmax(1)
    bf16 = predict(OpenVinoSession(model, "bf16"), images).argmax(1)
    result = {**_agreement("bf16", fp32, bf16, labels), "checked": True}
    write_json(report, result)
    _gate("BF16", result, params)
    return result


def main() -> None:
    params = load_settings(QuantizeParams, "quantize")
    r = quantize(ONNX_MODEL, PREPARED, INT8_MODEL, INT8_REPORT, params)
    print(
        f"quantize: {INT8_MODEL} ({r['size_mb']} MB); accuracy FP32 {r['fp32_accuracy']:.4f} / "
        f"INT8 {r['int8_accuracy']:.4f}, top-1 agreement {r['top1_agreement']:.4f}"
    )
    if not params.bf16:
        write_json(BF16_REPORT, {"checked": False})
        return
    b = check_bf16(ONNX_MODEL, PREPARED, BF16_REPORT, params)
    print(
        f"quantize: BF16 (OpenVINO) accuracy {b['bf16_accuracy']:.4f}, top-1 agreement with "
        f"FP32 {b['top1_agreement']:.4f}"
    )


if __name__ == "__main__":
    run_cli(main)
