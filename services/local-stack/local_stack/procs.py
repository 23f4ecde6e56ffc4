"""Process plumbing shared by the Triton and API launchers: ports, readiness, clean stops."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path


def free_port() -> int:
    """A TCP port that was free a moment ago (good enough for tests on loopback)."""
    return free_ports(1)[0]


def free_ports(count: int, taken: Sequence[int] = ()) -> list[int]:
    """``count`` different TCP ports that were free a moment ago, none of ``taken``: held open
    together while chosen, since one port after another may be the same port twice (it was:
    Triton given one port for gRPC and metrics, 2026-12-04).

    Drawn below the kernel's ephemeral range, never from it: a port the kernel handed out could
    be handed out again, to any outgoing connection, before the server binds it (Triton binds its
    metrics port after loading its models; one was taken by another test's client connection
    meanwhile, and Triton exited, 2026-12-04)."""
    low, _ = ephemeral_range()
    below = low if low > FIRST_PORT + 1000 else 65536  # a range that leaves no room: any port
    draw = random.SystemRandom()
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        while len(ports) < count:
            port = draw.randrange(FIRST_PORT, below)
            if port in taken or port in ports:
                continue
            sock = stack.enter_context(socket.socket())
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:  # in use: draw again
                continue
            ports.append(port)
        return ports


FIRST_PORT = 10000  # above the well-known and most registered services' ports


def ephemeral_range(path: Path = Path("/proc/sys/net/ipv4/ip_local_port_range")) -> tuple[int, int]:
    """The ports the kernel hands out to outgoing connections and ``bind(0)`` (Linux's
    default where the file is missing)."""
    try:
        low, high = (int(v) for v in path.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def client_address(bind: str, port: int) -> str:
    """``host:port`` where a local client reaches a server bound to ``bind`` (a wildcard bind
    is reached on loopback; IPv6 in brackets)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(bind, bind)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """Status code of a GET, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, urllib.error.URLError):
        return None


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class ManagedProcess:
    """A child in its own process group, so a stop takes its children (Triton's stubs) too.

    Each keeps its log in ``workdir`` (a fresh temporary folder unless given) and runs with this
    process's environment plus ``env``.
    """

    name = "process"
    log_name = "process.log"

    def __init__(self, workdir: Path | None = None, env: dict[str, str] | None = None) -> None:
        self.workdir = Path(
            workdir or tempfile.mkdtemp(prefix=f"{self.log_name.split('.')[0]}-")
        ).resolve()
        self.log_path = self.workdir / self.log_name
        self.extra_env = dict(env or {})
        self.proc: subprocess.Popen | None = None

    def environment(self) -> dict[str, str]:
        return {**os.environ, **self.extra_env}

    def spawn(self, cmd: list[str], env: dict[str, str] | None = None) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the child
        self.proc = subprocess.Popen(
            _with_parent_death_signal(cmd),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env or self.environment(),
            start_new_session=True,
        )
        log.close()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_for(self, url: str, timeout: float, expect: int = 200) -> None:
        """Poll ``url`` until it answers ``expect``; fail fast with the log if the child died."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(
                    f"{self.name} exited (code {self.proc and self.proc.returncode}) before it was "
                    f"ready; last lines of {self.log_path}:\n{log_tail(self.log_path)}"
                )
            if http_status(url) == expect:
                return
            time.sleep(0.2)
        raise TimeoutError(
            f"{self.name} not ready at {url} after {timeout:.0f}s; last lines of {self.log_path}:\n"
            f"{log_tail(self.log_path)}"
        )

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM the leader (it stops its own children), then SIGKILL the group's leftovers."""
        if self.proc is None:
            return
        pgid = self.proc.pid
        self.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=grace)
        deadline = time.monotonic() + 3.0  # children (stubs) exit just after their parent
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _group_alive(pgid):
            _signal_group(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5.0)
        self.proc = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def exit_on_sigterm() -> None:
    """In a command that starts servers with this module: SIGTERM (``kill``, ``timeout``, a
    supervisor) becomes ``SystemExit``, so its ``with`` blocks stop them, process group and all.
    Without it the command vanishes and Triton, SIGTERMed by its parent-death signal while still
    loading models, can leave its backend stubs running."""
    signal.signal(signal.SIGTERM, _raise_exit)


def _raise_exit(signum: int, _frame) -> None:
    raise SystemExit(128 + signum)


def _with_parent_death_signal(cmd: list[str]) -> list[str]:
    """Have the kernel SIGTERM the child if its parent dies without stopping it (SIGKILL, a
    crash): ``setpriv --pdeathsig`` (util-linux) sets it just before exec, no preexec_fn."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--", *cmd] if setpriv else cmd


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True
