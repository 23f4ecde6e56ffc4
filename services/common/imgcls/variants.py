"""The model variants, declared once: what each is called when served, which file it is served
from, which Triton backend runs it, which in-process runtime computes the same answers, which
stage measured its held-out accuracy, which setting its file is held to, and which
``params.yaml`` switch serves it.

Publish, the labelled gate, the contract's model names (and through them the API's ``MODELS``,
compose and Helm), ``make up``'s summary and the bench read this table; ``tests/test_variants.py``
holds params.yaml, dvc.yaml and the deployment files to it. A new variant is one row here plus
the stage that builds its file.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Variant:
    key: str  # fp32, int8, bf16: its key in reports and receipts, and its publish.<key> switch
    suffix: str  # served as <model><suffix>
    artifact: str  # the file under artifacts/ that is served
    backend: str  # the Triton backend that runs it
    precision: str  # what that backend is asked to compute in ("": the file's own)
    runtime: str  # the in-process runtime that computes the same (imgcls.runtimes.RUNTIMES)
    report: str  # the report under artifacts/reports/ with its held-out accuracy...
    accuracy_key: str  # ...under this key
    label: str  # how people call it (summaries, logs)
    gate: str  # the params.yaml key its file is held to before it may be published

    @property
    def switched(self) -> bool:
        """Served only when ``publish.<key>`` says so (FP32 always is)."""
        return bool(self.suffix)

    def served_name(self, model: str) -> str:
        return f"{model}{self.suffix}"


# FP32 is held to Keras (export's tolerance), the others to FP32 (quantize's top-1 agreement).
FP32 = Variant("fp32", "", "model.onnx", "onnxruntime", "", "onnxruntime", "metrics.json",
               "accuracy", "FP32", "export.tolerance")  # fmt: skip
INT8 = Variant("int8", "_int8", "model.int8.onnx", "onnxruntime", "", "onnxruntime", "int8.json",
               "int8_accuracy", "INT8", "quantize.min_agreement")  # fmt: skip
BF16 = Variant("bf16", "_bf16", "model.onnx", "openvino", "bf16", "openvino-bf16", "bf16.json",
               "bf16_accuracy", "BF16", "quantize.min_agreement")  # fmt: skip
VARIANTS: tuple[Variant, ...] = (FP32, INT8, BF16)


def served_names(model: str) -> tuple[str, ...]:
    """Every name ``model`` is served under, FP32 first."""
    return tuple(v.served_name(model) for v in VARIANTS)


def by_backend(backend: str, precision: str = "") -> Variant:
    """The variant a served config describes (its backend and precision hint)."""
    for v in VARIANTS:
        if (v.backend, v.precision) == (backend, precision):
            return v
    raise ValueError(f"no variant is served by {backend!r} in precision {precision!r}")
