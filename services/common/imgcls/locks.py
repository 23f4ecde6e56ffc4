"""One advisory lock helper for every writer that must not overlap another process: the model
repository's publish and lifecycle commands, the API's capture store, the tests' shared builds."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the ``with`` block.

    The kernel drops the lock when its holder dies, so a killed process never leaves a stale
    lock behind (unlike a lock *file* whose existence is the lock)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
