"""Start and stop the API under gunicorn (the production server), on a loopback port."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from .procs import ManagedProcess, free_port


class ApiServer(ManagedProcess):
    name = "api (gunicorn)"

    def __init__(
        self,
        triton_url: str,
        port: int | None = None,
        workdir: Path | None = None,
        env: dict[str, str] | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="api-")).resolve()
        super().__init__(self.workdir / "api.log")
        self.port = port or free_port()
        self.host = host
        self.triton_url = triton_url
        self.extra_env = env or {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0, wait_ready: bool = True) -> ApiServer:
        """Start gunicorn; wait for ``/readyz`` (or only ``/healthz`` with ``wait_ready=False``)."""
        env = dict(os.environ)
        env.update({"TRITON_URL": self.triton_url, "API_BIND": f"{self.host}:{self.port}"})
        env.update(self.extra_env)
        cmd = [sys.executable, "-m", "gunicorn", "-c", "python:imgcls_api.gunicorn_conf"]
        self._spawn(cmd, env)
        self.wait_for(f"{self.url}/{'readyz' if wait_ready else 'healthz'}", timeout)
        return self

    def __enter__(self) -> ApiServer:
        return self.start() if not self.running else self
