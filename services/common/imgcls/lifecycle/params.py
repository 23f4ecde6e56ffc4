"""params.yaml ``lifecycle``: what the lifecycle commands decide with, strictly typed (a typo or a
value out of range stops the command naming the key)."""

from __future__ import annotations

from dataclasses import dataclass

from ..model_records import MODES
from ..params import UserError

ON_PUBLISH = (*MODES, "rollout", "none")


def _share(where: str, value: float, low: float = 0.0, high: float = 1.0) -> None:
    if not low <= value <= high:
        raise UserError(f"lifecycle {where} must be within {low:g}–{high:g}, not {value:g}")


@dataclass(frozen=True)
class GateParams:
    """The labelled gate: the candidate and the serving version on the same gate-set images."""

    min_images: int  # gate images of classes both versions know; fewer: inconclusive
    margin: float  # accuracy may be at most this much below the serving version's…
    confidence: float  # …at this one-sided confidence (paired bootstrap)
    class_margin: float  # no known class's accuracy may drop more than this…
    min_class_images: int  # …where the class has at least this many gate images
    new_class_min_accuracy: float  # the candidate's accuracy on a class the serving one lacks

    def __post_init__(self) -> None:
        _share("gate.margin", self.margin)
        _share("gate.class_margin", self.class_margin)
        _share("gate.new_class_min_accuracy", self.new_class_min_accuracy)
        _share("gate.confidence", self.confidence, 0.5, 0.999)
        for name in ("min_images", "min_class_images"):
            if getattr(self, name) < 1:
                raise UserError(f"lifecycle gate.{name} must be at least 1")


@dataclass(frozen=True)
class GuardParams:
    """Live guards during shadow and canary: they catch a broken or failing candidate; they do
    not judge whether it is better (the labelled gate did)."""

    max_error_rate: float  # the candidate's 5xx and time-outs, as a share of its calls
    max_latency_ratio: float  # its p99 latency over the serving version's, same window
    max_unfamiliar_increase: float  # its unfamiliar-input share minus the serving version's
    max_unknown_increase: float  # its share of inputs of no class it knows, likewise
    min_agreement: float  # Wilson lower bound of live top-1 agreement (only a broken one fails)
    min_requests: int  # calls to the candidate in a step before the guards judge it

    def __post_init__(self) -> None:
        _share("guards.max_error_rate", self.max_error_rate)
        _share("guards.max_unfamiliar_increase", self.max_unfamiliar_increase)
        _share("guards.max_unknown_increase", self.max_unknown_increase)
        _share("guards.min_agreement", self.min_agreement)
        if self.max_latency_ratio < 1:
            raise UserError("lifecycle guards.max_latency_ratio must be at least 1")
        if self.min_requests < 1:
            raise UserError("lifecycle guards.min_requests must be at least 1")


@dataclass(frozen=True)
class RolloutParams:
    """``make rollout``: gate → shadow → canary steps → promote."""

    steps: tuple[float, ...]  # canary shares (%), in order, after the shadow step
    min_step_s: float  # each step holds at least this long…
    max_step_s: float  # …and ends inconclusive when its traffic is still too little by then
    poll_s: float  # how often the guards are read

    def __post_init__(self) -> None:
        if not self.steps or any(not 0 < s < 100 for s in self.steps):
            raise UserError("lifecycle rollout.steps: canary shares within 0–100, at least one")
        if list(self.steps) != sorted(self.steps):
            raise UserError("lifecycle rollout.steps must grow (10, then 50)")
        if not 0 <= self.min_step_s <= self.max_step_s:
            raise UserError("lifecycle rollout: 0 ≤ min_step_s ≤ max_step_s")
        if self.poll_s <= 0:
            raise UserError("lifecycle rollout.poll_s must be above 0")


@dataclass(frozen=True)
class LifecycleParams:
    """params.yaml ``lifecycle``."""

    on_publish: str  # what `make model` does with a new version: shadow | canary | rollout | none
    canary_percent: float
    shadow_percent: float
    gate: GateParams
    guards: GuardParams
    rollout: RolloutParams

    def __post_init__(self) -> None:
        if self.on_publish not in ON_PUBLISH:
            raise UserError(
                f"lifecycle on_publish must be one of {', '.join(ON_PUBLISH)}, "
                f"not {self.on_publish!r}"
            )
        for name in ("canary_percent", "shadow_percent"):
            _share(name, getattr(self, name), 0, 100)
