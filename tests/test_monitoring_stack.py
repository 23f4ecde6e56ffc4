"""The dashboard people look at: Debian's real Prometheus (``promtool check config`` on the compose
scrape config, then the server itself) scrapes the real API and Triton of the test session, and
every query of every panel of the Grafana dashboard returns data. The dashboard JSON is checked
against Grafana's published dashboard schema (the ``@grafana/schema`` package's TypeScript
types, with ``tsc``): no Grafana server can be installed here.

The fast tier holds the dashboard's metric names to the code's (tests/test_dashboard.py)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests
import yaml

from local_stack.procs import ManagedProcess, free_port
from tests import stacks
from tests.conftest import run

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
PROMETHEUS_CONFIG = REPO / "deploy/monitoring/prometheus.yml"
DASHBOARD = REPO / "deploy/monitoring/grafana/dashboards/imgcls.json"
SCHEMA_CACHE = REPO / ".cache" / "grafana-schema"
NPM_PACKAGES = ("@grafana/schema@13.2.3", "typescript@5.6.3")
DASHBOARD_TYPES = "node_modules/@grafana/schema/dist/types/raw/dashboard/x/types.gen"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("REQUIRE_MONITORING_TOOLS"):
            pytest.fail(f"{name} is not installed")
        pytest.skip(f"{name} is not installed (apt-get install prometheus / npm)")
    return path


def test_promtool_accepts_the_scrape_config():
    out = subprocess.run([_tool("promtool"), "check", "config", str(PROMETHEUS_CONFIG)],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr


def _config_for(api_target: str, triton_target: str, path: Path) -> Path:
    """The compose scrape config, aimed at this session's servers, scraping every second."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"]["scrape_interval"] = "1s"
    targets = {"api": api_target, "triton": triton_target}
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
    path.write_text(yaml.safe_dump(config))
    return path


class Prometheus(ManagedProcess):
    """Debian's prometheus, started and stopped like every server here (its process group;
    never left behind, whatever stops the test)."""

    name = "prometheus"
    log_name = "prometheus.log"

    def start(self, config: Path) -> Prometheus:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.spawn([_tool("prometheus"), f"--config.file={config}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}"])  # fmt: skip
        self.wait_for(f"{self.url}/-/ready", timeout=30)
        return self


@pytest.fixture()
def shadowed(model_repository, tiny_project, tmp_path):
    """A private Triton + capture-enabled API whose model has a shadow candidate: the roll-out
    panels' series (traffic by role, the guards, live agreement) exist."""
    source = tmp_path / "source"
    shutil.copytree(model_repository, source)
    stacks.shadow_copy(source)
    env = {"CAPTURE_DIR": str(tmp_path / "capture"), "CAPTURE_RATE": "1"}
    with stacks.stack(source, tiny_project / "artifacts/gate.npz", tmp_path / "stack", {},
                      api_env=env) as running:  # fmt: skip
        yield running


@pytest.fixture()
def prometheus(shadowed, tmp_path):
    """The real Prometheus server scraping that API and Triton."""
    config = _config_for(shadowed.api.url.removeprefix("http://"),
                         shadowed.triton.metrics_url.removeprefix("http://").removesuffix("/metrics"),
                         tmp_path / "prometheus.yml")  # fmt: skip
    with Prometheus(tmp_path) as server:
        yield server.start(config).url


def _queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"]
            for target in panel["targets"]]  # fmt: skip


def _traffic(api, tiny_project: Path) -> None:
    """Answers of every class, an error, a correction: something for every panel."""
    files = [p for c in ("circle", "square", "triangle")
             for p in sorted((tiny_project / "data/raw" / c).glob(f"{c}_*.jpg"))[:4]]  # fmt: skip
    for path in files:
        resp = requests.post(f"{api.url}/predict", files={"image": path.read_bytes()}, timeout=30)
        assert resp.status_code == 200, resp.text
    assert requests.post(f"{api.url}/predict", files={"image": b"not an image"},
                         timeout=30).status_code == 400  # fmt: skip
    request_id = resp.json()["request_id"]
    deadline = time.monotonic() + 10
    while requests.post(f"{api.url}/feedback", json={"request_id": request_id, "label": "circle"},
                        timeout=10).status_code != 201:  # fmt: skip
        assert time.monotonic() < deadline, "feedback was never accepted"
        time.sleep(0.1)


