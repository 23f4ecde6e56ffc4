"""Closed-loop clients for the tests that change the served model under load: every answer is
kept (when it was sent, its status, which image, its body) for the test to check."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import requests


@dataclass
class Answer:
    sent: float
    done: float
    status: int
    image: int
    body: dict = field(default_factory=dict)
    retry_after: str | None = None


class Load:
    """16 closed-loop clients posting the given images until stopped (at most ``limit`` s).

    Each client waits ``pause`` s between its answer and its next request (a user's think time):
    16 clients without it keep both cores busy for the whole test, starving the other pytest
    worker, while every check here needs answers at each step, not the most answers per second.
    The default is the one at which the longest roll-out test spent least CPU without a longer
    run (docs/testing.md has the measurements).
    """

    def __init__(
        self,
        url: str,
        payloads: list[bytes],
        clients: int = 16,
        limit: float = 240,
        pause: float = 0.4,
    ):
        self.url, self.payloads, self.limit, self.pause = url, payloads, limit, pause
        self.answers: list[Answer] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(i,)) for i in range(clients)]

    def _client(self, worker: int) -> None:
        """Each request an image drawn at random (seeded per client): 16 clients walking the list
        in step would send the same few images for seconds, and a short window of a roll-out
        step would judge those alone."""
        deadline, draw = time.monotonic() + self.limit, random.Random(worker)
        with requests.Session() as http:
            while not self.stop.is_set() and time.monotonic() < deadline:
                k = draw.randrange(len(self.payloads))
                sent = time.monotonic()
                try:
                    resp = http.post(self.url, files={"image": self.payloads[k]}, timeout=30)
                    body, status = resp.json(), resp.status_code
                    retry = resp.headers.get("Retry-After")
                except (requests.RequestException, ValueError):
                    body, status, retry = {}, -1, None
                self.answers.append(Answer(sent, time.monotonic(), status, k, body, retry))
                self.stop.wait(self.pause)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)

    def versions_since(self, t: float) -> Counter:
        return Counter(a.body.get("model", {}).get("version") for a in self.answers if a.sent > t)

    def wait_for(self, predicate, timeout: float = 60, what: str = "") -> float:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.2)
        return time.monotonic()
