"""Adaptive batching inside one API worker: concurrent requests share one Triton call.

Why: every Triton call costs the same fixed CPU (HTTP client, Triton's front-end, the backend's
per-request work) whatever its size, and ONNX Runtime spends far less per image on a batch of 8
than on single images. Triton's dynamic batcher only merges requests that are queued at the same
instant; with ``max_queue_delay = 0`` (no added latency) that is rarely many. Here the requests
that arrive while a call is in flight wait for it to end and then leave together, so a lone request
goes out at once (no added latency) and batches grow with the load, as BentoML's adaptive batching
and Ray Serve's ``@serve.batch`` do.

With several slots (calls in flight at once, one per Triton instance), a second call starts only
when it can carry at least as many images as the smallest call already in flight: calls stay
balanced, so a trickle of single requests does not take a Triton instance for a batch of one
while a batch is forming (ONNX Runtime pays per run, not per image), and under light load a lone
request still leaves at once.

Leader/follower, no extra thread: the request at the head of the queue, when a call slot is free,
sends everything queued (its own images first) on its own Triton client and hands every waiter
its slice; a thread never waits on a call that does not carry its own request.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

T = TypeVar("T")


@dataclass(eq=False)
class _Pending(Generic[T]):
    images: np.ndarray
    wake: threading.Event = field(default_factory=threading.Event)
    finished: bool = False
    result: tuple[Any, T] | None = None
    error: BaseException | None = None


class Batcher(Generic[T]):
    """Merge concurrent ``submit`` calls with the same key into calls of ``send``.

    ``send(key, images)`` gets the images of whole requests stacked (at most ``max_batch(key)``
    images, unless one request alone has more) and returns ``(outputs, extra)`` with one output
    row per image (anything sliced by rows: an array, ``gateway.Outputs``); each request gets its
    rows and the same ``extra``. An exception from ``send`` reaches every request of that batch. ``slots`` calls per key may be in flight at once.
    """

    def __init__(self, send: Callable[[Hashable, np.ndarray], tuple[Any, T]],
                 max_batch: Callable[[Hashable], int], slots: int = 1) -> None:  # fmt: skip
        if slots < 1:
            raise ValueError("slots must be at least 1")
        self._send, self._max_batch, self._slots = send, max_batch, slots
        self._lock = threading.Lock()
        self._queues: dict[Hashable, deque[_Pending[T]]] = {}
        self._in_flight: dict[Hashable, list[int]] = {}  # images of each call in flight

    def submit(self, key: Hashable, images: np.ndarray) -> tuple[Any, T]:
        """The outputs for ``images`` (N×…) and the ``extra`` of the call that carried them."""
        me: _Pending[T] = _Pending(images)
        with self._lock:
            queue = self._queues.setdefault(key, deque())
            queue.append(me)
            self._wake_head(key)  # the queue may have grown enough for another call
        while True:
            with self._lock:  # every wake.set() happens under this lock: no lost wake-up
                if me.finished:
                    break
                batch = self._claim(key, me)
                if batch is None:
                    me.wake.clear()
            if batch is None:
                me.wake.wait()
            else:
                self._run(key, batch)
        if me.error is not None:
            raise me.error
        assert me.result is not None
        return me.result

    def _claim(self, key: Hashable, me: _Pending[T]) -> list[_Pending[T]] | None:
        """A batch for ``me`` to send, if it heads the queue and a slot is free (lock held)."""
        queue = self._queues[key]
        if queue[0] is not me or not self._may_start(key):
            return None
        limit, batch = self._max_batch(key), [queue.popleft()]
        count = len(me.images)
        while queue and count + len(queue[0].images) <= limit:
            count += len(queue[0].images)
            batch.append(queue.popleft())
        self._in_flight.setdefault(key, []).append(count)
        self._wake_head(key)  # another slot may be free for what is left
        return batch

    def _may_start(self, key: Hashable) -> bool:
        """A slot is free and, beside calls in flight, the queue holds as many images as the
        smallest of them (or a full batch) (lock held)."""
        flying = self._in_flight.get(key, [])
        if len(flying) >= self._slots:
            return False
        if not flying:
            return True
        need, queued = min(min(flying), self._max_batch(key)), 0
        for pending in self._queues[key]:
            queued += len(pending.images)
            if queued >= need:
                return True
        return False

    def _wake_head(self, key: Hashable) -> None:
        queue = self._queues[key]
        if queue and self._may_start(key):
            queue[0].wake.set()

    def _run(self, key: Hashable, batch: list[_Pending[T]]) -> None:
        try:
            parts = [p.images for p in batch]
            outputs, extra = self._send(key, parts[0] if len(parts) == 1 else np.concatenate(parts))
            start = 0
            for p in batch:
                p.result = (outputs[start : start + len(p.images)], extra)
                start += len(p.images)
        except BaseException as exc:  # every request of the batch learns why
            for p in batch:
                p.error = exc
        with self._lock:
            self._in_flight[key].remove(sum(len(p.images) for p in batch))
            for p in batch:
                p.finished = True
                p.wake.set()
            self._wake_head(key)
