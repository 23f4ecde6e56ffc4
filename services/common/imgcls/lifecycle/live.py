"""What the API replicas saw of each model version: read from their ``/metrics``, summed over
every replica, and turned into the live guards of a roll-out step.

Replicas: each ``--api-url`` host is resolved to **all** its addresses, and each address is
scraped (a Kubernetes headless Service resolves to every pod; a plain one would load-balance the
scrape to one replica at random). A step's figures are the difference between two readings, so
traffic from before the step does not dilute them; a counter that went down (a replica restarted)
counts from zero.

The guards catch a candidate that is broken or failing under traffic (Argo Rollouts' analysis
runs, Flagger's canary analysis): its 5xx and time-outs, its p99 latency against the serving
version's in the same window, its shares of unfamiliar inputs and of inputs of no class it knows
against the serving version's, and live top-1 agreement as a Wilson lower bound — only to catch wrong preprocessing or wrong labels,
never to refuse a correct disagreement (which version is better, the labelled gate decided).
"""

from __future__ import annotations

import re
import socket
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..stats import wilson
from ..triton_control import ControlError
from .params import GuardParams

_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})?\s+(\S+)", re.M)
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
WATCHED = (
    "api_model_requests_total",
    "api_model_errors_total",
    "api_model_request_duration_seconds_bucket",
    "api_model_images_total",
    "api_model_unfamiliar_total",
    "api_model_unknown_total",
    "api_candidate_comparisons_total",
)
Key = tuple[str, tuple[tuple[str, str], ...]]


def parse(text: str) -> dict[Key, float]:
    """The watched series of one Prometheus text exposition, by (name, sorted labels)."""
    out: dict[Key, float] = {}
    for name, labels, value in _LINE.findall(text):
        if name in WATCHED:
            pairs = tuple(sorted(_LABEL.findall(labels or "")))
            out[(name, pairs)] = out.get((name, pairs), 0.0) + float(value)
    return out


def endpoints(urls: Sequence[str]) -> list[str]:
    """Every replica's ``/metrics`` URL: each host resolved to all of its addresses."""
    found: list[str] = []
    for url in urls:
        parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise ControlError(f"the API at {url} cannot be resolved: {exc}") from None
        for family, *_rest, address in infos:
            host = f"[{address[0]}]" if family == socket.AF_INET6 else address[0]
            endpoint = f"{parts.scheme}://{host}:{port}/metrics"
            if endpoint not in found:
                found.append(endpoint)
    return found


def read(urls: Sequence[str], timeout: float = 10.0) -> dict[Key, float]:
    """The watched series summed over every replica of every API given."""
    total: dict[Key, float] = defaultdict(float)
    for endpoint in endpoints(urls):
        try:
            with urllib.request.urlopen(endpoint, timeout=timeout) as resp:
                text = resp.read().decode()
        except OSError as exc:
            raise ControlError(
                f"the API's metrics are not reachable at {endpoint}: {exc}"
            ) from None
        for key, value in parse(text).items():
            total[key] += value
    return dict(total)


def delta(now: dict[Key, float], before: dict[Key, float]) -> dict[Key, float]:
    """Per series, what was added since ``before`` (a reset counter counts from zero)."""
    return {k: v - before.get(k, 0.0) if v >= before.get(k, 0.0) else v for k, v in now.items()}


def _sum(window: dict[Key, float], name: str, **match: str) -> float:
    want = set(match.items())
    return sum(v for (n, labels), v in window.items() if n == name and want <= set(labels))


def quantile(window: dict[Key, float], q: float, **match: str) -> float | None:
    """``histogram_quantile`` over the matching buckets (linear within a bucket), or None."""
    buckets: dict[float, float] = defaultdict(float)
    want = set(match.items())
    for (n, labels), v in window.items():
        if n == "api_model_request_duration_seconds_bucket" and want <= set(labels):
            buckets[float(dict(labels)["le"])] += v
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank, lower, below = q * total, 0.0, 0.0
    for bound in bounds:
        if buckets[bound] >= rank:
            if bound == float("inf"):
                return lower
            span = buckets[bound] - below
            return lower + (bound - lower) * ((rank - below) / span if span else 1.0)
        lower, below = bound, buckets[bound]
    return lower


@dataclass(frozen=True)
class Guard:
    name: str
    ok: bool | None  # None: not enough traffic yet to judge
    value: str

    def line(self) -> str:
        state = {True: "ok", False: "FAILED", None: "waiting"}[self.ok]
        return f"{self.name} {self.value} ({state})"


@dataclass(frozen=True)
class StepHealth:
    """One model's guards over one step's window."""

    model: str
    requests: int  # calls to the candidate in the window (canary answers or shadow copies)
    guards: tuple[Guard, ...] = field(default_factory=tuple)

    @property
    def failed(self) -> list[Guard]:
        return [g for g in self.guards if g.ok is False]

    @property
    def judged(self) -> bool:
        return all(g.ok is not None for g in self.guards)

    def line(self) -> str:
        return f"{self.model}: {self.requests} candidate calls; " + "; ".join(
            g.line() for g in self.guards
        )


