"""The Docker deliverables, validated offline (no Docker engine on these machines)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
@pytest.mark.parametrize("profile", [[], ["--profile", "train"]], ids=["default", "train"])
def test_compose_file_is_valid(profile):
    out = subprocess.run(
        ["docker-compose", *profile, "config"], cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    services = yaml.safe_load(out.stdout)["services"]
    assert {"triton", "api", "model-preparation"} <= set(services)
    assert services["model-preparation"]["profiles"] == ["train"]


def test_triton_is_the_same_release_as_the_local_binary():
    triton = _compose()["services"]["triton"]
    assert triton["image"] == "nvcr.io/nvidia/tritonserver:24.10-py3"  # Triton 2.51.0
    assert "./model_repository:/models:ro" in triton["volumes"]
    assert "healthcheck" in triton
    from importlib.metadata import version

    assert version("nvidia-pytriton") == "0.7.0"  # bundles tritonserver 2.51.0


def test_api_waits_for_a_healthy_triton_and_has_its_own_healthcheck():
    api = _compose()["services"]["api"]
    assert api["depends_on"]["triton"]["condition"] == "service_healthy"
    assert "healthcheck" in api and api["environment"]["TRITON_URL"] == "triton:8000"
    assert _compose()["services"]["model-preparation"]["profiles"] == ["train"]


def test_api_image_is_small_non_root_and_without_tensorflow():
    dockerfile = (REPO / "services/api/Dockerfile").read_text()
    assert "requirements/api.txt" in dockerfile and "requirements/train.txt" not in dockerfile
    assert "USER " in dockerfile and "USER root" not in dockerfile
    assert "gunicorn" in dockerfile and "HEALTHCHECK" in dockerfile
    lines = (REPO / "requirements/api.txt").read_text().lower().splitlines()
    packages = [line for line in lines if line.strip() and not line.startswith("#")]
    assert not [p for p in packages if "tensorflow" in p or "keras" in p]


def test_no_secrets_in_compose():
    text = (REPO / "docker-compose.yml").read_text().lower()
    for word in ("password", "secret", "token", "api_key"):
        assert word not in text
