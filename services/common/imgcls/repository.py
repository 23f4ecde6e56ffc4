"""Triton's model repository as this project lays it out: numbered versions that are never
rewritten, and one ``config.pbtxt`` per model that says which versions Triton loads and how the
API shares traffic between them.

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
import re
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .contract import DRIFT_NAME, UNKNOWN_NAME
from .locks import exclusive
from .params import UserError

MODES = ("canary", "shadow")
PREFIX = "imgcls."  # our keys in the config's ``parameters``
MODEL_FILE = "model.onnx"
KERAS_FILE = "model.keras"  # an FP32 version's Keras model: train.init serving starts from it
_STAGING = ".staging-"
_TRASH = ".trash-"


class RepositoryError(UserError):
    """A refused change to the repository: nothing was changed."""


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str  # Triton's TYPE_*, e.g. TYPE_UINT8
    dims: tuple[int, ...]  # without the batch dimension; -1 where any size goes

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Tensor:
        return cls(str(raw["name"]), str(raw["datatype"]), tuple(int(d) for d in raw["dims"]))


@dataclass(frozen=True)
class Serving:
    """``model.json``: what every version of the model shares and how Triton schedules it."""

    name: str
    input: Tensor
    output: Tensor  # its class dimension is -1: versions may differ in their number of classes
    max_batch_size: int
    dynamic_batching: bool
    preferred_batch_sizes: tuple[int, ...]
    max_queue_delay_us: int
    instance_count: int
    intra_op_threads: int  # per instance; 0: the runtime's default (every core)
    backend: str = "onnxruntime"  # or "openvino" (reads the same ONNX file)
    precision: str = ""  # openvino: the inference precision hint (bf16, f32)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Serving:
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in raw.items() if k in fields}
        if "intra_op_threads" not in values:  # written before the key was renamed
            values["intra_op_threads"] = int(raw.get("ort_intra_op_threads", 0))
        values["input"], values["output"] = (Tensor.from_json(raw[k]) for k in ("input", "output"))
        values["preferred_batch_sizes"] = tuple(raw.get("preferred_batch_sizes", ()))
        return cls(**values)


@dataclass(frozen=True)
class Version:
    """``<N>/version.json``: what describes one published version, written once with it."""

    number: int
    labels: tuple[str, ...]
    input: Tensor
    output: Tensor
    md5: str
    size: int
    accuracy: float | None = None  # held-out accuracy measured by the pipeline
    published_at: str = ""
    # the graph's second output, DRIFT_NAME: above this score an input is unfamiliar (None: no
    # such output, a version published before the reference stage existed)
    drift_threshold: float | None = None
    source: dict[str, Any] = dataclasses.field(default_factory=dict)
    # its third output, UNKNOWN_NAME: above this score an input is of no class the version knows
    unknown_threshold: float | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Version:
        return cls(
            number=int(raw["number"]),
            labels=tuple(raw["labels"]),
            input=Tensor.from_json(raw["input"]),
            output=Tensor.from_json(raw["output"]),
            md5=str(raw["md5"]),
            size=int(raw["size"]),
            accuracy=None if raw.get("accuracy") is None else float(raw["accuracy"]),
            published_at=str(raw.get("published_at", "")),
            source=dict(raw.get("source", {})),
            drift_threshold=_optional_float(raw.get("drift_threshold")),
            unknown_threshold=_optional_float(raw.get("unknown_threshold")),
        )


@dataclass(frozen=True)
class Lifecycle:
    """Which versions Triton loads and how the API routes between them."""

    serving: int  # answers every request that is not the canary's
    candidate: int | None = None
    mode: str = ""  # "canary": `percent` % of requests get the candidate's answer;
    #                 "shadow": `percent` % are also sent to it, users get the serving answer
    percent: float = 0.0
    previous: int | None = None  # what served before the last promote: rollback's target

    def __post_init__(self) -> None:
        if self.candidate is None:
            if self.mode or self.percent:
                raise ValueError("a mode and a share need a candidate")
            return
        if self.candidate == self.serving:
            raise ValueError("the candidate is the serving version")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if not 0 <= self.percent <= 100:
            raise ValueError(f"the share must be within 0–100 %, not {self.percent:g}")

    @property
    def loaded(self) -> tuple[int, ...]:
        return tuple(sorted({self.serving, *([self.candidate] if self.candidate else [])}))

    def parameters(self) -> dict[str, str]:
        out = {"serving": str(self.serving)}
        if self.candidate is not None:
            out.update(candidate=str(self.candidate), mode=self.mode, percent=f"{self.percent:g}")
        if self.previous is not None:
            out["previous"] = str(self.previous)
        return {PREFIX + k: v for k, v in out.items()}

    @classmethod
    def from_parameters(cls, params: Mapping[str, str]) -> Lifecycle | None:
        """The state in a config's parameters (ours only); None when it has none."""
        ours = {k[len(PREFIX) :]: v for k, v in params.items() if k.startswith(PREFIX)}
        if "serving" not in ours:
            return None
        optional = {k: int(ours[k]) for k in ("candidate", "previous") if ours.get(k)}
        return cls(
            serving=int(ours["serving"]),
            mode=ours.get("mode", "") if "candidate" in optional else "",
            percent=float(ours.get("percent") or 0) if "candidate" in optional else 0.0,
            **optional,
        )


