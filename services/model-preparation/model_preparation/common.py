"""Small helpers every stage uses: its own params section, paths, errors, JSON output."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

PARAMS_FILE = Path(os.environ.get("PARAMS_FILE", "params.yaml"))
ARTIFACTS = Path("artifacts")
PREPARED = ARTIFACTS / "prepared"
REPORTS = ARTIFACTS / "reports"
KERAS_MODEL = ARTIFACTS / "model.keras"
ONNX_MODEL = ARTIFACTS / "model.onnx"
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"


class PipelineError(RuntimeError):
    """A problem the user must fix (bad data, bad params): printed without a traceback."""


def load_params(section: str, path: Path = PARAMS_FILE) -> dict[str, Any]:
    """Read one stage's section of params.yaml: a stage never looks at another's keys."""
    with open(path, encoding="utf-8") as fh:
        params = yaml.safe_load(fh) or {}
    if section not in params:
        raise PipelineError(f"{path} has no '{section}' section")
    return dict(params[section] or {})


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
