"""A private PostgreSQL (Debian's ``postgresql``) for the tests and ``make bench-batch``: its own
data directory and port, started by ``initdb`` + ``pg_ctl`` and always stopped (``pg_ctl stop -m
immediate``, then the postmaster itself if it lingers). As root it runs as the ``postgres`` user:
the server refuses root.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path


class PostgresMissing(RuntimeError):
    """No PostgreSQL server binaries on this machine."""


def bin_dir() -> Path:
    """Debian's server binaries (the newest installed major version)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not found:
        raise PostgresMissing("PostgreSQL is not installed (apt-get install postgresql)")
    return Path(found[-1]).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_server_user(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--", *cmd]


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """A running server; yields the URL of its database ``optuna`` (user ``test``, trust auth
    on 127.0.0.1 only). Its files live in a directory of their own under the system's temporary
    folder (pytest's are private to root, which the server's user cannot enter), removed after."""
    bindir, port = bin_dir(), _free_port()
    workdir = Path(tempfile.mkdtemp(prefix="imgcls-postgres-"))
    data, sockets = workdir / "pgdata", workdir / "pgsock"
    sockets.mkdir()
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        for path in (workdir, sockets):
            shutil.chown(path, user.pw_uid, user.pw_gid)

    def run(cmd: list[str]) -> None:
        done = subprocess.run(_as_server_user(cmd), capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            log = (
                (workdir / "postgres.log").read_text()
                if (workdir / "postgres.log").exists()
                else ""
            )
            raise RuntimeError(f"{cmd[0]} failed: {done.stdout}{done.stderr}{log}"[-3000:])

    run([str(bindir / "initdb"), "-D", str(data), "-U", "test", "--auth=trust", "-E", "UTF8"])
    log = workdir / "postgres.log"
    options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off"
    try:
        run([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w",
             "-t", "60", "start"])  # fmt: skip
        run([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "test", "optuna"])
        yield f"postgresql://test@127.0.0.1:{port}/optuna"
    finally:
        subprocess.run(_as_server_user([str(bindir / "pg_ctl"), "-D", str(data), "-m",
                                        "immediate", "-w", "stop"]),
                       capture_output=True, timeout=60)  # fmt: skip
        _kill_leftovers(data)
        shutil.rmtree(workdir, ignore_errors=True)


def _kill_leftovers(data: Path) -> None:
    """The postmaster named in its pid file, if ``pg_ctl stop`` left it running."""
    pidfile = data / "postmaster.pid"
    with contextlib.suppress(OSError, ValueError):
        pid = int(pidfile.read_text().splitlines()[0])
        os.kill(pid, signal.SIGKILL)
