"""`make up` and the servers it starts, as users and supervisors stop them; Triton's closed doors.

`make up` runs on the tiny project's model (`MODEL_REPOSITORY=`) and free ports (`UP_ARGS=`);
every process it started must be gone after any way of stopping it, and its ports free.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

from local_stack.api import ApiServer
from local_stack.procs import free_port, free_ports, http_status
from local_stack.tritonserver import TritonServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]


def _descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc), whatever session it moved to."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _port_free(port: int) -> bool:
    """Whether a server could listen there now, as the next `make up` would (SO_REUSEADDR, like
    Triton and gunicorn: a closed connection's TIME_WAIT does not count, a listener does)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen(1)
        except OSError:
            return False
    return True


@pytest.fixture()
def make_up(model_repository, tmp_path):
    """`make up` in its own process group; yields (process, ports) once the API is ready."""
    ports = free_ports(4)
    up_args = (
        f"--http-port {ports[0]} --grpc-port {ports[1]} --metrics-port {ports[2]} "
        f"--api-port {ports[3]} --logs {tmp_path / 'logs'} --admin-key-file {tmp_path / 'key'}"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS"))}
    proc = subprocess.Popen(
        ["make", "--no-print-directory", "up", f"MODEL_REPOSITORY={model_repository}",
         f"UP_ARGS={up_args}"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C stops both" in line:
                break
        assert proc.poll() is None, "".join(lines)
        assert any("reusing it (no training)" in line for line in lines), "".join(lines)
        yield proc, ports
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.parametrize(
    "how", ["SIGTERM to the group", "SIGINT to the group", "SIGKILL to the launcher"]
)
def test_make_up_leaves_nothing_behind(make_up, how):
    proc, ports = make_up
    assert http_status(f"http://127.0.0.1:{ports[3]}/readyz") == 200
    started = _descendants(proc.pid)
    names = {Path(f"/proc/{p}/comm").read_text().strip() for p in started if _alive(p)}
    assert {"tritonserver", "triton_python_b"} <= names, names  # comm is cut at 15 characters
    if how == "SIGKILL to the launcher":
        launcher = next(
            p for p in started if "local_stack" in Path(f"/proc/{p}/cmdline").read_text()
        )
        os.kill(launcher, signal.SIGKILL)
    else:
        os.killpg(proc.pid, getattr(signal, how.split()[0]))
    proc.wait(timeout=60)
    deadline = time.monotonic() + 20  # orphans get their parent-death SIGTERM, then exit
    while (left := [p for p in started if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, [Path(f"/proc/{p}/cmdline").read_text() for p in left if _alive(p)]
    assert all(_port_free(p) for p in ports)


def _healthz_count(url: str) -> float:
    metrics = requests.get(f"{url}/metrics", timeout=10)
    assert metrics.status_code == 200 and metrics.text  # an empty body was the bug
    assert metrics.headers["Content-Type"].count("charset") == 1
    counted = re.search(
        r'^api_requests_total\{method="GET",route="/healthz",status="200"\} (\S+)$',
        metrics.text,
        re.M,
    )
    assert counted, metrics.text[:2000]
    return float(counted.group(1))


def test_metrics_under_gunicorn_count_requests_of_every_worker(tmp_path):
    """Two gunicorn workers, no Triton needed: /metrics sums what both counted; the samples'
    folder the server made for itself is gone once it stops."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {"WEB_CONCURRENCY": "2", "API_THREADS": "2", "TMPDIR": str(tmp)}
    server = ApiServer(f"127.0.0.1:{free_port()}", workdir=tmp_path, env=env)
    try:
        server.start(wait_ready=False)  # its readiness probe counts a /healthz or a few
        before = _healthz_count(server.url)
        for _ in range(40):  # a new connection each, so both workers take some
            resp = requests.get(f"{server.url}/healthz", headers={"Connection": "close"})
            assert resp.status_code == 200
        assert _healthz_count(server.url) - before == 40
        assert [p.name[:15] for p in tmp.iterdir()] == ["imgcls-metrics-"]
    finally:
        server.stop()
    assert not list(tmp.glob("imgcls-metrics-*")), list(tmp.rglob("*"))


def test_triton_control_endpoints_need_the_admin_key(model_repository, tmp_path):
    """As `make up` starts it: logging/trace/repository control refused, inference still open."""
    with TritonServer(model_repository, workdir=tmp_path, admin_key="operator-secret") as triton:
        base = f"http://{triton.url}/v2"
        refused = [
            requests.post(f"{base}/logging", json={"log_verbose_level": 1}, timeout=5),
            requests.post(f"{base}/trace/setting", json={"trace_rate": "1"}, timeout=5),
            requests.post(f"{base}/repository/models/resnet50v2/unload", json={}, timeout=5),
            requests.post(f"{base}/repository/index", json={}, timeout=5),
        ]
        assert [r.status_code for r in refused] == [403] * 4
        assert "admin-key" in refused[0].json()["error"]
        assert requests.get(f"{base}/models/resnet50v2/config", timeout=5).status_code == 200
        assert requests.get(f"{base}/health/ready", timeout=5).status_code == 200
        operator = requests.get(
            f"{base}/logging", headers={"admin-key": "operator-secret"}, timeout=5
        )
        assert operator.status_code == 200 and "log_verbose_level" in json.loads(operator.text)
