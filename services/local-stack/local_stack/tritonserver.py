"""Start and stop the real ``tritonserver`` binary from the nvidia-pytriton wheel, no Docker.

What makes it run (see README "Serving → Without Docker"):
- a backend directory with a real copy of ``libtriton_python.so`` (a symlink is refused) and the
  Python stub as a symlink into site-packages (a copy cannot find its CUDA stub libraries);
- our Python-based ``onnxruntime`` and ``openvino`` backends next to it, so the configs the
  official image serves natively load here unchanged;
- this interpreter's ``bin/`` first on PATH (the stub imports numpy/onnxruntime from it) and its
  ``libpython3.x.so`` directory on LD_LIBRARY_PATH.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import sys
import sysconfig
from pathlib import Path

from imgcls.contract import RESTRICTED_APIS
from imgcls.variants import VARIANTS

from .procs import ManagedProcess, client_address, free_ports

SHARED_LOOP = "batched.py"  # the stand-ins' execute loop, installed beside each model.py

_BACKENDS_SRC = Path(__file__).parent / "backends"


def pytriton_root() -> Path:
    """``site-packages/pytriton/tritonserver`` without importing pytriton (it pins numpy<2)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("nvidia-pytriton is not installed: run `make install`")
    return Path(next(iter(spec.submodule_search_locations))) / "tritonserver"


def build_backend_dir(dest: Path) -> Path:
    """Lay out ``python/`` and ``onnxruntime/`` backends under ``dest``."""
    root = pytriton_root()
    python_dir = dest / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        shutil.copyfile(root / "backends" / "python" / name, python_dir / name)
    stub = python_dir / "triton_python_backend_stub"
    stub.unlink(missing_ok=True)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub.symlink_to(root / "python_backend_stubs" / version / "triton_python_backend_stub")
    for backend in sorted({v.backend for v in VARIANTS}):  # Python stand-ins for the native ones
        shutil.copytree(
            _BACKENDS_SRC / backend,
            dest / backend,
            dirs_exist_ok=True,
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        shutil.copyfile(_BACKENDS_SRC / SHARED_LOOP, dest / backend / SHARED_LOOP)
    return dest


def server_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, env.get("LD_LIBRARY_PATH")) if p)
    env.update(extra or {})
    return env


class TritonServer(ManagedProcess):
    """The real tritonserver on loopback ports; a context manager that always stops it."""

    name = "tritonserver"
    log_name = "tritonserver.log"

    def __init__(
        self,
        model_repository: Path,
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        workdir: Path | None = None,
        env: dict[str, str] | None = None,
        host: str = "127.0.0.1",
        exit_timeout: int = 3,
        admin_key: str | None = None,
        admin_key_file: Path | None = None,
    ) -> None:
        """``admin_key_file``: where to leave the admin key for the lifecycle commands (mode
        0600, removed at stop); without it only this object and TRITON_ADMIN_KEY know it."""
        super().__init__(workdir, env)
        # TRITON_ADMIN_KEY gives an operator the control endpoints; without it nobody has them.
        self.admin_key = admin_key or os.environ.get("TRITON_ADMIN_KEY") or secrets.token_hex(24)
        self.admin_key_file = admin_key_file
        self.model_repository = Path(model_repository).resolve()
        given = [p for p in (http_port, grpc_port, metrics_port) if p]
        spare = iter(free_ports(3 - len(given), taken=given))
        self.http_port = http_port or next(spare)
        self.grpc_port = grpc_port or next(spare)
        self.metrics_port = metrics_port or next(spare)
        self.host = host
        self.exit_timeout = exit_timeout

    @property
    def url(self) -> str:
        return client_address(self.host, self.http_port)

    @property
    def metrics_url(self) -> str:
        return f"http://{client_address(self.host, self.metrics_port)}/metrics"

    def command(self) -> list[str]:
        backends = build_backend_dir(self.workdir / "backends")
        cmd = [
            str(pytriton_root() / "bin" / "tritonserver"),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={backends}",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            "--pinned-memory-pool-byte-size=0",
            "--allow-gpu-metrics=false",
            "--backend-config=python,shm-default-byte-size=16777216",
            # Keep-alive clients (the API) would otherwise hold a SIGTERM for 30 s.
            f"--exit-timeout-secs={self.exit_timeout}",
            f"--http-restricted-api={RESTRICTED_APIS}:admin-key={self.admin_key}",
            f"--grpc-restricted-protocol={RESTRICTED_APIS}:admin-key={self.admin_key}",
            # Explicit model control: every model at start, in the versions its config.pbtxt
            # names; afterwards only the lifecycle commands (load API, admin key) change them.
            "--model-control-mode=explicit",
            "--load-model=*",
        ]
        cmd += [f"--{svc}-address={self.host}" for svc in ("http", "grpc", "metrics")]
        return cmd

    def start(self, timeout: float = 90.0) -> TritonServer:
        """Start and wait until ``/v2/health/ready`` (every model loaded) answers 200."""
        if self.admin_key_file is not None:
            self.admin_key_file.parent.mkdir(parents=True, exist_ok=True)
            self.admin_key_file.unlink(missing_ok=True)
            fd = os.open(self.admin_key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(self.admin_key + "\n")
        self.spawn(self.command(), server_env(self.extra_env))
        try:
            self.wait_for(f"http://{self.url}/v2/health/ready", timeout)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self.loading_state()}") from None
        return self

    def loading_state(self) -> str:
        """What a start that is not ready yet is waiting for: each backend stub process (state,
        CPU seconds so far, its model), and each model version's state once Triton's HTTP
        endpoint answers (it opens after the models given at start are loaded)."""
        import json
        import urllib.request

        import psutil

        lines = []
        try:
            request = urllib.request.Request(f"http://{self.url}/v2/repository/index", b"{}",
                                             {"admin-key": self.admin_key}, method="POST")  # fmt: skip
            with urllib.request.urlopen(request, timeout=5) as resp:
                lines += [json.dumps(entry) for entry in json.loads(resp.read())]
        except (OSError, ValueError) as exc:
            lines.append(f"repository index: {exc}")
        try:
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                times = child.cpu_times()
                lines.append(f"pid {child.pid} {child.status()} "
                             f"{times.user + times.system:.1f} s CPU: {' '.join(child.cmdline())[:160]}")  # fmt: skip
        except psutil.Error as exc:
            lines.append(f"stubs: {exc}")
        return "models and stubs:\n" + "\n".join(lines)

    def stop(self, grace: float = 15.0) -> None:
        super().stop(grace)
        if self.admin_key_file is not None:
            self.admin_key_file.unlink(missing_ok=True)

    def __enter__(self) -> TritonServer:
        return self.start() if not self.running else self
