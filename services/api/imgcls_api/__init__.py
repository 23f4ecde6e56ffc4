"""Flask API in front of Triton: ``create_app`` is the only entry point (gunicorn, tests).

This package imports nothing at module level on purpose: gunicorn's master imports
``imgcls_api.gunicorn_conf`` (so this file) before that module sets
``PROMETHEUS_MULTIPROC_DIR``, and prometheus_client chooses where samples live when it is first
imported. Importing the app here made every worker count in private memory, and ``/metrics``
under gunicorn answered an empty body.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the app; ``config`` overrides the environment (keys are Settings field names)."""
    from .app import build_app

    return build_app(config)
