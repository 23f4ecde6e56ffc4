"""Work that must not delay the answer: the shadow and comparison calls to a second version
(``gateway.py``), and the capture store's writes (``capture.py``).

A user's answer never waits for them. At most ``limit`` run at once per worker; beyond that the
work is not done and the caller counts it (``api_mirror_skipped_total``,
``api_capture_failures_total{reason="busy"}``): under overload the statistics thin out instead of
the service slowing down. Under gevent, network work runs in a greenlet (it yields while it
waits) and disk work on the hub's thread pool (a file write would block every greenlet of the
worker); under threads (gthread), both run on a small pool.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from .cooperative import gevent_active

log = logging.getLogger(__name__)


class Background:
    def __init__(self, limit: int, name: str, disk: bool = False) -> None:
        self._slots = threading.BoundedSemaphore(max(limit, 1))
        self._running = 0  # submitted and not finished
        self._name, self._disk = name, disk
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def submit(self, fn: Callable[[], None]) -> bool:
        """Run ``fn`` in the background; False (and nothing run) when ``limit`` are running."""
        if not self._slots.acquire(blocking=False):
            return False
        with self._lock:
            self._running += 1

        work = fn
        if gevent_active() and self._disk:
            import gevent

            # A greenlet waits while a pool thread writes: the slot is taken and released on
            # the hub's own thread.
            def work() -> None:
                gevent.get_hub().threadpool.apply(fn)

        def run() -> None:
            try:
                work()
            except Exception:  # background work must never take a worker down
                log.exception("%s failed", self._name)
            finally:
                with self._lock:
                    self._running -= 1
                self._slots.release()

        if gevent_active():
            import gevent

            gevent.spawn(run)
        else:
            self._executor().submit(run)
        return True

    def idle(self) -> bool:
        """Nothing submitted is still running (a caller that must see every write done)."""
        with self._lock:
            return self._running == 0

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                workers = 1 if self._disk else 4
                self._pool = ThreadPoolExecutor(workers, thread_name_prefix=self._name)
            return self._pool
