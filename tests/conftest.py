"""Shared fixtures: a tiny real project (DVC pipeline run once per session), real Triton, real API.

Everything started here is stopped here, whatever the tests do.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests import builds
from tests.builds import REPO, VENV_BIN, copy_project, make_project, merge, run, run_env

__all__ = ["REPO", "VENV_BIN", "make_project", "merge", "run", "run_env", "wait_until"]

pytest_plugins = ["tests.phases", "tests.scheduling"]


def wait_until(predicate, timeout: float = 10.0, what: str = "the condition", poll: float = 0.02):
    """``predicate()``'s first truthy value within ``timeout`` seconds (background writes, a
    server catching up), else an AssertionError naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory) -> Path:
    """A private copy of the built tiny project (tests may change their copy)."""
    return copy_project(builds.tiny_project(), tmp_path_factory.mktemp("tiny") / "project")


@pytest.fixture(scope="session")
def shuffled_control() -> Path:
    """A model trained like the tiny one on its files with shuffled labels (tests/builds.py)."""
    return builds.shuffled_control() / "artifacts/model.onnx"


@pytest.fixture(scope="session")
def grown_project(tmp_path_factory) -> Path:
    """A private copy of the tiny project with a class added and version 2 published from a
    warm start (tests/builds.py)."""
    return copy_project(builds.grown_project(), tmp_path_factory.mktemp("grown") / "project")


@pytest.fixture(scope="session")
def model_repository(tiny_project: Path) -> Path:
    return tiny_project / "model_repository"


@pytest.fixture(scope="session")
def triton(model_repository: Path, tmp_path_factory):
    """The real tritonserver serving the tiny model, stopped at the end of the session."""
    from local_stack.tritonserver import TritonServer

    server = TritonServer(model_repository, workdir=tmp_path_factory.mktemp("triton"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def api(triton, tmp_path_factory):
    """The real API under gunicorn, talking to the real Triton."""
    from local_stack.api import ApiServer

    server = ApiServer(triton.url, workdir=tmp_path_factory.mktemp("api"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def capture_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("capture")


@pytest.fixture(scope="session")
def captured_api(triton, capture_dir, tmp_path_factory):
    """A second real API on the same Triton with the capture store and /feedback on (every
    request's images kept: CAPTURE_RATE=1)."""
    from local_stack.api import ApiServer

    env = {"CAPTURE_DIR": str(capture_dir), "CAPTURE_RATE": "1", "WEB_CONCURRENCY": "2"}
    server = ApiServer(triton.url, workdir=tmp_path_factory.mktemp("captured-api"), env=env)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture()
def gateway():
    """The one stand-in for Triton in the API's unit tests (``imgcls.gateway.memory``)."""
    from imgcls.gateway.memory import MemoryGateway

    return MemoryGateway()


@pytest.fixture()
def app(gateway):
    """The real app from ``create_app`` with the in-memory gateway in place of Triton."""
    from imgcls_api import create_app

    app = create_app({"max_batch_images": 8})
    app.config["TESTING"] = True
    app.extensions["triton"] = gateway
    return app


@pytest.fixture()
def client(app):
    return app.test_client()


@pytest.fixture()
def api_log():
    """The API's JSON log lines, parsed, as they are written during the test."""
    import io
    import json
    import logging

    from imgcls_api.telemetry import JsonFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("imgcls_api")
    logger.addHandler(handler)
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        logger.removeHandler(handler)
