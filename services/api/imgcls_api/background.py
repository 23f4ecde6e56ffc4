"""Work that must not delay the answer: the shadow and comparison calls to a second version.

A user's answer never waits for them. At most ``limit`` run at once per worker; beyond that a
comparison is skipped and counted (``api_mirror_dropped_total``): under overload the candidate's
statistics thin out instead of the service slowing down. Under gevent each runs in a greenlet;
under threads (gthread), on a small pool.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from .cooperative import gevent_active

log = logging.getLogger(__name__)


class Mirror:
    def __init__(self, limit: int) -> None:
        self._slots = threading.BoundedSemaphore(max(limit, 1))
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def submit(self, fn: Callable[[], None]) -> bool:
        """Run ``fn`` in the background; False (and nothing run) when ``limit`` are running."""
        if not self._slots.acquire(blocking=False):
            return False

        def run() -> None:
            try:
                fn()
            except Exception:  # a comparison must never take a worker down
                log.exception("comparison call failed")
            finally:
                self._slots.release()

        if gevent_active():
            import gevent

            gevent.spawn(run)
        else:
            self._executor().submit(run)
        return True

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="mirror")
            return self._pool
