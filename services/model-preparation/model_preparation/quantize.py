"""Stage ``quantize``: static QDQ INT8 (per-channel) ONNX model, calibrated on training images.

The recipe (and why its graph rewrites) is in ``int8.py``; on the 2-core bench machine ONNX
Runtime runs the INT8 graph ~3x faster than FP32. The stage reports, on the
held-out split, FP32 accuracy, INT8 accuracy and how often both agree on the top-1 class, and
fails if the agreement falls under ``min_agreement``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .common import (
    INT8_MODEL,
    INT8_REPORT,
    ONNX_MODEL,
    PREPARED,
    PipelineError,
    load_settings,
    read_json,
    run_cli,
    write_json,
)
from .int8 import quantize_int8
from .onnx_utils import predict, session
from .tfdata import load_arrays, read_split


@dataclass(frozen=True)
class QuantizeParams:
    """params.yaml ``quantize``."""

    calibration_images: int  # training images that calibrate the activation ranges
    min_agreement: float  # fail if INT8 and FP32 agree on fewer held-out top-1 classes


def quantize(model: Path, prepared: Path, out: Path, report: Path, params: QuantizeParams) -> dict:
    meta = read_json(prepared / "meta.json")
    size = int(meta["image_size"])
    count = params.calibration_images
    calibration = np.stack(
        [img for img, _ in read_split(prepared, "train", size).take(count).as_numpy_iterator()]
    )
    quantize_int8(model, out, calibration)
    images, labels = load_arrays(prepared, "val", size)
    fp32 = predict(session(model), images).argmax(1)
    int8 = predict(session(out), images).argmax(1)
    result = {
        "fp32_accuracy": float(np.mean(fp32 == labels)),
        "int8_accuracy": float(np.mean(int8 == labels)),
        "top1_agreement": float(np.mean(fp32 == int8)),
        "num_images": len(labels),
        "size_mb": round(out.stat().st_size / 1e6, 1),
    }
    write_json(report, result)
    if result["top1_agreement"] < params.min_agreement:
        raise PipelineError(
            f"INT8 agrees with FP32 on only {result['top1_agreement']:.3f} of images"
        )
    return result


def main() -> None:
    params = load_settings(QuantizeParams, "quantize")
    r = quantize(ONNX_MODEL, PREPARED, INT8_MODEL, INT8_REPORT, params)
    print(
        f"quantize: {INT8_MODEL} ({r['size_mb']} MB); accuracy FP32 {r['fp32_accuracy']:.4f} / "
        f"INT8 {r['int8_accuracy']:.4f}, top-1 agreement {r['top1_agreement']:.4f}"
    )


if __name__ == "__main__":
    run_cli(main)