def _optional_float(value: Any) -> float | None:
    return None if value is None or value == "" else float(value)


def labels_from_parameters(params: Mapping[str, str]) -> dict[int, tuple[str, ...]]:
    """``{version: labels}`` of every loaded version, from a config's parameters."""
    key = PREFIX + "labels."
    return {
        int(k[len(key) :]): tuple(json.loads(v)) for k, v in params.items() if k.startswith(key)
    }


def drift_from_parameters(params: Mapping[str, str], output: str = "drift") -> dict[int, float]:
    """``{version: threshold}`` where the config declares the drift output (every loaded
    version has it), else empty; ``output="unknown"``: the unknown-class output's."""
    key = f"{PREFIX}{output}."
    return {int(k[len(key) :]): float(v) for k, v in params.items() if k.startswith(key)}


def config_parameters(config: Mapping[str, Any]) -> dict[str, str]:
    """A Triton config's ``parameters`` as plain strings (the JSON Triton serves)."""
    raw = config.get("parameters") or {}
    return {k: str(v.get("string_value", "")) for k, v in raw.items()}


# -- config.pbtxt ---------------------------------------------------------------------------


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _unquote(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), text)


def _dims(dims: tuple[int, ...]) -> str:
    return "[ " + ", ".join(str(d) for d in dims) + " ]"


def _parameter(key: str, value: str) -> str:
    return f"parameters {{ key: {_quote(key)} value: {{ string_value: {_quote(value)} }} }}\n"


_PARAMETER = re.compile(
    r'^parameters \{ key: "((?:[^"\\]|\\.)*)" value: \{ string_value: "((?:[^"\\]|\\.)*)" \} \}$',
    re.M,
)


def parameters_in(config_text: str) -> dict[str, str]:
    """The ``parameters`` lines of a config.pbtxt this module rendered."""
    return {_unquote(k): _unquote(v) for k, v in _PARAMETER.findall(config_text)}