def health(
    window: dict[Key, float], model: str, serving: int, candidate: int, p: GuardParams
) -> StepHealth:
    """The guards of ``candidate`` against ``serving`` over a window of summed metrics."""
    s, c = str(serving), str(candidate)
    ok_calls = sum(_sum(window, "api_model_requests_total", model=model, version=c, role=r)
                   for r in ("canary", "shadow"))  # fmt: skip
    errors = sum(_sum(window, "api_model_errors_total", model=model, version=c, role=r)
                 for r in ("canary", "shadow"))  # fmt: skip
    calls = ok_calls + errors
    enough = calls >= p.min_requests
    guards = []
    rate = errors / calls if calls else 0.0
    guards.append(Guard("errors", (rate <= p.max_error_rate) if enough else None,
                        f"{rate:.3f} of {int(calls)} (max {p.max_error_rate:g})"))  # fmt: skip
    guards.append(_latency(window, model, s, c, enough, p))
    share_c = _unfamiliar(window, model, c, ("canary", "shadow"))
    share_s = _unfamiliar(window, model, s, ("serving",))
    if enough and share_c is None and share_s is None:
        guards.append(Guard("unfamiliar", True, "not measured (no drift output)"))
    elif share_c is None or share_s is None or not enough:
        guards.append(Guard("unfamiliar", None, "no drift scores yet"))
    else:
        rise = share_c - share_s
        guards.append(Guard("unfamiliar", rise <= p.max_unfamiliar_increase,
                            f"{share_c:.3f} vs {share_s:.3f} serving "
                            f"(max +{p.max_unfamiliar_increase:g})"))  # fmt: skip
    guards.append(_unknown(window, model, s, c, enough, p))
    agree = _sum(window, "api_candidate_comparisons_total", model=model, serving=s, candidate=c,
                 outcome="agree")  # fmt: skip
    disagree = _sum(window, "api_candidate_comparisons_total", model=model, serving=s,
                    candidate=c, outcome="disagree")  # fmt: skip
    compared = int(agree + disagree)
    if compared < p.min_requests:
        guards.append(Guard("agreement", None, f"{compared} compared (min {p.min_requests})"))
    else:
        low, _ = wilson(int(agree), compared)
        guards.append(Guard("agreement", low >= p.min_agreement,
                            f"{agree / compared:.3f} of {compared}, lower bound {low:.3f} "
                            f"(min {p.min_agreement:g})"))  # fmt: skip
    return StepHealth(model, int(calls), tuple(guards))


def _unknown(window, model: str, s: str, c: str, enough: bool, p: GuardParams) -> Guard:
    """The candidate's share of inputs of no class it knows against the serving version's (each
    by its own threshold): a candidate that calls far more inputs unknown is broken. Where one of
    the two has no unknown-class output (a version published before it), it is not measured."""
    share_c = _share(window, "api_model_unknown_total", model, c, ("canary", "shadow"))
    share_s = _share(window, "api_model_unknown_total", model, s, ("serving",))
    if not enough:
        return Guard("unknown", None, "no unknown-class scores yet")
    if share_c is None or share_s is None:
        return Guard("unknown", True, "not measured (a version without the unknown output)")
    rise = share_c - share_s
    return Guard("unknown", rise <= p.max_unknown_increase,
                 f"{share_c:.3f} vs {share_s:.3f} serving (max +{p.max_unknown_increase:g})")  # fmt: skip


def _share(window, name: str, model: str, version: str, roles: tuple[str, ...]) -> float | None:
    """``name``'s count over the images answered, or None where the version never reported
    ``name`` (it has no such output)."""
    present = any(n == name and dict(labels).get("model") == model
                  and dict(labels).get("version") == version and dict(labels).get("role") in roles
                  for n, labels in window)  # fmt: skip
    images = sum(_sum(window, "api_model_images_total", model=model, version=version, role=r)
                 for r in roles)  # fmt: skip
    if not present or not images:
        return None
    return sum(_sum(window, name, model=model, version=version, role=r) for r in roles) / images


def _latency(window, model: str, s: str, c: str, enough: bool, p: GuardParams) -> Guard:
    """p99 of the candidate's canary answers against the serving version's, same window.

    Only canary answers are judged: they are users' requests on the serving path. A shadow call
    runs in the background after the user's own answer, scheduled behind the worker's requests,
    so its latency measures the worker's load more than the model: it is shown, not judged."""
    p99_s = _p99(window, model, s, ("serving",))
    p99_c = _p99(window, model, c, ("canary",))
    if p99_c is None and enough:
        shadow = _p99(window, model, c, ("shadow",))
        seen = f"{shadow * 1000:.0f} ms in the background; " if shadow is not None else ""
        return Guard("p99", True, f"{seen}judged on canary answers")
    if p99_c is None or p99_s is None or not enough:
        return Guard("p99", None, "no latency yet")
    ratio = p99_c / max(p99_s, 1e-3)
    return Guard("p99", ratio <= p.max_latency_ratio,
                 f"{p99_c * 1000:.0f} ms vs {p99_s * 1000:.0f} ms serving "
                 f"(×{ratio:.2f}, max ×{p.max_latency_ratio:g})")  # fmt: skip


def _p99(window, model: str, version: str, roles: tuple[str, ...]) -> float | None:
    merged: dict[Key, float] = defaultdict(float)
    for (n, labels), v in window.items():
        d = dict(labels)
        if d.get("model") == model and d.get("version") == version and d.get("role") in roles:
            merged[(n, (("le", d.get("le", "")),))] += v
    return quantile(dict(merged), 0.99)


def _unfamiliar(window, model: str, version: str, roles: tuple[str, ...]) -> float | None:
    images = sum(_sum(window, "api_model_images_total", model=model, version=version, role=r)
                 for r in roles)  # fmt: skip
    if not images:
        return None
    unfamiliar = sum(_sum(window, "api_model_unfamiliar_total", model=model, version=version,
                          role=r) for r in roles)  # fmt: skip
    return unfamiliar / images
