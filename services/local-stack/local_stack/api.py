"""Start and stop the API under gunicorn (the production server), on a loopback port."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .procs import ManagedProcess, client_address, free_port


class ApiServer(ManagedProcess):
    name = "api (gunicorn)"
    log_name = "api.log"

    def __init__(
        self,
        triton_url: str,
        port: int | None = None,
        workdir: Path | None = None,
        env: dict[str, str] | None = None,
        host: str = "127.0.0.1",
        app: str | None = None,
    ) -> None:
        """``app``: another WSGI app for the same gunicorn config (the bench's front-only row)."""
        super().__init__(workdir, env)
        self.app = app
        self.port = port or free_port()
        self.host = host
        self.triton_url = triton_url

    @property
    def url(self) -> str:
        return f"http://{client_address(self.host, self.port)}"

    def start(self, timeout: float = 30.0, wait_ready: bool = True) -> ApiServer:
        """Start gunicorn; wait for ``/readyz`` (or only ``/healthz`` with ``wait_ready=False``)."""
        ours = {"TRITON_URL": self.triton_url, "API_BIND": f"{self.host}:{self.port}"}
        env = {**os.environ, **ours, **self.extra_env}  # the caller's overrides win
        cmd = [sys.executable, "-m", "gunicorn", "-c", "python:imgcls_api.gunicorn_conf"]
        self.spawn(cmd + ([self.app] if self.app else []), env)
        self.wait_for(f"{self.url}/{'readyz' if wait_ready else 'healthz'}", timeout)
        return self

    def __enter__(self) -> ApiServer:
        return self.start() if not self.running else self