def render_config(
    serving: Serving,
    state: Lifecycle,
    labels: Mapping[int, tuple[str, ...]],
    drift: Mapping[int, float | None] | None = None,
    unknown: Mapping[int, float | None] | None = None,
) -> str:
    """config.pbtxt for Triton's native ONNX Runtime backend (and the local shim).

    ``labels`` holds those of every loaded version. Triton's classification extension reads a
    labels file named in the config, one per model: it names the serving version's only while
    every loaded version has the same labels; otherwise there is none (no wrong names).
    ``drift`` holds the loaded versions' drift thresholds: the config declares the drift output
    only when every loaded version has one (a config's outputs are the model's, for all of its
    versions; a version without the output would not load).
    """
    inp, out = serving.input, serving.output
    thresholds = _all_thresholds(state, drift or {})
    unknown_limits = _all_thresholds(state, unknown or {}) if thresholds else {}
    same = len({labels[v] for v in state.loaded}) == 1
    label_file = f"    label_filename: {_quote(f'{state.serving}/labels.txt')}\n" if same else ""
    is_image = len(inp.dims) == 3 and inp.dims[-1] in (1, 3)
    image_format = "    format: FORMAT_NHWC\n" if is_image else ""  # Triton's image clients
    text = f"""# Rendered by imgcls.repository from model.json and the lifecycle state below (the
# publish stage and `python -m imgcls.lifecycle` write it): do not edit by hand.
name: {_quote(serving.name)}
backend: {_quote(serving.backend)}
{_model_file(serving)}max_batch_size: {serving.max_batch_size}
input [
  {{
    name: {_quote(inp.name)}
    data_type: {inp.datatype}
{image_format}    dims: {_dims(inp.dims)}
  }}
]
output [
  {{
    name: {_quote(out.name)}
    data_type: {out.datatype}
    dims: {_dims(out.dims)}
{label_file}  }}{_extra_output(DRIFT_NAME, thresholds)}{_extra_output(UNKNOWN_NAME, unknown_limits)}
]
{_batching(serving)}instance_group [
  {{
    count: {serving.instance_count}
  }}
]
{_warmup(inp)}"""
    for key, value in _backend_parameters(serving).items():
        text += _parameter(key, value)
    text += "# The lifecycle: which versions Triton loads, and how the API routes between them.\n"
    text += f"version_policy: {{ specific: {{ versions: {_dims(state.loaded)} }} }}\n"
    for key, value in state.parameters().items():
        text += _parameter(key, value)
    for version in state.loaded:
        text += _parameter(f"{PREFIX}labels.{version}", json.dumps(list(labels[version])))
    for version, threshold in thresholds.items():
        text += _parameter(f"{PREFIX}drift.{version}", repr(threshold))
    for version, threshold in unknown_limits.items():
        text += _parameter(f"{PREFIX}unknown.{version}", repr(threshold))
    return text


def _all_thresholds(state: Lifecycle, drift: Mapping[int, float | None]) -> dict[int, float]:
    found = {v: drift.get(v) for v in state.loaded}
    if any(t is None for t in found.values()):
        return {}
    return {v: float(t) for v, t in found.items() if t is not None}


def _extra_output(name: str, thresholds: Mapping[int, float]) -> str:
    """A score output (N×1) the config declares where every loaded version has it."""
    if not thresholds:
        return ""
    return f",\n  {{\n    name: {_quote(name)}\n    data_type: TYPE_FP32\n    dims: [ 1 ]\n  }}"


def _model_file(serving: Serving) -> str:
    """OpenVINO's backend looks for ``model.xml`` unless told; it reads ONNX as well."""
    return f'default_model_filename: "{MODEL_FILE}"\n' if serving.backend == "openvino" else ""


def _backend_parameters(serving: Serving) -> dict[str, str]:
    """Each native backend's own parameter names (the local shims read the same keys)."""
    threads = serving.intra_op_threads
    if serving.backend == "openvino":
        # Triton hands an instance one batch at a time: one stream, latency-minded.
        params = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"}
        if serving.precision:
            params["INFERENCE_PRECISION_HINT"] = serving.precision
        if threads > 0:
            params["INFERENCE_NUM_THREADS"] = str(threads)
        return params
    return {"intra_op_thread_count": str(threads)} if threads > 0 else {}


def _batching(serving: Serving) -> str:
    if not serving.dynamic_batching:
        return ""
    preferred = ", ".join(str(b) for b in serving.preferred_batch_sizes)
    return (
        "dynamic_batching {\n"
        + (f"  preferred_batch_size: [ {preferred} ]\n" if preferred else "")
        + f"  max_queue_delay_microseconds: {serving.max_queue_delay_us}\n}}\n"
    )


def _warmup(inp: Tensor) -> str:
    """One zero image through every instance before a version is READY: the first users after
    a load do not pay the runtime's first-run allocations."""
    return (
        f'model_warmup [\n  {{\n    name: "zeros"\n    batch_size: 1\n    inputs {{\n'
        f"      key: {_quote(inp.name)}\n      value: {{ data_type: {inp.datatype} "
        f"dims: {_dims(inp.dims)} zero_data: true }}\n    }}\n  }}\n]\n"
    )


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
