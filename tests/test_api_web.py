"""Model choice, the page, the explorer and their security headers (in-memory gateway)."""

from __future__ import annotations

import io
import re

import pytest

from imgcls.gateway.memory import MemoryGateway
from imgcls_api import create_app
from imgcls_api.web import WEB
from tests import images


def _image():
    return {"image": (io.BytesIO(images.jpeg()), "a.jpg")}


def test_models_lists_the_allowed_models_default_first(client):
    body = client.get("/models").json
    assert body["default"] == "resnet50v2"
    assert [m["name"] for m in body["models"]] == [
        "resnet50v2", "resnet50v2_int8", "resnet50v2_bf16",
    ]  # fmt: skip
    assert all(m["ready"] and m["version"] == "1" for m in body["models"])


def test_a_request_can_choose_the_int8_model(client, gateway):
    resp = client.post("/predict?model=resnet50v2_int8", data=_image())
    assert resp.status_code == 200
    assert resp.json["model"]["name"] == "resnet50v2_int8"
    assert gateway.models == ["resnet50v2_int8"]


@pytest.mark.parametrize("name", ["nope", "../resnet50v2", "resnet50v2 "])
def test_an_unknown_model_is_400_and_reaches_nothing(client, gateway, name):
    resp = client.post("/predict", query_string={"model": name}, data=_image())
    assert resp.status_code == 400 and resp.json["error"]["code"] == "unknown_model"
    assert "resnet50v2_int8" in resp.json["error"]["message"]
    assert gateway.batches == []


def test_models_setting_limits_the_choice():
    app = create_app({"models": ""})
    app.extensions["triton"] = MemoryGateway()
    client = app.test_client()
    assert [m["name"] for m in client.get("/models").json["models"]] == ["resnet50v2"]
    resp = client.post("/predict?model=resnet50v2_int8", data=_image())
    assert resp.status_code == 400


def test_an_allowed_model_triton_does_not_serve_is_listed_not_ready_and_503():
    app = create_app({"models": "resnet50v2,resnet50v2_fp16"})
    app.extensions["triton"] = MemoryGateway()
    client = app.test_client()
    listed = {m["name"]: m["ready"] for m in client.get("/models").json["models"]}
    assert listed == {"resnet50v2": True, "resnet50v2_fp16": False}
    resp = client.post("/predict?model=resnet50v2_fp16", data=_image())
    assert resp.status_code == 503 and resp.headers["Retry-After"]


def test_the_openapi_document_describes_the_choice(client):
    spec = client.get("/openapi.json").json
    params = {p["name"]: p for p in spec["paths"]["/predict"]["post"]["parameters"]}
    assert params["model"]["schema"]["enum"] == ["resnet50v2", "resnet50v2_int8", "resnet50v2_bf16"]
    assert "/models" in spec["paths"] and "401" in spec["paths"]["/predict"]["post"]["responses"]
    assert set(spec["components"]["securitySchemes"]) == {"ApiKey", "Bearer"}


@pytest.mark.parametrize("path", ["/", "/docs", "/predict", "/healthz", "/web/app.js"])
def test_security_headers_on_every_response(client, path):
    resp = client.get(path)
    csp = resp.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "default-src 'self'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert resp.headers["X-Content-Type-Options"] == "nosniff"


def test_the_page_and_its_files_are_served_from_this_origin(client):
    page = client.get("/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    refs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert refs
    for ref in refs:
        if ref.startswith("data:"):
            continue  # inline (the empty favicon): fetched from nowhere
        assert ref.startswith("/"), ref  # nothing from another origin
        assert client.get(ref).status_code == 200, ref
    assert client.get("/web/app.js").mimetype in {"text/javascript", "application/javascript"}


def test_no_inline_script_or_event_handler_in_the_pages():
    for page in WEB.glob("*.html"):
        text = page.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", text), page.name
        assert not re.search(r"\son[a-z]+\s*=", text), page.name


def test_the_explorer_uses_the_packaged_swagger_ui(client):
    html = client.get("/docs").get_data(as_text=True)
    assert "/docs/assets/swagger-ui-bundle.js" in html and "/web/docs.js" in html
    bundle = client.get("/docs/assets/swagger-ui-bundle.js")
    assert bundle.status_code == 200 and len(bundle.get_data()) > 100_000
    assert '"/openapi.json"' in client.get("/web/docs.js").get_data(as_text=True)


def test_with_keys_on_the_page_is_open_and_its_calls_are_not():
    app = create_app({"api_keys": "k-123"})
    app.extensions["triton"] = MemoryGateway()
    client = app.test_client()
    for path in ("/", "/web/app.js", "/web/style.css", "/docs", "/docs/assets/swagger-ui.css"):
        assert client.get(path).status_code == 200, path
    assert client.get("/models").status_code == 401
    assert client.get("/models", headers={"X-API-Key": "k-123"}).status_code == 200
