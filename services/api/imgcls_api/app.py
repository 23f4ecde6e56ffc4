"""The application factory behind :func:`imgcls_api.create_app`."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from flask import Flask

from imgcls.gateway.client import TritonGateway

from . import auth, explain, feedback, openapi, telemetry, web
from .capture import CaptureStore
from .errors import register_error_handlers
from .routes import bp
from .settings import Settings


def build_app(config: dict[str, Any] | None = None) -> Flask:
    settings = Settings.from_env().override(config)
    app = Flask(__name__, static_folder=None)  # static/ is the page's, served under /web/ (web.py)
    app.config["SETTINGS"] = settings
    app.config["MAX_CONTENT_LENGTH"] = int(settings.max_upload_mb * 1024 * 1024)
    app.json.sort_keys = False
    app.extensions["triton"] = TritonGateway(settings)
    # Load shedding: above MAX_IN_FLIGHT a request is answered 429 at once (under gthread, set
    # API_THREADS above it, or the extra connections queue instead).
    app.extensions["admission"] = (
        threading.BoundedSemaphore(settings.max_in_flight) if settings.max_in_flight > 0 else None
    )
    app.extensions["capture"] = (
        CaptureStore(Path(settings.capture_dir), settings.capture_rate, settings.capture_max_mb)
        if settings.capture_dir
        else None
    )
    if app.extensions["capture"] is not None:  # what two versions disagree on: to be labelled
        app.extensions["triton"].on_disagreement = app.extensions["capture"].to_label
    telemetry.configure_logging(settings.api_log_level)
    telemetry.init_app(app)
    auth.init_app(app, settings)
    register_error_handlers(app)
    app.register_blueprint(bp)
    app.register_blueprint(explain.bp)
    feedback.init_app(app, settings)
    app.register_blueprint(openapi.bp)
    web.init_app(app)
    return app
