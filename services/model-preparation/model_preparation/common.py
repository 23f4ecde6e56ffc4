"""Small helpers every stage uses: its own typed params section, paths, errors, JSON output.

The paths of the pipeline live here and only here (dvc.yaml declares the same files as deps and
outs; a test checks they agree). The stages take no path arguments.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

PARAMS_FILE = Path(os.environ.get("PARAMS_FILE", "params.yaml"))
RAW_DATA = Path("data/raw")
ARTIFACTS = Path("artifacts")
PREPARED = ARTIFACTS / "prepared"
LABELS_FILE = PREPARED / "labels.txt"
REPORTS = ARTIFACTS / "reports"
DATA_REPORT = REPORTS / "data.json"
KERAS_MODEL = ARTIFACTS / "model.keras"
DVCLIVE = ARTIFACTS / "dvclive"
ONNX_MODEL = ARTIFACTS / "model.onnx"
EXPORT_REPORT = REPORTS / "export.json"
METRICS_REPORT = REPORTS / "metrics.json"
INT8_MODEL = ARTIFACTS / "model.int8.onnx"
INT8_REPORT = REPORTS / "int8.json"
PUBLISH_REPORT = REPORTS / "publish.json"
ROBUSTNESS_REPORT = REPORTS / "robustness.json"
ROBUSTNESS_CURVE = REPORTS / "robustness.csv"
ROBUSTNESS_PLOT = REPORTS / "robustness.png"
MODEL_REPOSITORY = Path("model_repository")
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
OPTIMIZERS = ("adam", "sgd", "adagrad", "adasmooth")  # train.optimizer


class PipelineError(RuntimeError):
    """A problem the user must fix (bad data, bad params): printed without a traceback."""


def load_params(section: str, path: Path = PARAMS_FILE) -> dict[str, Any]:
    """Read one stage's section of params.yaml: a stage never looks at another's keys."""
    with open(path, encoding="utf-8") as fh:
        params = yaml.safe_load(fh) or {}
    if section not in params:
        raise PipelineError(f"{path} has no '{section}' section")
    return dict(params[section] or {})


T = TypeVar("T")


def load_settings(cls: type[T], section: str, path: Path = PARAMS_FILE) -> T:
    """One stage's section of params.yaml as its frozen settings dataclass (see parse_settings)."""
    return parse_settings(cls, load_params(section, path), f"{path} [{section}]")


def parse_settings(cls: type[T], raw: Mapping[str, Any], where: str) -> T:
    """Strict: every field present, no unknown key, each value of its field's type.

    params.yaml is the only place defaults live: a typo (``learnin_rate``) or a wrong type fails
    the stage with one line naming the key, instead of silently running on a default.
    """
    if not isinstance(raw, Mapping):
        raise PipelineError(f"{where}: expected a mapping of settings, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise PipelineError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; known: {', '.join(names)}"
        )
    missing = [n for n in names if n not in raw]
    if missing:
        raise PipelineError(f"{where}: missing key(s) {', '.join(map(repr, missing))}")
    return cls(**{n: _typed(raw[n], hints[n], f"{where} {n}") for n in names})


def _typed(value: Any, kind: Any, where: str) -> Any:
    if dataclasses.is_dataclass(kind):
        return parse_settings(kind, value, where)
    if kind is dict:  # a free-form mapping; its owner validates the entries
        if not isinstance(value, Mapping):
            raise PipelineError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise PipelineError(f"{where}: expected a list, got {value!r}")
        return tuple(_typed(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, int | float) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(kind)
    if ok is None:
        raise TypeError(f"{where}: unsupported settings type {kind!r}")
    if not ok:
        raise PipelineError(f"{where}: expected {kind.__name__}, got {value!r}")
    return float(value) if kind is float else value


def write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def read_labels(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def run_cli(main: Callable[[], None]) -> None:
    """Run a stage; user errors become one clear line and exit status 2."""
    try:
        main()
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def quiet_tensorflow() -> None:
    """Keep TF's C++ start-up chatter out of the stage logs (must run before importing TF)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
