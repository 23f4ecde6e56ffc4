"""Shared fixtures: a tiny real project (DVC pipeline run once per session), real Triton, real API.

Everything started here is stopped here, whatever the tests do.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
# The tiny project is built once and kept here, keyed by everything its build depends on: a second
# run of the suite (or `make test-integration`) starts from it instead of running `dvc repro`.
PROJECT_CACHE = REPO / ".cache" / "test-project"


def _build_inputs() -> list[str]:
    """What the build reads: the pipeline's definition and parameters, the demo data generator,
    and every code file a stage depends on (dvc.yaml's deps, held complete by
    tests/test_stage_contract.py)."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].values()
    code = sorted({d for s in stages for d in s["deps"] if d.startswith("services/")})
    return ["dvc.yaml", "params.yaml", ".dvcignore", ".gitignore", "model.dvc",
            "requirements/train.txt", "services/model-preparation/model_preparation/tools/demo_data.py",
            *code]  # fmt: skip


# Small enough for CI on 2 cores, big enough that the model must learn the shapes.
TINY_PARAMS = {
    "demo": {"images_per_class": 600, "min_side": 72, "max_side": 96},
    "prepare": {"image_size": 48},
    "train": {"epochs": 10, "steps_per_epoch": 30, "batch_size": 32, "patience": 10},
    "export": {"parity_samples": 8},
    "quantize": {"calibration_images": 64, "min_agreement": 0.8},
    "publish": {"max_batch_size": 16},
    "compare": {"optimizers": ["adam", "sgd"], "seeds": [1], "epochs": 2, "steps_per_epoch": 3},
}


def run_env() -> dict[str, str]:
    """The environment a user's shell has: the venv first on PATH, no analytics, quiet TF."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update({"DVC_NO_ANALYTICS": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "GIT_TERMINAL_PROMPT": "0"})
    return env


def run(
    cmd: list[str] | str, cwd: Path, check: bool = True, timeout: float = 900
) -> subprocess.CompletedProcess:
    """Run a command the way a user would in that directory (venv first on PATH)."""
    result = subprocess.run(
        cmd,
        cwd=cwd,
        env=run_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        shell=isinstance(cmd, str),
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{cmd} failed ({result.returncode})\nstdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
        )
    return result


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


def merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def make_project(dest: Path, params_override: dict | None = None) -> Path:
    """A git + DVC checkout of this project's pipeline, with its own params."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", ".dvcignore", ".gitignore", "model.dvc"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, dest / name)
    shutil.copytree(
        REPO / "services",
        dest / "services",
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
    )
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    (dest / "params.yaml").write_text(
        yaml.safe_dump(merge(params, params_override or {}), sort_keys=False)
    )
    run(
        "git init -q && git config user.email t@example.invalid && git config user.name tests", dest
    )
    run("dvc init -q && dvc config core.analytics false", dest)
    run("git add -A && git commit -qm 'project'", dest)  # like a clone: DVCLive needs a commit
    return dest


def build_key(params_override: dict) -> str:
    """A digest of every file the tiny project's build reads, and its parameters."""
    digest = hashlib.sha256(json.dumps(params_override, sort_keys=True).encode())
    for name in _build_inputs():
        path = REPO / name
        files = sorted(path.rglob("*")) if path.is_dir() else [path]
        for f in files:
            if f.is_file() and "__pycache__" not in f.parts and f.suffix != ".pyc":
                digest.update(f.relative_to(REPO).as_posix().encode() + b"\0" + f.read_bytes())
    return digest.hexdigest()[:16]


