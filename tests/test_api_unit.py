"""API behaviour that needs no Triton: health, settings, and failing fast when Triton is away."""

from __future__ import annotations

import io

import pytest

from imgcls_api import create_app
from imgcls_api.settings import Settings
from local_stack.procs import free_port
from tests import images


@pytest.fixture()
def client_without_triton():
    app = create_app({"triton_url": f"127.0.0.1:{free_port()}", "connect_timeout_s": 0.5})
    return app.test_client()


def test_healthz_is_independent_of_triton(client_without_triton):
    resp = client_without_triton.get("/healthz")
    assert resp.status_code == 200 and resp.get_json() == {"status": "ok"}


def test_readyz_is_503_when_triton_is_unreachable(client_without_triton):
    resp = client_without_triton.get("/readyz")
    assert resp.status_code == 503
    assert resp.get_json()["status"] == "not_ready" and resp.headers["Retry-After"]


@pytest.mark.timeout(30)  # a hang fails here; how fast is the bench's business
def test_predict_fails_fast_with_503_and_retry_after(client_without_triton):
    resp = client_without_triton.post(
        "/predict", data={"image": (io.BytesIO(images.jpeg()), "x.jpg")}
    )
    assert resp.status_code == 503
    assert resp.headers["Retry-After"]
    assert resp.get_json()["error"]["code"] == "triton_unavailable"


def test_unknown_route_is_json_404(client_without_triton):
    resp = client_without_triton.get("/nope")
    assert resp.status_code == 404 and resp.is_json
    assert resp.get_json()["error"]["code"] == "not_found"


def test_settings_from_environment_and_overrides():
    settings = Settings.from_env(
        {"TRITON_URL": "triton:8000", "MAX_UPLOAD_MB": "5", "MODEL_NAME": "m"}
    )
    assert (settings.triton_url, settings.max_upload_mb, settings.model_name) == (
        "triton:8000",
        5.0,
        "m",
    )
    assert settings.override({"MODEL_NAME": "other"}).model_name == "other"


def test_body_limit_comes_from_settings():
    app = create_app({"max_upload_mb": 1})
    assert app.config["MAX_CONTENT_LENGTH"] == 1024 * 1024
    resp = app.test_client().post(
        "/predict", data={"image": (io.BytesIO(b"x" * (2 << 20)), "big.jpg")}
    )
    assert resp.status_code == 413 and resp.get_json()["error"]["code"] == "payload_too_large"


def test_api_package_does_not_import_tensorflow():
    import subprocess
    import sys

    code = "import sys, imgcls_api; imgcls_api.create_app(); print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_request_id_is_returned_and_propagated(client_without_triton):
    generated = client_without_triton.get("/healthz").headers["X-Request-ID"]
    assert len(generated) == 32
    echoed = client_without_triton.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert echoed.headers["X-Request-ID"] == "abc-123"


def test_prometheus_metrics_count_requests_by_route_and_status(client_without_triton):
    client_without_triton.get("/healthz")
    client_without_triton.get("/readyz")
    text = client_without_triton.get("/metrics").get_data(as_text=True)
    assert 'api_requests_total{method="GET",route="/healthz",status="200"}' in text
    assert 'api_requests_total{method="GET",route="/readyz",status="503"}' in text
    assert "api_request_duration_seconds_bucket" in text and "api_requests_in_flight" in text


def test_a_method_the_api_does_not_know_is_counted_as_other(client_without_triton):
    """A client's method token never becomes a label value: each would be a new series, and a
    byte such as 0x85 (U+0085 in latin-1) is a line break to readers that use str.splitlines."""
    for odd in ("BREW", "X\x85LOG", "PROPFIND"):
        assert client_without_triton.open("/healthz", method=odd).status_code == 405
    text = client_without_triton.get("/metrics").get_data(as_text=True)
    assert 'api_requests_total{method="other",route="unmatched",status="405"} 3.0' in text
    assert "BREW" not in text and "\x85" not in text
    samples = [line for line in text.split("\n") if line and not line.startswith("#")]
    assert all(len(line.rsplit(" ", 1)) == 2 for line in samples)
    assert len(text.splitlines()) == text.count("\n")  # no odd line break left in the text


def test_logs_are_json_with_the_request_id(client_without_triton, api_log):
    client_without_triton.get("/healthz", headers={"X-Request-ID": "log-me"})
    assert any(r.get("request_id") == "log-me" and r.get("status") == 200 for r in api_log())


def test_create_app_leaves_the_root_logger_alone():
    import logging

    root = logging.getLogger()
    before = list(root.handlers)
    create_app()
    assert root.handlers == before


@pytest.fixture()
def black_hole():
    """A TCP server that accepts connections and never answers (a hung Triton)."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    conns: list = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conns.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        for c in conns:
            c.close()
        server.close()


@pytest.mark.timeout(30)
def test_a_hung_triton_gives_504_within_the_timeout(black_hole):
    app = create_app({"triton_url": black_hole, "triton_timeout_s": 1.0})
    resp = app.test_client().post("/predict", data={"image": (io.BytesIO(images.jpeg()), "x.jpg")})
    assert resp.status_code == 504, resp.get_data(as_text=True)
    assert resp.get_json()["error"]["code"] == "triton_timeout"
