"""params.yaml sections as strict, typed settings: the one settings machinery of the pipeline's
stages and the project's commands (``imgcls.lifecycle``).

params.yaml is the only place their defaults live: a typo (``learnin_rate``) or a wrong type
stops the command with one line naming the key, instead of silently running on a default.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

PARAMS_FILE = Path(os.environ.get("PARAMS_FILE", "params.yaml"))

T = TypeVar("T")


class UserError(RuntimeError):
    """A problem the user must fix (bad data, bad params, a bad command): one line, exit 2.

    The project's exit codes (every command): 0 done, 2 bad input or usage, and for decisions
    (``imgcls.lifecycle``): 3 refused or rolled back, 4 inconclusive (too little evidence)."""

    exit_code = 2


class Refused(UserError):
    """A decision said no (a gate, a guard): nothing unsafe was done. Exit 3."""

    exit_code = 3


class Inconclusive(UserError):
    """Too little evidence to decide either way; left as it was, with the reason. Exit 4."""

    exit_code = 4


def load_params(section: str, path: Path = PARAMS_FILE) -> dict[str, Any]:
    """Read one section of params.yaml: a command never looks at another's keys."""
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            params = yaml.safe_load(fh) or {}
    except FileNotFoundError:
        raise UserError(f"{path} not found (run from the project's root)") from None
    if section not in params:
        raise UserError(f"{path} has no '{section}' section")
    return dict(params[section] or {})


def load_settings(cls: type[T], section: str, path: Path = PARAMS_FILE) -> T:
    """One section of params.yaml as its frozen settings dataclass (see parse_settings)."""
    return parse_settings(cls, load_params(section, path), f"{path} [{section}]")


def parse_settings(cls: type[T], raw: Mapping[str, Any], where: str) -> T:
    """Strict: every field present, no unknown key, each value of its field's type."""
    if not isinstance(raw, Mapping):
        raise UserError(f"{where}: expected a mapping of settings, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise UserError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; known: {', '.join(names)}"
        )
    missing = [n for n in names if n not in raw]
    if missing:
        raise UserError(f"{where}: missing key(s) {', '.join(map(repr, missing))}")
    return cls(**{n: _typed(raw[n], hints[n], f"{where} {n}") for n in names})


def _typed(value: Any, kind: Any, where: str) -> Any:
    if dataclasses.is_dataclass(kind):
        return parse_settings(kind, value, where)
    if kind is dict:  # a free-form mapping; its owner validates the entries
        if not isinstance(value, Mapping):
            raise UserError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise UserError(f"{where}: expected a list, got {value!r}")
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
        raise UserError(f"{where}: expected {kind.__name__}, got {value!r}")
    return float(value) if kind is float else value


def run_cli(main: Callable[[], Any]) -> None:
    """Run a command; user errors become one clear line and their exit status (2, or a
    decision's 3 and 4)."""
    try:
        main()
    except UserError as exc:
        kind = {3: "refused", 4: "inconclusive"}.get(exc.exit_code, "error")
        print(f"{kind}: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
