"""Small helpers every stage uses: its own typed params section, paths, errors, JSON output.

The paths of the pipeline live here and only here (dvc.yaml declares the same files as deps and
outs; a test checks they agree). The stages take no path arguments.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from imgcls.contract import INPUT_NAME, MODEL_REPOSITORY, OUTPUT_NAME
from imgcls.params import (
    PARAMS_FILE,
    UserError,
    load_params,
    load_settings,
    parse_settings,
    run_cli,
)
from imgcls.variants import BF16, FP32, INT8

__all__ = [  # re-exported: the stages import them from here
    "INPUT_NAME",
    "MODEL_REPOSITORY",
    "OUTPUT_NAME",
    "PARAMS_FILE",
    "load_params",
    "load_settings",
    "parse_settings",
    "run_cli",
]

RAW_DATA = Path("data/raw")
#: images of classes the model must not know (``data/unknown/<class>/*``): the reference
#: stage's near set for real data (``tools/digits.py`` writes one)
UNKNOWN_DATA = Path("data/unknown")
OUTLIER_DATA = Path("data/outliers")  # images of no class: outlier exposure in training
ARTIFACTS = Path("artifacts")
PREPARED = ARTIFACTS / "prepared"
LABELS_FILE = PREPARED / "labels.txt"
GATE_SET = ARTIFACTS / "gate.npz"  # the labelled images candidates are judged on (imgcls.gateset)
REPORTS = ARTIFACTS / "reports"
DATA_REPORT = REPORTS / "data.json"
KERAS_MODEL = ARTIFACTS / "model.keras"
TRAIN_INIT = ARTIFACTS / "init.json"  # what the last training started from (train.init)
DVCLIVE = ARTIFACTS / "dvclive"
ONNX_MODEL = ARTIFACTS / FP32.artifact  # the variant table (imgcls.variants) names the files
EXPORT_REPORT = REPORTS / "export.json"
METRICS_REPORT = REPORTS / FP32.report
INT8_MODEL = ARTIFACTS / INT8.artifact
INT8_REPORT = REPORTS / INT8.report
BF16_REPORT = REPORTS / BF16.report
REFERENCE = ARTIFACTS / "reference.npz"
DRIFT_REPORT = REPORTS / "drift.json"
OOD_REPORT = REPORTS / "ood.json"  # the unknown-class methods compared (reference stage)
PUBLISH_REPORT = REPORTS / "publish.json"
ROBUSTNESS_REPORT = REPORTS / "robustness.json"
ROBUSTNESS_CURVE = REPORTS / "robustness.csv"
ROBUSTNESS_PLOT = REPORTS / "robustness.png"
ROBUSTNESS_ATTENTION = REPORTS / "robustness_attention.png"  # where attacks moved the maps
SHIFT_REPORT = REPORTS / "shift.json"
SHIFT_CURVE = REPORTS / "shift.csv"
SHIFT_PLOT = REPORTS / "shift.png"
SHIFT_WORST = REPORTS / "shift_worst.png"  # the most confident wrong answers under shift
OPTIMIZERS = ("adam", "sgd", "adagrad", "adasmooth")  # train.optimizer


PipelineError = UserError  # the pipeline's name for it: one line on stderr, exit 2


@dataclass(frozen=True)
class Prepared:
    """``artifacts/prepared/meta.json``: what the prepare stage tells the stages after it."""

    image_size: int
    labels: tuple[str, ...]
    num_train: int
    num_val: int

    @classmethod
    def read(cls, prepared: Path = PREPARED) -> Prepared:
        path = prepared / "meta.json"
        if not path.is_file():
            raise PipelineError(f"no prepared data in {prepared}: run `dvc repro prepare` first")
        raw = read_json(path)
        return cls(int(raw["image_size"]), tuple(raw["labels"]), int(raw["num_train"]),
                   int(raw["num_val"]))  # fmt: skip

    def write(self, prepared: Path = PREPARED) -> None:
        write_json(prepared / "meta.json", {**asdict(self), "labels": list(self.labels)})


def write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def read_labels(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# What Keras imports on its own import only for features no stage uses: its scikit-learn wrappers
# and its image-gallery plot. Both are optional to Keras (it checks for ImportError) and are
# installed here for other tools (the digits, the reports' charts); hidden from that one import,
# they cost a TensorFlow start nothing (docs/testing.md has the measured share).
KERAS_OPTIONAL = ("sklearn", "matplotlib")


def quiet_tensorflow() -> None:
    """Import TensorFlow (and Keras) the stages' way, before any other import of it: TF's C++
    start-up chatter kept out of the stage logs, and without Keras' optional imports."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    if "tensorflow" in sys.modules:
        return
    hidden = [name for name in KERAS_OPTIONAL if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # an ImportError for Keras
    try:
        import tensorflow  # noqa: F401
    finally:
        for name in hidden:
            if sys.modules.get(name, False) is None:
                del sys.modules[name]
