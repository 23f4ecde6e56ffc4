"""The version store: Triton's model repository as this project lays it out, numbered versions
that are never rewritten, and one ``config.pbtxt`` per model that says which versions Triton
loads and how the API shares traffic between them. What the files hold is
``imgcls.model_records``; how the config is written and read back, ``imgcls.triton_config``.

    <repository>/<model>/
        model.json        how the model is served: tensors, batching, instances (publish writes it)
        config.pbtxt      Triton's config, rendered from model.json + the lifecycle state; only
                          ever replaced whole (written aside, then renamed over the old one)
        history.jsonl     one line per publish, canary, shadow, promote, rollback
        <N>/model.onnx    version N: built under a hidden name and renamed in whole, never rewritten
        <N>/labels.txt    its class names, one a line (Triton's classification extension)
        <N>/version.json  its labels, tensors, held-out accuracy, checksum, publication time
        <N>/model.keras   (FP32 models) its Keras model, where training may start from
        <N>/gate.json     the labelled gate's last report on it (imgcls.lifecycle.gate)

Why the state lives in config.pbtxt: Triton runs in EXPLICIT model-control mode and reads the
file only when told to load; it then serves the config it loaded to anyone who asks
(``GET /v2/models/<m>/config``), so the API learns which versions to use, their labels and the
canary share from the same server that answers — there is no second store to drift from it.
A version's labels are written once with the version; since versions are never rewritten, the
labels of (model, version) can be cached forever.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .locks import exclusive
from .model_records import Lifecycle, Serving, Tensor, Version
from .params import UserError
from .triton_config import MODEL_FILE, parameters_in, render_config

KERAS_FILE = "model.keras"  # an FP32 version's Keras model: train.init serving starts from it
_STAGING = ".staging-"
_TRASH = ".trash-"


class RepositoryError(UserError):
    """A refused change to the repository: nothing was changed."""


# -- files ----------------------------------------------------------------------------------


def md5sum(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` whole: readers see the old file or the new one, never a part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class ModelDir:
    """One model of the repository: its versions, model.json, config.pbtxt and history."""

    def __init__(self, repository: Path, name: str) -> None:
        self.name = name
        self.path = Path(repository) / name

    # -- reading --------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / "config.pbtxt"

    def exists(self) -> bool:
        return (self.path / "model.json").is_file()

    def versions(self) -> list[int]:
        """Complete versions on disk (a numbered directory with its version.json), oldest first."""
        if not self.path.is_dir():
            return []
        return sorted(
            int(p.name)
            for p in self.path.iterdir()
            if p.name.isdigit() and (p / "version.json").is_file()
        )

    def version(self, number: int) -> Version:
        meta = self.path / str(number) / "version.json"
        if not meta.is_file():
            known = ", ".join(map(str, self.versions())) or "none"
            raise RepositoryError(
                f"{self.name} has no version {number} in {self.path.parent}/ (versions: {known})"
            )
        return Version.from_json(json.loads(meta.read_text(encoding="utf-8")))

    def serving_config(self) -> Serving:
        return Serving.from_json(json.loads((self.path / "model.json").read_text("utf-8")))

    def state(self) -> Lifecycle | None:
        if not self.config_path.is_file():
            return None
        return Lifecycle.from_parameters(parameters_in(self.config_path.read_text("utf-8")))

    def history(self) -> list[dict[str, Any]]:
        path = self.path / "history.jsonl"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line]

    # -- checks ---------------------------------------------------------------------------
    def verify(self, number: int) -> Version:
        """The version's metadata, after checking its model file is whole and unchanged."""
        version = self.version(number)
        model = self.path / str(number) / MODEL_FILE
        if not model.is_file():
            raise RepositoryError(f"{self.name} version {number} has no {MODEL_FILE}")
        if model.stat().st_size != version.size or md5sum(model) != version.md5:
            raise RepositoryError(
                f"{model} does not match its version.json (size or md5 differ): the file was "
                "changed or damaged after it was published; publish a new version instead"
            )
        return version

    def check_compatible(
        self, inp: Tensor, out: Tensor, what: str, serving: Serving | None = None
    ) -> None:
        """A version must take the same input and give the same output as the model serves:
        one config, one API contract. Another input size is another model, not a version."""
        serving = serving or self.serving_config()
        if inp != serving.input:
            raise RepositoryError(
                f"{what} takes {_describe(inp)} but {self.name} serves {_describe(serving.input)}:"
                " publish it under another model name (params.yaml publish.model_name) instead "
                "of as a new version"
            )
        if (out.name, out.datatype) != (serving.output.name, serving.output.datatype):
            raise RepositoryError(
                f"{what} outputs {_describe(out)} but {self.name} serves {_describe(serving.output)}"
            )

    def check_version(self, number: int) -> Version:
        """A version that may serve: whole, unchanged, and compatible with the model."""
        version = self.verify(number)
        self.check_compatible(version.input, version.output, f"{self.name} version {number}")
        return version

    # -- writing (each under the model's lock) ---------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """One writer at a time (publish and lifecycle commands, any process)."""
        with exclusive(self.path / ".lock"):
            yield

    def next_number(self) -> int:
        numbers = [int(p.name) for p in self.path.iterdir() if p.name.isdigit()]
        return max(numbers, default=0) + 1

    def add_version(
        self, model: Path, meta: Version, extras: Mapping[str, Path] | None = None
    ) -> Version:
        """Stage ``model`` + labels + version.json (+ ``extras``: name → file, kept beside it)
        under a hidden name, then rename it into place as ``<N>/`` (one atomic step: Triton
        never sees a partial version). Returns the version as written (its number is the next
        free one). The caller holds the lock."""
        self.clear_leftovers()
        number = self.next_number()
        meta = dataclasses.replace(meta, number=number, published_at=now_iso())
        staging = self.path / f"{_STAGING}{number}"
        staging.mkdir()
        try:
            shutil.copyfile(model, staging / MODEL_FILE)
            meta = dataclasses.replace(
                meta, md5=md5sum(staging / MODEL_FILE), size=(staging / MODEL_FILE).stat().st_size
            )
            (staging / "labels.txt").write_text("".join(f"{x}\n" for x in meta.labels), "utf-8")
            (staging / "version.json").write_text(json.dumps(meta.to_json(), indent=2) + "\n")
            for name, path in (extras or {}).items():
                shutil.copyfile(path, staging / name)
            for name in (MODEL_FILE, "labels.txt", "version.json", *(extras or {})):
                with open(staging / name, "rb") as fh:
                    os.fsync(fh.fileno())
            _fsync_dir(staging)
            os.rename(staging, self.path / str(number))
            _fsync_dir(self.path)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return meta

    def clear_leftovers(self) -> None:
        """Remove what an interrupted publish or prune left (never a numbered version)."""
        for p in self.path.iterdir():
            if p.name.startswith((_STAGING, _TRASH)) or (p.name.isdigit() and _incomplete(p)):
                shutil.rmtree(p, ignore_errors=True)

    def write_serving(self, serving: Serving) -> None:
        write_atomic(self.path / "model.json", json.dumps(serving.to_json(), indent=2) + "\n")

    def render(self, state: Lifecycle) -> str:
        versions = {v: self.version(v) for v in state.loaded}
        labels = {v: meta.labels for v, meta in versions.items()}
        drift = {v: meta.drift_threshold for v, meta in versions.items()}
        unknown = {v: meta.unknown_threshold for v, meta in versions.items()}
        return render_config(self.serving_config(), state, labels, drift, unknown)

    def write_config(self, state: Lifecycle) -> str:
        """Render and replace config.pbtxt; returns the text it replaced ("" if none)."""
        old = self.config_path.read_text("utf-8") if self.config_path.is_file() else ""
        write_atomic(self.config_path, self.render(state))
        return old

    def restore_config(self, text: str) -> None:
        if text:
            write_atomic(self.config_path, text)
        else:
            self.config_path.unlink(missing_ok=True)

    def log(self, event: str, **fields: Any) -> None:
        line = json.dumps({"at": now_iso(), "event": event, **fields}) + "\n"
        with open(self.path / "history.jsonl", "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())

    def prune(self, keep: int) -> list[int]:
        """Delete the oldest versions beyond the newest ``keep``, never one that serves, is the
        candidate or is rollback's target. Each goes in one rename, then is deleted."""
        state = self.state()
        protected = set(state.loaded) | {state.previous} if state else set()
        versions = self.versions()
        doomed = [v for v in versions[: max(len(versions) - keep, 0)] if v not in protected]
        for v in doomed:
            trash = self.path / f"{_TRASH}{v}"
            os.rename(self.path / str(v), trash)
            shutil.rmtree(trash, ignore_errors=True)
        return doomed


def _incomplete(path: Path) -> bool:
    """A numbered directory without version.json: not one we published (left alone unless empty)."""
    return path.is_dir() and not any(path.iterdir())


def _describe(t: Tensor) -> str:
    return f"{t.name!r} {t.datatype.removeprefix('TYPE_')} {list(t.dims)}"


def model_dirs(repository: Path) -> list[ModelDir]:
    """Every model of the repository that this project published (has a model.json)."""
    if not Path(repository).is_dir():
        return []
    return [
        ModelDir(repository, p.name)
        for p in sorted(Path(repository).iterdir())
        if (p / "model.json").is_file()
    ]
