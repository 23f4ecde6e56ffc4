"""The Grafana dashboard and its provisioning, held to the code (fast; the queries run against a
real Prometheus in tests/test_monitoring_stack.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

import imgcls.gateway.metrics
import imgcls.gateway.model_metrics  # noqa: F401
import imgcls_api.capture
import imgcls_api.telemetry  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
MONITORING = REPO / "deploy/monitoring"
DASHBOARD = json.loads((MONITORING / "grafana/dashboards/imgcls.json").read_text())
SUFFIXES = ("_bucket", "_count", "_sum", "_total")


def _api_metric_names() -> set[str]:
    names = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return names


def test_every_api_metric_the_dashboard_queries_exists():
    known = _api_metric_names()
    used = {m for p in DASHBOARD["panels"] for t in p["targets"]
            for m in re.findall(r"\b(api_[a-z_]+)", t["expr"])}  # fmt: skip
    assert used, "the dashboard queries no API metric"
    missing = {m for m in used if m not in known and not any(
        m.endswith(s) and m.removesuffix(s) in known for s in SUFFIXES)}  # fmt: skip
    assert not missing, f"the dashboard queries metrics the API does not export: {missing}"


def test_the_dashboard_has_the_panels_people_need():
    titles = [p["title"] for p in DASHBOARD["panels"]]
    for needed in ("Throughput", "Latency of /predict", "Errors", "Predicted classes",
                   "Confidence", "Input drift", "Unfamiliar inputs", "Unknown-class inputs",
                   "Triton"):  # fmt: skip
        assert needed in titles
    assert len({p["id"] for p in DASHBOARD["panels"]}) == len(titles)
    cells = set()
    for p in DASHBOARD["panels"]:
        g = p["gridPos"]
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & mine, f"{p['title']} overlaps another panel"
        cells |= mine
        assert p["description"] and p["targets"], p["title"]


def test_panels_use_the_provisioned_datasource():
    provisioned = yaml.safe_load((MONITORING / "grafana/provisioning/datasources/prometheus.yml")
                                 .read_text())["datasources"]  # fmt: skip
    uids = {d["uid"] for d in provisioned}
    for panel in DASHBOARD["panels"]:
        assert panel["datasource"]["uid"] in uids
        assert all(t["datasource"]["uid"] in uids for t in panel["targets"])


def test_prometheus_scrapes_the_api_and_triton_of_the_compose_stack():
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    targets = {j["job_name"]: j["static_configs"][0]["targets"] for j in config["scrape_configs"]}
    assert targets == {"api": ["api:5000"], "triton": ["triton:8002"]}
