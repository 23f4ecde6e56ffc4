"""The statistics the model lifecycle decides with (``imgcls.lifecycle``): paired comparisons of
two versions on the same labelled images, and confidence bounds on live proportions.

Numpy only (no scipy): the lifecycle commands run in the API's image too. Every bound is
one-sided at ``confidence`` unless it says otherwise; every function is deterministic (the
bootstrap is seeded) so a decision can be replayed from its report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_Z = {0.8: 0.8416, 0.9: 1.2816, 0.95: 1.6449, 0.975: 1.96, 0.99: 2.3263, 0.995: 2.5758}


def z_score(confidence: float) -> float:
    """The standard normal quantile at ``confidence`` (one-sided), by table or Acklam's
    rational approximation (error < 1e-8)."""
    if confidence in _Z:
        return _Z[confidence]
    if not 0.5 <= confidence < 1:
        raise ValueError(f"confidence must be within 0.5–1, not {confidence}")
    return _probit(confidence)


def _probit(p: float) -> float:
    a = (-39.69683028665376, 220.9460984245205, -275.9285104469687, 138.3577518672690,
         -30.66479806614716, 2.506628277459239)  # fmt: skip
    b = (-54.47609879822406, 161.5858368580409, -155.6989798598866, 66.80131188771972,
         -13.28068155288572)  # fmt: skip
    c = (-0.007784894002430293, -0.3223964580411365, -2.400758277161838, -2.549732539343734,
         4.374664141464968, 2.938163982698783)  # fmt: skip
    d = (0.007784695709041462, 0.3224671290700398, 2.445134137142996, 3.754408661907416)
    if p > 1 - 0.02425:
        q = math.sqrt(-2 * math.log(1 - p))
        num = ((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]
        return -num / ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1)
    q = p - 0.5
    r = q * q
    num = (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q
    return num / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)


def wilson(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score bounds of a proportion, each one-sided at ``confidence`` (so the pair is a
    ``2·confidence − 1`` interval). ``(0, 1)`` for ``n == 0``: nothing is known."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"{successes} successes out of {n}")
    z = z_score(confidence)
    p = successes / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    denominator = 1 + z * z / n
    return max(0.0, (centre - spread) / denominator), min(1.0, (centre + spread) / denominator)


def binomial_tail(k: int, n: int) -> float:
    """P(X ≥ k) for X ~ Binomial(n, ½), exactly (log-space sums: n in the thousands is fine)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    logs = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) for i in range(k, n + 1)
    ]
    top = max(logs)
    return min(
        1.0, math.exp(top + math.log(sum(math.exp(x - top) for x in logs)) - n * math.log(2))
    )


@dataclass(frozen=True)
class Paired:
    """Two versions' answers on the same ``n`` labelled images.

    ``worse``: the serving version is right and the candidate wrong (b); ``better``: the other
    way round (c). Only these discordant images carry information about the difference."""

    n: int
    serving_right: int
    candidate_right: int
    worse: int
    better: int

    @classmethod
    def from_answers(cls, serving_ok: np.ndarray, candidate_ok: np.ndarray) -> Paired:
        s, c = np.asarray(serving_ok, bool), np.asarray(candidate_ok, bool)
        if s.shape != c.shape:
            raise ValueError("the two versions were not scored on the same images")
        return cls(int(s.size), int(s.sum()), int(c.sum()), int((s & ~c).sum()),
                   int((~s & c).sum()))  # fmt: skip

    @property
    def delta(self) -> float:
        """Candidate accuracy − serving accuracy."""
        return (self.better - self.worse) / self.n if self.n else 0.0

    def mcnemar_p(self) -> float:
        """Exact one-sided McNemar test of "the candidate is worse" (H0: equal): the chance of
        at least ``worse`` of the discordant images going against the candidate by luck."""
        return binomial_tail(self.worse, self.worse + self.better)

    def delta_lower_bound(self, confidence: float, rounds: int = 20_000, seed: int = 0) -> float:
        """One-sided lower bound of ``delta`` by the paired bootstrap: the images are resampled
        with replacement, which moves only the discordant counts (a multinomial draw over
        worse / better / concordant)."""
        if self.n == 0:
            return -1.0
        rng = np.random.default_rng(seed)
        shares = [self.worse / self.n, self.better / self.n]
        shares.append(max(0.0, 1.0 - sum(shares)))
        draws = rng.multinomial(self.n, shares, size=rounds)
        deltas = (draws[:, 1] - draws[:, 0]) / self.n
        return float(np.quantile(deltas, 1 - confidence, method="lower"))

    def non_inferior(self, margin: float, confidence: float, rounds: int = 20_000) -> bool:
        """The candidate is at most ``margin`` less accurate, at ``confidence``."""
        return self.delta_lower_bound(confidence, rounds) >= -margin
