"""Running ``dvc`` the way the project's commands need it: with this interpreter's environment,
so the stages' ``python -m …`` find the same packages even when the venv is not activated."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path


def available() -> bool:
    return importlib.util.find_spec("dvc") is not None or shutil.which("dvc") is not None


def dvc(*args: str) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of ``dvc ARGS``: this interpreter's ``bin/`` first on
    PATH, and its own ``dvc`` module when it has one."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if importlib.util.find_spec("dvc") is not None:
        return [sys.executable, "-m", "dvc", *args], env
    return ["dvc", *args], env
