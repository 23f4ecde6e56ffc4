"""Faults, hot reload, bounded load and schema fuzzing against the real Triton + gunicorn API."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from imgcls.preprocessing import load_image
from local_stack.api import ApiServer
from local_stack.tritonserver import TritonServer
from model_preparation.onnx_utils import session

pytestmark = [pytest.mark.integration, pytest.mark.slow]
LOAD_SECONDS = float(os.environ.get("LOAD_TEST_SECONDS", "20"))


def _files(project: Path, n: int = 6) -> list[Path]:
    return [
        p
        for c in ("circle", "square", "triangle")
        for p in sorted((project / "data/raw" / c).glob(f"{c}_*.jpg"))[: n // 3]
    ]


@pytest.fixture()
def own_stack(model_repository, tmp_path):
    """A private Triton (on a copy of the repository) + API that a test may break."""
    repo = tmp_path / "repo"
    shutil.copytree(model_repository, repo)
    triton = TritonServer(repo, workdir=tmp_path / "triton")
    api = ApiServer(triton.url, workdir=tmp_path / "api", env={"MODEL_INFO_TTL_S": "1"})
    try:
        triton.start()
        api.start()
        yield repo, triton, api
    finally:
        api.stop()
        triton.stop()


def test_killing_triton_under_load_gives_fast_503s_and_the_api_recovers(own_stack, tiny_project):
    _repo, triton, api = own_stack
    data = _files(tiny_project, 3)[0].read_bytes()
    outcomes: list[tuple[float, int, float]] = []  # (sent at, status, seconds)
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            sent = time.monotonic()
            try:
                status = requests.post(
                    f"{api.url}/predict", files={"image": data}, timeout=10
                ).status_code
            except requests.RequestException:
                status = -1  # a hung or dropped connection
            outcomes.append((sent, status, time.monotonic() - sent))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(2)
    killed_at = time.monotonic()
    triton.proc.kill()  # SIGKILL: no goodbye to in-flight requests
    triton.stop(grace=1)  # reap it and any stub left in its group
    time.sleep(2)
    stop.set()
    for t in threads:
        t.join(timeout=15)
    after = [(s, d) for sent, s, d in outcomes if sent > killed_at + 0.1]
    assert after, "no request was sent after the kill"
    assert {s for s, _ in after} == {503}, sorted({s for s, _ in after})
    # none waited for its own 10 s client timeout: the API answered instead of hanging
    assert max(d for _, d in after) < 5.0
    assert all(s in (200, 503) for _, s, _ in outcomes), sorted({s for _, s, _ in outcomes})

    triton.start()  # same ports; the API was not restarted
    resp = requests.post(f"{api.url}/predict", files={"image": data}, timeout=30)
    assert resp.status_code == 200, resp.text
    assert resp.json()["label"] in {"circle", "square", "triangle"}


def test_bounded_load_has_no_errors_and_every_answer_is_correct(api, tiny_project, capsys):
    """16 concurrent clients for LOAD_TEST_SECONDS on loopback; p50/p99 are printed."""
    sess = session(tiny_project / "model_repository/resnet50v2/1/model.onnx")
    labels = (tiny_project / "model_repository/resnet50v2/1/labels.txt").read_text().split()
    files = _files(tiny_project, 6)
    payloads = [p.read_bytes() for p in files]
    expected = [
        labels[int(sess.run(None, {"image": load_image(p, 48)[None]})[0][0].argmax())]
        for p in files
    ]
    deadline = time.monotonic() + LOAD_SECONDS
    latencies: list[float] = []
    errors: list[str] = []

    def client(worker: int) -> None:
        i = worker
        with requests.Session() as http:
            while time.monotonic() < deadline:
                k = i % len(payloads)
                start = time.perf_counter()
                resp = http.post(f"{api.url}/predict", files={"image": payloads[k]}, timeout=30)
                latencies.append(time.perf_counter() - start)
                if resp.status_code != 200 or resp.json()["label"] != expected[k]:
                    errors.append(f"{resp.status_code} {resp.text[:200]}")
                i += 1

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(client, range(16)))
    assert not errors, errors[:5]
    assert len(latencies) > 16
    q = statistics.quantiles(latencies, n=100)
    with capsys.disabled():  # the numbers belong in the CI log
        print(
            f"\nload: {len(latencies)} requests in {LOAD_SECONDS:.0f}s, 16 clients: "
            f"{len(latencies) / LOAD_SECONDS:.1f} req/s, p50 {q[49] * 1000:.0f} ms, p99 {q[98] * 1000:.0f} ms"
        )


def test_schemathesis_finds_no_server_error_or_schema_violation(api):
    st = Path(sys.executable).parent / "st"
    cmd = [
        str(st),
        "run",
        f"{api.url}/openapi.json",
        "--checks",
        "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
        "--max-examples",
        "25",
        "--request-timeout",
        "20",
        "--seed",
        "1",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
