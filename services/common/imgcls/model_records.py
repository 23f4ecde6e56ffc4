"""What describes a served model, as this project writes it: its tensors, how Triton serves it
(``model.json``: ``Serving``), each published version (``<N>/version.json``: ``Version``) and
the lifecycle state (which versions load, how the API routes between them: ``Lifecycle``).

Plain data, read and written by the version store (``imgcls.repository``) and encoded into
Triton's config by ``imgcls.triton_config``; the API's gateway reads the state back from the
config Triton serves.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MODES = ("canary", "shadow")
PREFIX = "imgcls."  # our keys in the config's ``parameters``


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
