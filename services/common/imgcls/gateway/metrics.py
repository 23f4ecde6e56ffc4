"""The gateway's Prometheus metrics: its calls to Triton, per model version and role, and the
live comparison of a candidate with the serving version (what the roll-out's guards read).

Counters and histograms only, so that every gunicorn worker's share adds up (multiprocess mode).
The API's own request metrics are ``imgcls_api.telemetry``'s; what the model answered (classes,
confidence, drift) is ``model_metrics``'.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

TRITON_LATENCY = Histogram(
    "api_triton_request_duration_seconds",
    "Latency of inference calls to Triton",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
_MODEL = ["model", "version", "role"]
MODEL_REQUESTS = Counter(
    "api_model_requests_total",
    "Predictions per model version; role: serving, canary (a user got the candidate's answer), "
    "shadow (the candidate was asked in the background), reference (the serving version was "
    "asked in the background about a canary answer)",
    _MODEL,
)
MODEL_LATENCY = Histogram(
    "api_model_request_duration_seconds",
    "Time from a prediction's call to its model version's answer (batching wait included)",
    _MODEL,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
COMPARISONS = Counter(
    "api_candidate_comparisons_total",
    "Images answered by both the serving version and the candidate; outcome: agree, disagree "
    "(different top-1 label), new_label (the candidate's top-1 is a class the serving one lacks)",
    ["model", "serving", "candidate", "outcome"],
)
MODEL_ERRORS = Counter(
    "api_model_errors_total",
    "Calls to a model version that failed (role as api_model_requests_total); kind: timeout "
    "(504), unavailable (503) or error (any other refusal)",
    [*_MODEL, "kind"],
)
MODEL_IMAGES = Counter(
    "api_model_images_total",
    "Images a model version answered with a drift score, in any role (shadow included)",
    _MODEL,
)
MODEL_UNFAMILIAR = Counter(
    "api_model_unfamiliar_total",
    "Of api_model_images_total, those above the version's drift threshold",
    _MODEL,
)
MODEL_UNKNOWN = Counter(
    "api_model_unknown_total",
    "Of the images a model version answered with an unknown-class score, those above its "
    "threshold: of no class the version knows (per version: the dashboard's unknown-class rate)",
    _MODEL,
)
MIRROR_SKIPPED = Counter(
    "api_mirror_skipped_total",
    "Comparison calls not made: busy (too many in flight) or failed",
    ["model", "reason"],
)