def test_every_dashboard_panel_query_returns_data(prometheus, shadowed, tiny_project):
    _traffic(shadowed.api, tiny_project)
    time.sleep(2)  # a scrape after the traffic
    _traffic(shadowed.api, tiny_project)  # rates need two samples that differ
    empty: dict[str, str] = {}
    deadline = time.monotonic() + 30
    while True:
        empty = {}
        for title, expr in _queries():
            query = expr.replace("$__rate_interval", "1m")
            body = requests.get(f"{prometheus}/api/v1/query", params={"query": query},
                                timeout=10).json()  # fmt: skip
            assert body["status"] == "success", (title, query, body)
            if not body["data"]["result"]:
                empty[title] = query
        if not empty or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert not empty, f"panels without data: {empty}"


def _tsc() -> Path:
    """tsc and the dashboard types from npm, installed once into .cache/grafana-schema."""
    tsc = SCHEMA_CACHE / "node_modules/.bin/tsc"
    stamp = SCHEMA_CACHE / "installed.txt"
    if not (tsc.exists() and stamp.exists() and stamp.read_text() == " ".join(NPM_PACKAGES)):
        SCHEMA_CACHE.mkdir(parents=True, exist_ok=True)
        run([_tool("npm"), "install", "--no-save", "--no-audit", "--no-fund", "--prefix",
             str(SCHEMA_CACHE), *NPM_PACKAGES], SCHEMA_CACHE, timeout=600)  # fmt: skip
        stamp.write_text(" ".join(NPM_PACKAGES))
    return tsc


def _json_types() -> str:
    """The dashboard types as JSON sees them: each TypeScript ``enum`` (which a JSON literal
    cannot be assigned to) becomes the union of its values, and ``Enum.Member`` its value."""
    text = (SCHEMA_CACHE / f"{DASHBOARD_TYPES}.d.ts").read_text()
    enums = {
        name: dict(re.findall(r"(\w+)\s*=\s*([^,\n]+)", body))
        for name, body in re.findall(r"export declare enum (\w+) \{([^}]*)\}", text)
    }

    def union(match: re.Match) -> str:
        values = (v.strip() for v in enums[match[1]].values())
        return f"export type {match[1]} = {' | '.join(values)};"

    text = re.sub(r"export declare enum (\w+) \{([^}]*)\}", union, text)
    members = "|".join(map(re.escape, enums))
    return re.sub(rf"\b({members})\.(\w+)\b", lambda m: enums[m[1]][m[2]].strip(), text)


def _check(dashboard: dict) -> subprocess.CompletedProcess:
    tsc = _tsc()
    (SCHEMA_CACHE / "dashboard-types.d.ts").write_text(_json_types())
    source = ('import type { Dashboard } from "./dashboard-types";\n'
              f"const dashboard: Dashboard = {json.dumps(dashboard, indent=1)};\n"
              "export default dashboard;\n")  # fmt: skip
    check = SCHEMA_CACHE / "check.ts"
    check.write_text(source)
    return subprocess.run([str(tsc), "--noEmit", "--strict", "--target", "es2020",
                           "--moduleResolution", "node", str(check)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def test_the_dashboard_matches_grafanas_published_schema():
    _tool("node")
    dashboard = json.loads(DASHBOARD.read_text())
    result = _check(dashboard)
    assert result.returncode == 0, result.stdout + result.stderr
    broken = json.loads(DASHBOARD.read_text())
    broken["schemaVersion"] = "39"  # a string where the schema wants a number
    del broken["panels"][0]["type"]  # every panel needs its type
    result = _check(broken)
    assert result.returncode != 0
    assert "Type 'string' is not assignable to type 'number'" in result.stdout
    assert "but required in type 'Panel'" in result.stdout
