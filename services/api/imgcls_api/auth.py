"""Optional API keys: off unless ``API_KEYS`` or ``API_KEYS_FILE`` gives at least one.

When on, every route needs a key except the ones orchestrators and readers of the docs use
(health, readiness, the OpenAPI document, the page and the explorer with their static files)
and, unless ``METRICS_REQUIRE_KEY`` is set, ``/metrics``. The page's own calls (``/models``,
``/predict``) need the key like any client's. A key travels as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``.
Keys are compared as SHA-256 digests with :func:`hmac.compare_digest` against every configured
key (no early exit, no length leak), and are never logged: only their count is.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from flask import Flask, request

from imgcls.gateway.errors import ApiError

from .settings import Settings

OPEN_ENDPOINTS = frozenset(
    {"api.healthz", "api.readyz", "openapi.openapi_json", "web.index", "web.asset", "web.docs",
     "web.swagger_asset"}
)  # fmt: skip
REALM = 'Bearer realm="imgcls"'


def load_keys(settings: Settings) -> tuple[bytes, ...]:
    """Digests of the keys from ``API_KEYS`` (comma-separated) and ``API_KEYS_FILE`` (one per
    line, ``#`` comments), e.g. a Docker/Kubernetes secret mounted as a file."""
    raw = settings.api_keys.split(",")
    if settings.api_keys_file:
        try:
            text = Path(settings.api_keys_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise RuntimeError(f"API_KEYS_FILE cannot be read: {exc.strerror}") from exc
        raw += [line.split("#", 1)[0] for line in text.splitlines()]
    return tuple(_digest(k.strip()) for k in raw if k.strip())


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _presented() -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("X-API-Key", "").strip()


def _matches(presented: str, keys: tuple[bytes, ...]) -> bool:
    digest = _digest(presented)
    found = False
    for key in keys:  # every key, whatever matched first
        found |= hmac.compare_digest(digest, key)
    return found


def describe(settings: Settings) -> str:
    """The start-up line: whether keys are required, and where (never the keys)."""
    keys = load_keys(settings)
    if not keys:
        return "API key authentication is off (set API_KEYS or API_KEYS_FILE to require one)"
    metrics = "needs a key" if settings.metrics_require_key else "stays open"
    return (
        f"API key authentication is on: {len(keys)} key(s); health, docs open; /metrics {metrics}"
    )


def init_app(app: Flask, settings: Settings) -> None:
    keys = load_keys(settings)
    app.extensions["api_keys"] = keys
    if not keys:
        return
    open_endpoints = OPEN_ENDPOINTS | (
        frozenset() if settings.metrics_require_key else frozenset({"metrics"})
    )

    @app.before_request
    def _require_key() -> None:
        if request.endpoint is None or request.endpoint in open_endpoints:
            return  # unknown routes answer their own 404
        presented = _presented()
        if not presented or not _matches(presented, keys):
            message = "a valid API key is required" if presented else "an API key is required"
            raise ApiError(
                401,
                "unauthorized",
                f"{message}: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
                headers={"WWW-Authenticate": REALM},
            )