def build_tiny_project(dest: Path) -> Path:
    """The real pipeline (`dvc repro`) on a tiny demo dataset with one corrupt file in it."""
    root = make_project(dest, TINY_PARAMS)
    run([sys.executable, "-m", "model_preparation.tools.demo_data"], root)
    (root / "data/raw/circle/broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    run("dvc add -q data && dvc repro && dvc commit -q -f model.dvc", root)
    run("git add -A && git commit -qm 'tiny project'", root)
    return root


def cached_tiny_project() -> Path:
    """The tiny project for the current code and parameters: built once, reused after."""
    entry = PROJECT_CACHE / build_key(TINY_PARAMS)
    if not (entry / "complete").is_file():
        shutil.rmtree(PROJECT_CACHE, ignore_errors=True)  # one entry: older ones are stale
        build_tiny_project(entry / "project")
        (entry / "complete").write_text("built by tests/conftest.py\n")
    return entry / "project"


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory) -> Path:
    """A private copy of the built tiny project (tests may change their copy)."""
    root = tmp_path_factory.mktemp("tiny") / "project"
    shutil.copytree(cached_tiny_project(), root, symlinks=True)
    return root


@pytest.fixture(scope="session")
def model_repository(tiny_project: Path) -> Path:
    return tiny_project / "model_repository"


@pytest.fixture(scope="session")
def triton(model_repository: Path, tmp_path_factory):
    """The real tritonserver serving the tiny model, stopped at the end of the session."""
    from local_stack.triton import TritonServer

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


class InMemoryGateway:
    """Stands in for ``TritonGateway`` in *unit* tests of the API (parsing, errors, responses).

    Serves the default ``MODELS`` (FP32, INT8, BF16). Probabilities are a
    deterministic function of each image's mean colour, so a test can tell which image produced
    which result; so is the drift score (mean brightness / 100, threshold 1: a bright image is
    unfamiliar). Tests that claim to test Triton use the real one.
    """

    def __init__(self, labels=("circle", "square", "triangle"), size=(8, 8), max_batch_size=4,
                 drift_threshold: float | None = 1.0):  # fmt: skip
        from imgcls.contract import DEFAULT_MODELS
        from imgcls_api.triton import ModelInfo

        self.infos = {
            name: ModelInfo(
                name=name,
                version="1",
                input_name="image",
                input_dtype="UINT8",
                height=size[0],
                width=size[1],
                output_name="probabilities",
                labels=tuple(labels),
                max_batch_size=max_batch_size,
                fetched_at=0.0,
                drift_threshold=drift_threshold,
            )
            for name in DEFAULT_MODELS
        }
        self.batches: list = []  # what infer() was given, batch by batch
        self.models: list[str] = []  # which model each batch went to
        self.error = None  # an ApiError to raise from every call

    def _check(self, model: str):
        from imgcls_api.errors import ApiError

        if self.error is not None:
            raise self.error
        if model not in self.infos:
            raise ApiError(
                503, "triton_unavailable", f"model {model!r} is not ready", retry_after=2
            )
        return self.infos[model]

    def model_ready(self, model: str) -> bool:
        self._check(model)
        return True

    def model_info(self, model: str, refresh: bool = False):
        return self._check(model)

    def route(self, model: str):
        from imgcls_api.triton import Route

        return Route(self._check(model))

    def infer(self, images, model: str, compare: bool = True):
        import numpy as np

        from imgcls_api.triton import Outputs

        info = self._check(model)
        self.batches.append(images)
        self.models.append(model)
        logits = images.reshape(len(images), -1, 3).mean(axis=1)[:, : len(info.labels)]
        logits = np.pad(logits, ((0, 0), (0, len(info.labels) - logits.shape[1])))
        exp = np.exp((logits - logits.max(axis=1, keepdims=True)) / 32.0)
        probs = (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)
        drift = images.reshape(len(images), -1).mean(axis=1).astype(np.float32) / 100
        return Outputs(probs, drift if info.drift_threshold is not None else None), info


@pytest.fixture()
def gateway() -> InMemoryGateway:
    return InMemoryGateway()


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

    from imgcls_api.observability import JsonFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("imgcls_api")
    logger.addHandler(handler)
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        logger.removeHandler(handler)
