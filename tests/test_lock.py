"""The locked environment: every pin hashed, every requirement met by its lock, the images held to
the venv's versions, and every installer (Makefile, both Dockerfiles) reading a lock with
--require-hashes. (`make lock` writes the locks; the Docker test builds the images from them.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
REQ = REPO / "requirements"
LOCKS = {"dev": ["api", "train", "dev"], "api": ["api"], "train": ["train"],
         "local-triton": ["local-triton"], "uv": ["uv"]}  # fmt: skip


def pins(lock: Path) -> dict[str, tuple[str, int]]:
    """``{name: (version, number of hashes)}`` of a lock written by `uv pip compile`."""
    found: dict[str, tuple[str, int]] = {}
    for block in re.split(r"\n(?=\S)", lock.read_text()):
        head = re.match(r"^([A-Za-z0-9._-]+)==(\S+)", block)
        if head:
            found[canonicalize_name(head[1])] = (head[2], block.count("--hash=sha256:"))
    return found


def requirements(name: str) -> list[Requirement]:
    lines = (REQ / f"{name}.txt").read_text().splitlines()
    return [Requirement(line.split("#")[0].strip()) for line in lines
            if line.split("#")[0].strip()]  # fmt: skip


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_every_pin_is_hashed_and_meets_the_requirements(lock):
    locked = pins(REQ / f"{lock}.lock")
    assert locked, lock
    unhashed = [name for name, (_, hashes) in locked.items() if hashes == 0]
    assert not unhashed, f"{lock}.lock pins without a hash: {unhashed}"
    for source in LOCKS[lock]:
        for req in requirements(source):
            name = canonicalize_name(req.name)
            assert name in locked, f"{source}.txt needs {req.name}, {lock}.lock lacks it"
            assert req.specifier.contains(locked[name][0], prereleases=True), (
                f"{lock}.lock pins {req.name}=={locked[name][0]}, {source}.txt asks {req}"
            )


@pytest.mark.parametrize("image", ["api", "train", "uv"])
def test_the_images_run_the_versions_the_tests_run(image):
    venv, locked = pins(REQ / "dev.lock"), pins(REQ / f"{image}.lock")
    differ = {n: (v, venv.get(n, ("absent",))[0]) for n, (v, _) in locked.items()
              if venv.get(n, ("",))[0] != v}  # fmt: skip
    assert not differ, f"{image}.lock differs from dev.lock (image, venv): {differ}"


@pytest.mark.parametrize(
    ("installer", "lock"),
    [("services/api/Dockerfile", "api.lock"), ("services/model-preparation/Dockerfile", "train.lock"),
     ("Makefile", "dev.lock"), ("Makefile", "local-triton.lock"),
     *[(installer, "uv.lock") for installer in ("Makefile", "services/api/Dockerfile",
                                               "services/model-preparation/Dockerfile")]],
)  # fmt: skip
def test_every_installer_reads_a_lock_with_hashes(installer, lock):
    """pip installs uv from its lock, uv the rest from theirs (the Makefile's ``$(UV_PIP)`` is
    ``uv pip install``), each with --require-hashes."""
    text = (REPO / installer).read_text()
    installs = r"(pip install|\$\(UV_PIP\))( --system --no-cache --compile-bytecode)?"
    assert re.search(rf"{installs} --require-hashes (--no-deps )?-r \S*requirements/{lock}", text)
    # unlocked only: the bench's optional peers environment (its own venv, never the project's)
    assert not re.search(r"pip install (-q )?-r \S*requirements/(?!bench)\w+\.txt", text)
