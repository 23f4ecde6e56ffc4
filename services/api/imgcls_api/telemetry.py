"""Request ids, structured JSON logs and Prometheus metrics for the API.

Metrics work under gunicorn's several worker processes through prometheus_client's multiprocess
mode (``PROMETHEUS_MULTIPROC_DIR``, set up in ``gunicorn_conf.py``); in a single process (tests,
``flask run``) the default registry is used.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid

from flask import Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily

from imgcls.gateway.metrics import COMPARISONS

#: the ``method`` label's values: any other token a client sends is counted as "other", so a
#: client cannot add label values (unbounded series, or characters some readers split lines on)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})


def metric_method(method: str) -> str:
    return method if method in METHODS else "other"


REQUESTS = Counter("api_requests_total", "HTTP requests", ["route", "method", "status"])
LATENCY = Histogram(
    "api_request_duration_seconds",
    "HTTP request latency",
    ["route", "method", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
IN_FLIGHT = Gauge("api_requests_in_flight", "Requests being handled", multiprocess_mode="livesum")
REQUEST_ID_HEADER = "X-Request-ID"


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the request id when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("request_id", "route", "status", "duration_ms", "method", "error_code"):
            if hasattr(record, key):
                payload[key] = getattr(record, key)
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload)


def configure_logging(level: str = "info") -> None:
    """JSON lines on stderr for the API's own loggers (``imgcls_api.*``).

    Only that logger is touched: the root logger and other libraries' handlers stay as the
    host process (gunicorn, a test runner, an embedding app) configured them.
    """
    log = logging.getLogger("imgcls_api")
    if not any(isinstance(h.formatter, JsonFormatter) for h in log.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        log.addHandler(handler)
    log.setLevel(level.upper())
    log.propagate = False


def init_app(app: Flask) -> None:
    log = logging.getLogger("imgcls_api.access")

    @app.before_request
    def _start() -> None:
        incoming = request.headers.get(REQUEST_ID_HEADER, "")
        g.request_id = incoming if 0 < len(incoming) <= 128 else uuid.uuid4().hex
        g.started = time.perf_counter()
        IN_FLIGHT.inc()

    @app.after_request
    def _finish(response: Response) -> Response:
        IN_FLIGHT.dec()
        route = request.url_rule.rule if request.url_rule else "unmatched"
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        labels = (route, metric_method(request.method), str(response.status_code))
        REQUESTS.labels(*labels).inc()
        LATENCY.labels(*labels).observe(elapsed)
        response.headers[REQUEST_ID_HEADER] = g.get("request_id", "")
        log.info(
            "request",
            extra={
                "request_id": g.get("request_id"),
                "route": route,
                "method": request.method,
                "status": response.status_code,
                "duration_ms": round(elapsed * 1000, 2),
                **({"error_code": g.error_code} if "error_code" in g else {}),
            },
        )
        return response

    @app.get("/metrics")
    def metrics() -> Response:
        """Prometheus exposition of this API (all gunicorn workers together)."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        else:
            registry = REGISTRY
        derived = CollectorRegistry(auto_describe=False)
        derived.register(_Agreement(registry))
        # content_type, not mimetype: CONTENT_TYPE_LATEST already names its charset
        body = generate_latest(registry) + generate_latest(derived)
        return Response(body, content_type=CONTENT_TYPE_LATEST)


class _Agreement:
    """``api_candidate_agreement``: agree / (agree + disagree) per model, serving version and
    candidate, from the comparison counters of every worker (a ratio cannot be summed across
    workers, so it is computed when scraped)."""

    def __init__(self, source: CollectorRegistry) -> None:
        self.source = source

    def collect(self):
        counts: dict[tuple[str, str, str], dict[str, float]] = {}
        for family in self.source.collect():
            if family.name != COMPARISONS._name:
                continue
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    key = tuple(sample.labels[k] for k in ("model", "serving", "candidate"))
                    per = counts.setdefault(key, {})
                    per[sample.labels["outcome"]] = (
                        per.get(sample.labels["outcome"], 0) + sample.value
                    )
        gauge = GaugeMetricFamily(
            "api_candidate_agreement",
            "Top-1 agreement of the candidate with the serving version on live answers "
            "(answers naming a class the serving version lacks are left out)",
            labels=["model", "serving", "candidate"],
        )
        for key, per in counts.items():
            compared = per.get("agree", 0) + per.get("disagree", 0)
            if compared:
                gauge.add_metric(list(key), per.get("agree", 0) / compared)
        yield gauge
