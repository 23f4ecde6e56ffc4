"""The page people use (``/``), the interactive API explorer (``/docs``) and their headers.

Both are static files served by Flask: plain HTML/CSS/JS in ``static/`` and Swagger UI's own
assets from the ``swagger-ui-bundle-v2`` package, so nothing is fetched from another origin.
No inline script or event handler exists, which lets the Content-Security-Policy allow
same-origin scripts only; previews of user-chosen files are ``blob:`` images.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Flask, Response, send_from_directory
from swagger_ui_bundle import swagger_ui_path

WEB = Path(__file__).parent / "static"
SWAGGER_UI = Path(str(swagger_ui_path))
CSP = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob: data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}

bp = Blueprint("web", __name__)


@bp.get("/")
def index() -> Response:
    """The classification page."""
    return send_from_directory(WEB, "index.html", max_age=0)


@bp.get("/web/<path:name>")
def asset(name: str) -> Response:
    return send_from_directory(WEB, name, max_age=300)


@bp.get("/docs")
def docs() -> Response:
    """Swagger UI on /openapi.json: every route, "try it out" included."""
    return send_from_directory(WEB, "docs.html", max_age=0)


@bp.get("/docs/assets/<path:name>")
def swagger_asset(name: str) -> Response:
    return send_from_directory(SWAGGER_UI, name, max_age=3600)


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)

    @app.after_request
    def _security_headers(response: Response) -> Response:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response
