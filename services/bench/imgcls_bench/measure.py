"""Measurement primitives: closed-loop load at a given concurrency, latency percentiles, CPU time.

CPU is read from /proc for the *server* process trees (Triton + stubs, gunicorn + workers, Ray),
so the load generator's own CPU is reported separately and kept out of "CPU s per image".
"""

from __future__ import annotations

import os
import queue
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

_TICKS = os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(roots: list[int]) -> float:
    """user+system CPU seconds of the given processes and all their live descendants.

    A process tree, not a process group: Ray's raylet and workers start sessions of their own.
    """
    stats: dict[int, tuple[int, float]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # after the command name: state ppid pgrp session tty tpgid flags minflt cminflt
        # majflt cmajflt utime stime ...
        stats[int(stat.parent.name)] = (
            int(fields[1]),
            (int(fields[11]) + int(fields[12])) / _TICKS,
        )
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, todo, seen = 0.0, list(roots), set()
    while todo:
        pid = todo.pop()
        if pid in seen or pid not in stats:
            continue
        seen.add(pid)
        total += stats[pid][1]
        todo += children.get(pid, [])
    return total


@dataclass
class Row:
    name: str
    concurrency: int
    images: int
    seconds: float
    latencies_ms: list[float] = field(repr=False)
    server_cpu_s: float | None = None
    client_cpu_s: float | None = None
    errors: int = 0
    note: str = ""
    counters: dict[str, float] = field(default_factory=dict)  # deltas over the measured window

    @property
    def img_per_s(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0

    def pct(self, q: int) -> float:
        if len(self.latencies_ms) < 2:
            return self.latencies_ms[0] if self.latencies_ms else float("nan")
        return statistics.quantiles(self.latencies_ms, n=100)[q - 1]

    def summary(self, limit: float | None = None) -> dict:
        out = {k: v for k, v in asdict(self).items() if k != "latencies_ms"}
        out.update(
            img_per_s=round(self.img_per_s, 2),
            p50_ms=round(self.pct(50), 1),
            p95_ms=round(self.pct(95), 1),
            p99_ms=round(self.pct(99), 1),
            cpu_s_per_image=round(self.server_cpu_s / self.images, 6)
            if self.server_cpu_s and self.images
            else None,
            ratio_to_limit=round(self.img_per_s / limit, 3) if limit else None,
        )
        return out


def closed_loop(
    name: str,
    make_worker: Callable[[], Callable[[int], int]],
    concurrency: int,
    seconds: float,
    warmup: float = 1.0,
    server_pids: list[int] | None = None,
    note: str = "",
    counters: Callable[[], dict[str, float]] | None = None,
) -> Row:
    """``concurrency`` threads each call ``worker(i) -> images`` back to back for ``seconds``.

    Each thread builds its own worker (its own client: tritonclient is not thread-safe).
    ``counters()`` (e.g. Triton's metrics) is read when the measured window opens and closes;
    the row keeps the differences.
    """
    latencies: list[float] = []
    counts = [0] * concurrency
    errors = [0] * concurrency
    start_evt = threading.Event()
    measuring = threading.Event()
    stop_at = [0.0]

    def run(slot: int) -> None:
        worker = make_worker()
        start_evt.wait()
        i = slot
        while time.monotonic() < stop_at[0]:
            t0 = time.perf_counter()
            try:
                n = worker(i)
            except Exception:
                n = -1
            dt = (time.perf_counter() - t0) * 1000
            if measuring.is_set():
                if n < 0:
                    errors[slot] += 1
                else:
                    counts[slot] += n
                    latencies.append(dt)
            i += concurrency

    threads = [threading.Thread(target=run, args=(s,), daemon=True) for s in range(concurrency)]
    for t in threads:
        t.start()
    stop_at[0] = time.monotonic() + warmup + seconds
    start_evt.set()
    time.sleep(warmup)
    before = counters() if counters else {}
    cpu0 = tree_cpu_seconds(server_pids) if server_pids else None
    client0 = time.process_time()
    t0 = time.monotonic()
    measuring.set()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    after = counters() if counters else {}
    return Row(
        name=name,
        concurrency=concurrency,
        images=sum(counts),
        seconds=elapsed,
        latencies_ms=latencies,
        server_cpu_s=(tree_cpu_seconds(server_pids) - cpu0) if server_pids else None,
        client_cpu_s=time.process_time() - client0,
        errors=sum(errors),
        note=note,
        counters={k: after[k] - before.get(k, 0.0) for k in after},
    )


def open_loop(
    name: str,
    make_worker: Callable[[], Callable[[int], int]],
    rate: float,
    seconds: float,
    server_pids: list[int] | None = None,
    senders: int = 64,
    seed: int = 0,
) -> Row:
    """Requests arrive at ``rate`` per second (Poisson) whether or not earlier ones have been
    answered — the traffic of many independent users, where a closed loop lets a slow server
    slow its own load down. Latency runs from each request's *scheduled* arrival, so a request
    that waited for a free sender (the server falling behind) counts that wait too (no
    coordinated omission). ``concurrency`` in the row holds the offered rate.
    """
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1 / rate, size=int(rate * seconds * 1.5) + 8))
    arrivals = arrivals[arrivals < seconds]
    pending: queue.SimpleQueue[float | None] = queue.SimpleQueue()
    latencies: list[float] = []
    counts, errors = [0], [0]
    lock = threading.Lock()
    start = [0.0]

    def run() -> None:
        worker = make_worker()
        while (at := pending.get()) is not None:
            delay = start[0] + at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            try:
                n = worker(0)
            except Exception:
                n = -1
            done = (time.monotonic() - start[0] - at) * 1000
            with lock:
                if n < 0:
                    errors[0] += 1
                else:
                    counts[0] += n
                    latencies.append(done)

    threads = [threading.Thread(target=run, daemon=True) for _ in range(senders)]
    for t in threads:
        t.start()
    time.sleep(0.5)  # every sender has built its client
    cpu0 = tree_cpu_seconds(server_pids) if server_pids else None
    start[0] = time.monotonic()
    for at in arrivals:
        pending.put(float(at))
    for _ in threads:
        pending.put(None)
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start[0]
    return Row(
        name=name,
        concurrency=round(rate),
        images=counts[0],
        seconds=elapsed,
        latencies_ms=latencies,
        server_cpu_s=(tree_cpu_seconds(server_pids) - cpu0) if server_pids else None,
        errors=errors[0],
        note=f"open loop, offered {rate:.1f}/s",
    )
