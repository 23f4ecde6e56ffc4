"""A private serving stack for the tests that change the served model: a copy of a model
repository, the real Triton (EXPLICIT mode, an admin key) and the real API, with the lifecycle
command line as an operator runs it against them."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from local_stack.api import ApiServer
from local_stack.tritonserver import TritonServer
from tests.builds import REPO, merge

KEY = "lifecycle-test-admin-key"
# Loading a stack's models (8 backend stubs with a shadow) took 8 s alone but did not finish in
# 90 s once in CI, beside two training search workers and another stack (2026-12-04): a slow
# start is not what these tests check, and the error says which model was still loading.
STARTUP_S = 240.0


@dataclass
class Stack:
    repo: Path
    triton: TritonServer
    api: ApiServer
    params: Path
    gate_set: Path

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "imgcls.lifecycle", "--repository", str(self.repo),
                "--triton-url", self.triton.url,
                "--triton-grpc-url", f"127.0.0.1:{self.triton.grpc_port}",
                "--api-url", self.api.url, "--gate-set", str(self.gate_set), *args]  # fmt: skip

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "TRITON_ADMIN_KEY": KEY, "PARAMS_FILE": str(self.params)}

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """`python -m imgcls.lifecycle ARGS`, to its end."""
        return subprocess.run(self.command(*args), env=self.env, capture_output=True, text=True,
                              timeout=timeout)  # fmt: skip

    def start(self, *args: str) -> subprocess.Popen:
        """`python -m imgcls.lifecycle ARGS` in the background (its own process group)."""
        return subprocess.Popen(self.command(*args), env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip


def kill(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


@contextlib.contextmanager
def stack(
    source: Path, gate_set: Path, tmp_path: Path, lifecycle: dict, api_env: dict | None = None
) -> Iterator[Stack]:
    """Triton + API over a copy of the repository ``source``; params.yaml's ``lifecycle``
    section merged with ``lifecycle``; ``api_env``: the API's settings."""
    repo = tmp_path / "repo"
    shutil.copytree(source, repo)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["lifecycle"] = merge(params["lifecycle"], lifecycle)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    triton = TritonServer(repo, workdir=tmp_path / "triton", admin_key=KEY)
    api = ApiServer(triton.url, workdir=tmp_path / "api",
                    env={"MODEL_INFO_TTL_S": "1", **(api_env or {})})  # fmt: skip
    try:
        triton.start(timeout=STARTUP_S)
        api.start()
        yield Stack(repo, triton, api, tmp_path / "params.yaml", gate_set)
    finally:
        api.stop()
        triton.stop()


def shadow_copy(repo: Path, model: str = "resnet50v2") -> None:
    """Version 2 of ``model``: version 1's files again, shadowing it (the config says so before
    Triton starts): every request also asked of a candidate that agrees."""
    from imgcls.model_records import Lifecycle
    from imgcls.repository import ModelDir

    target = ModelDir(repo, model)
    with target.lock():
        target.add_version(repo / model / "1/model.onnx", target.version(1))
        target.write_config(Lifecycle(1, 2, "shadow", 100))
