"""The capture store (opt-in, ``CAPTURE_DIR``): what the model was asked and answered, and what
users said was right, on local disk, for review and the next training run.

    <CAPTURE_DIR>/requests/<key>.json     every answered request: model, version, labels, and per
                                          image its answer, drift and the SHA-256 of the pixels the
                                          model saw (what feedback is checked against)
    <CAPTURE_DIR>/requests/<key>.<i>.png  those pixels, for a sample of requests (CAPTURE_RATE)
    <CAPTURE_DIR>/feedback/<key>-<i>.png  an image a user corrected, and its record (.json, written
                                          last: a record is only ever beside its image)
    <CAPTURE_DIR>/.tmp/                   files being written (renamed into place when whole)

``<key>`` is a digest of the request id: any id a client sends in ``X-Request-ID`` becomes a
plain file name. Nothing about the client (address, key, headers) is stored.

Why files and renames: several gunicorn workers (and pods sharing a volume) write at once with no
coordinator, a restart keeps everything, and a crash mid-write leaves at most a file in ``.tmp/``
(removed at the next start), never a half-written record or image. Writes happen off the request
path (``background.Background``): an answer never waits for the disk, and a full disk stops the
capture (one log line, ``api_capture_failures_total{reason="disk_full"}``), not the predictions.

The store is bounded by ``CAPTURE_MAX_MB``: past it, the oldest requests are deleted (feedback
never is: it is reviewed and moved out by ``model_preparation.tools.harvest``; when feedback alone
fills the store, new feedback is refused with 507). The total is re-measured by a scan whenever a
worker has written a twentieth of the cap since its last scan, so the store may exceed its cap by
that much per worker between scans.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import logging
import os
import random
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from prometheus_client import Counter

from imgcls.gateway.background import Background
from imgcls.gateway.client import Disagreement
from imgcls.locks import exclusive
from imgcls.preprocessing import pixels_sha256

__all__ = ["pixels_sha256"]  # re-exported: feedback checks resent images with it

log = logging.getLogger(__name__)

CAPTURED = Counter(
    "api_captures_total",
    "Capture store writes: record (every answered request), image (the sampled ones), feedback, "
    "tolabel (an input the serving version and a candidate disagree on, or one of no class "
    "the answering version knows)",
    ["kind"],
)
CAPTURE_FAILURES = Counter(
    "api_capture_failures_total",
    "Captures not stored: disk_full, io_error, busy (the writer is behind: skipped)",
    ["reason"],
)
PRUNED = Counter("api_capture_pruned_total", "Request files deleted to keep the store in its cap")

PAUSE_S = 60.0  # after a full disk, how long capture waits before trying again
SCAN_FRACTION = 20  # re-measure the store after writing 1/20 of its cap
TMP_MAX_AGE_S = 600.0  # a file in .tmp/ older than this was left by a crash


class StoreFull(Exception):
    """Feedback alone fills the store (or the disk is full): nothing was written."""


def request_key(request_id: str) -> str:
    return hashlib.sha256(request_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def png_bytes(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8)).save(out, format="PNG")
    return out.getvalue()


@dataclass(frozen=True)
class UnknownInput:
    """One input the answering version said is of no class it knows (its unknown-class score
    above its threshold): a person names its class, perhaps a new one."""

    model: str
    labels: tuple[str, ...]  # the version's classes
    version: str
    label: str  # the nearest class, which it answered
    score: float
    pixels: np.ndarray  # H×W×3: what the version saw


@dataclass(frozen=True)
class Answer:
    """What the store keeps of one answered request."""

    request_id: str
    model: str
    version: str
    labels: tuple[str, ...]
    results: list[dict[str, Any]]  # per image: label, probability, drift (as answered)
    images: np.ndarray  # N×H×W×3: the pixels the model saw


class CaptureStore:
    def __init__(self, root: Path, rate: float, max_mb: float, pending: int = 64) -> None:
        if not 0 <= rate <= 1:
            raise ValueError(f"CAPTURE_RATE={rate:g} must be within 0–1")
        if max_mb <= 0:
            raise ValueError(f"CAPTURE_MAX_MB={max_mb:g} must be above 0")
        self.root, self.rate = root, rate
        self.max_bytes = int(max_mb * 1024 * 1024)
        self.requests, self.feedback, self.tmp = root / "requests", root / "feedback", root / ".tmp"
        self.tolabel = root / "tolabel"  # inputs the serving version and a candidate disagree on
        for path in (self.requests, self.feedback, self.tolabel, self.tmp):
            if not path.is_dir():  # group-writable: harvest (the API's group) files feedback
                path.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(OSError):
                    path.chmod(0o2775)
        self._background = Background(pending, "capture", disk=True)
        self._lock = threading.Lock()
        self._since_scan = self.max_bytes  # scan at the first write
        self._paused_until = 0.0
        self._failing: str | None = None
        self._clear_tmp()

    # -- writing answers ---------------------------------------------------------------------
    def capture(self, answer: Answer) -> None:
        """Store ``answer`` in the background (its images for a ``rate`` sample); never raises."""
        if time.monotonic() < self._paused_until:
            CAPTURE_FAILURES.labels("disk_full").inc()
            return
        sampled = random.random() < self.rate
        if not self._background.submit(lambda: self._write_answer(answer, sampled)):
            CAPTURE_FAILURES.labels("busy").inc()

    def to_label(self, disagreement: Disagreement) -> None:
        """Keep an input two versions disagree on, for a person to label (``harvest list``
        shows these first): the cheapest labels that decide between the two. In the background;
        one file per distinct image."""
        if time.monotonic() < self._paused_until:
            return
        if not self._background.submit(lambda: self._write_disagreement(disagreement)):
            CAPTURE_FAILURES.labels("busy").inc()

    def unknown_to_label(self, u: UnknownInput) -> None:
        """Keep an input of no class the answering version knows, for a person to name
        (``harvest list`` shows these first; a new class needs ``--new-class``)."""
        if time.monotonic() < self._paused_until:
            return
        fields = {"kind": "unknown", "model": u.model, "labels": list(u.labels),
                  "serving": {"version": u.version, "label": u.label},
                  "unknown_score": round(u.score, 6)}  # fmt: skip
        if not self._background.submit(lambda: self._write_tolabel(u.pixels, fields)):
            CAPTURE_FAILURES.labels("busy").inc()

    def _write_disagreement(self, d: Disagreement) -> None:
        self._write_tolabel(d.pixels, {
            "kind": "disagreement", "model": d.model, "labels": list(d.labels),
            "serving": {"version": d.serving_version, "label": d.serving_label},
            "candidate": {"version": d.candidate_version, "label": d.candidate_label}})  # fmt: skip

    def _write_tolabel(self, pixels: np.ndarray, fields: dict[str, Any]) -> None:
        """One file pair per distinct image (a second sighting of it adds nothing)."""
        digest = pixels_sha256(pixels)
        name = digest[:32]
        if (self.tolabel / f"{name}.json").exists():
            return
        entry = {"digest": digest, "at": _now(), **fields, "image": f"{name}.png",
                 "size": list(pixels.shape[:2])}  # fmt: skip
        try:
            written = self._write(self.tolabel / f"{name}.png", png_bytes(pixels))
            written += self._write(self.tolabel / f"{name}.json", json.dumps(entry).encode())
        except OSError as exc:
            self._failed(exc)
            return
        CAPTURED.labels("tolabel").inc()
        self._account(written)

    def idle(self) -> bool:
        """Every answer handed to ``capture`` is written (and the cap applied)."""
        return self._background.idle()

    def _write_answer(self, answer: Answer, sampled: bool) -> None:
        key = request_key(answer.request_id)
        results = []
        try:
            written = 0
            for i, (result, pixels) in enumerate(zip(answer.results, answer.images, strict=True)):
                image = f"{key}.{i}.png" if sampled else None
                if image:
                    written += self._write(self.requests / image, png_bytes(pixels))
                    CAPTURED.labels("image").inc()
                results.append({**result, "image": image, "sha256": pixels_sha256(pixels),
                                "size": list(pixels.shape[:2])})  # fmt: skip
            record = {"request_id": answer.request_id, "at": _now(), "model": answer.model,
                      "version": answer.version, "labels": list(answer.labels),
                      "results": results}  # fmt: skip
            written += self._write(self.requests / f"{key}.json", json.dumps(record).encode())
            CAPTURED.labels("record").inc()
        except OSError as exc:
            self._failed(exc)
            return
        self._recovered()
        self._account(written)

    def _write(self, path: Path, data: bytes, sync: bool = False) -> int:
        """``data`` into ``path``, whole or not at all (written aside, then renamed)."""
        tmp = self.tmp / f"{uuid.uuid4().hex}{path.suffix}"
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                if sync:
                    fh.flush()
                    os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return len(data)

    def _failed(self, exc: OSError) -> None:
        reason = "disk_full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "io_error"
        CAPTURE_FAILURES.labels(reason).inc()
        if reason == "disk_full":
            self._paused_until = time.monotonic() + PAUSE_S
        if self._failing != reason:  # one line when it starts, not one per request
            self._failing = reason
            log.error("capture stopped (%s) at %s: %s; predictions go on, capture retries in "
                      "%.0f s", reason, self.root, exc, PAUSE_S)  # fmt: skip

    def _recovered(self) -> None:
        if self._failing is not None:
            log.warning("capture resumed at %s", self.root)
            self._failing = None

    # -- the cap -----------------------------------------------------------------------------
    def _account(self, written: int) -> None:
        with self._lock:
            self._since_scan += written
            if self._since_scan < self.max_bytes // SCAN_FRACTION:
                return
            self._since_scan = 0
        self.prune()

    def prune(self) -> int:
        """Delete the oldest request (and to-label) files until the store is within its cap;
        how many. Feedback is never deleted."""
        with self._exclusive():
            files = _files(self.requests) + _files(self.tolabel)
            total = sum(size for _, size, _ in files) + self.feedback_bytes()
            removed = 0
            for _, size, path in sorted(files):
                if total <= self.max_bytes:
                    break
                with contextlib.suppress(FileNotFoundError):  # another worker got there first
                    path.unlink()
                    removed += 1
                total -= size
        PRUNED.inc(removed)
        return removed

    def feedback_bytes(self) -> int:
        return sum(size for _, size, _ in _files(self.feedback))

    @contextlib.contextmanager
    def _exclusive(self):
        with exclusive(self.root / ".lock"):
            yield

    def _clear_tmp(self) -> None:
        """Files a crash left half-written (those of running writers are younger)."""
        cutoff = time.time() - TMP_MAX_AGE_S
        for _, _, path in _files(self.tmp):
            with contextlib.suppress(OSError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()

    # -- reading and feedback ----------------------------------------------------------------
    def find(self, request_id: str) -> dict[str, Any] | None:
        """The record of an answered request, or None (never captured, pruned, unreadable)."""
        path = self.requests / f"{request_key(request_id)}.json"
        try:
            record = json.loads(path.read_bytes())
        except (OSError, ValueError):
            return None
        return record if record.get("request_id") == request_id else None

    def captured_image(self, record: dict[str, Any], index: int) -> bytes | None:
        name = record["results"][index].get("image")
        if not name:
            return None
        try:
            return (self.requests / name).read_bytes()
        except OSError:
            return None

    def add_feedback(self, record: dict[str, Any], index: int, label: str, png: bytes) -> bool:
        """Store a correction with its image; True when it replaced an earlier one."""
        if self.feedback_bytes() + len(png) > self.max_bytes:
            raise StoreFull("feedback fills the capture store: harvest it (see README)")
        name = f"{request_key(record['request_id'])}-{index}"
        result = record["results"][index]
        entry = {"request_id": record["request_id"], "index": index, "label": label,
                 "predicted": result.get("label"), "model": record["model"],
                 "version": record["version"], "at": _now(), "image": f"{name}.png",
                 "sha256": result.get("sha256")}  # fmt: skip
        replaced = (self.feedback / f"{name}.json").exists()
        try:
            self._write(self.feedback / f"{name}.png", png, sync=True)
            self._write(self.feedback / f"{name}.json", json.dumps(entry).encode(), sync=True)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StoreFull(f"the disk of the capture store is full: {exc}") from None
            raise
        CAPTURED.labels("feedback").inc()
        return replaced


def _files(directory: Path) -> list[tuple[float, int, Path]]:
    """(mtime, size, path) of the plain files in ``directory``."""
    found = []
    with contextlib.suppress(FileNotFoundError), os.scandir(directory) as entries:
        for entry in entries:
            with contextlib.suppress(FileNotFoundError):
                if entry.is_file(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    found.append((st.st_mtime, st.st_size, Path(entry.path)))
    return found


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
