"""What the model answers, as Prometheus sees it: per model and version, the predicted classes,
how sure the model was, and how unlike the training data its inputs are.

Counters and histograms only, so that every gunicorn worker's share adds up (multiprocess mode)
and Prometheus computes the rates, shares and quantiles over any window (the dashboard's panels,
``deploy/monitoring/``). The drift score is observed as a ratio to the answering version's own threshold
(``reference`` stage): 1 is the edge of "familiar" for every version, so one set of buckets
serves them all and a new version does not move the scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from prometheus_client import Counter, Histogram

_VERSION = ["model", "version"]
PREDICTED = Counter(
    "api_predictions_total",
    "Answers (one per image) by the top-1 class the user was given",
    [*_VERSION, "label"],
)
CONFIDENCE = Histogram(
    "api_prediction_confidence",
    "Top-1 probability of each answer",
    _VERSION,
    buckets=(0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0),
)
LOW_CONFIDENCE = Counter(
    "api_low_confidence_total",
    "Answers whose top-1 probability is below LOW_CONFIDENCE",
    _VERSION,
)
DRIFT = Histogram(
    "api_input_drift_ratio",
    "Each input's drift score over its version's threshold (above 1: unlike the training data)",
    _VERSION,
    buckets=(0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0, 8.0, 16.0, 64.0),
)
UNFAMILIAR = Counter(
    "api_unfamiliar_inputs_total",
    "Inputs whose drift score is above their version's threshold",
    _VERSION,
)


UNKNOWN_CLASS = Counter(
    "api_unknown_class_inputs_total",
    "Inputs whose unknown-class score is above their version's threshold: of no class it knows",
    _VERSION,
)


@dataclass(frozen=True)
class Familiarity:
    """One input's drift score against the answering version's threshold."""

    score: float
    threshold: float

    @property
    def familiar(self) -> bool:
        return self.score <= self.threshold

    def to_json(self) -> dict:
        return {"score": round(self.score, 4), "threshold": round(self.threshold, 4),
                "familiar": self.familiar}  # fmt: skip


@dataclass(frozen=True)
class KnownClass:
    """One input's unknown-class score (penultimate features and logits, ``ood.py``) against
    the answering version's threshold."""

    score: float
    threshold: float

    @property
    def known(self) -> bool:
        return self.score <= self.threshold

    def to_json(self) -> dict:
        """Six significant digits: a method's scores may be of any scale (msp's are below 1)."""
        return {"score": float(f"{self.score:.6g}"), "threshold": float(f"{self.threshold:.6g}"),
                "known_class": self.known}  # fmt: skip


def known_class(
    unknown: np.ndarray | None, threshold: float | None, count: int
) -> list[KnownClass | None]:
    """Per input (``count`` of them); ``None`` each where the version has no unknown output."""
    if unknown is None or threshold is None:
        return [None] * count
    return [KnownClass(float(s), threshold) for s in unknown]


def familiarity(
    drift: np.ndarray | None, threshold: float | None, count: int
) -> list[Familiarity | None]:
    """Per input (``count`` of them); ``None`` each where the version has no drift output."""
    if drift is None or threshold is None:
        return [None] * count
    return [Familiarity(float(s), threshold) for s in drift]


def observe(
    model: str,
    version: str,
    labels: tuple[str, ...],
    probabilities: np.ndarray,
    drift: list[Familiarity | None],
    low_confidence: float,
    unknown: list[KnownClass | None] | None = None,
) -> None:
    """Count the answers the user is given (not the background comparisons). The share counters
    are touched even by 0, so that a version's series exist (a share of 0, not "no data")."""
    top = probabilities.argmax(axis=1)
    confidence = probabilities[np.arange(len(top)), top]
    for index, p in zip(top, confidence, strict=True):
        PREDICTED.labels(model, version, labels[int(index)]).inc()
        CONFIDENCE.labels(model, version).observe(float(p))
    LOW_CONFIDENCE.labels(model, version).inc(int((confidence < low_confidence).sum()))
    known = [f for f in drift if f is not None]
    for f in known:
        DRIFT.labels(model, version).observe(f.score / f.threshold if f.threshold > 0 else 0.0)
    if known:
        UNFAMILIAR.labels(model, version).inc(sum(not f.familiar for f in known))
    scored = [u for u in unknown or [] if u is not None]
    if scored:
        UNKNOWN_CLASS.labels(model, version).inc(sum(not u.known for u in scored))
