"""Classify every file of a source through Triton, in batches, into rows.

The API's own pieces do the work: ``imgcls.preprocessing.load_image`` decodes (the same pixels
``/predict`` sees) and ``imgcls.gateway.TritonGateway`` calls Triton (the same routing, error
translation and binary tensors), pinned to one version so an archive is labelled by one model.
Files are read and hashed in order on the caller's thread; each batch is decoded and sent on a
pool of ``concurrency`` threads, with at most two batches per thread in flight, so memory does
not grow with the archive.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from itertools import islice

import numpy as np

from imgcls.contract import MAX_IMAGE_PIXELS
from imgcls.gateway.client import ModelInfo, Outputs, TritonGateway
from imgcls.gateway.errors import ApiError
from imgcls.gateway.settings import GatewaySettings
from imgcls.preprocessing import ImageError, load_image

from .sources import Item

RETRIES = 3  # a batch Triton refuses (503, 504) is sent again this often, after a pause


class BatchError(Exception):
    """Triton cannot serve the job (unreachable, the model missing): one line for the user."""


class JobFailed(Exception):
    """Triton stopped answering during the job (after retries): the rows so far are kept."""


@dataclass(frozen=True)
class Job:
    triton_url: str
    model: str
    version: str = ""  # "" = the version serving when the job starts
    concurrency: int = 4
    batch_size: int = 0  # 0 = the model's max_batch_size
    top_k: int = 3
    timeout_s: float = 60.0


def connect(job: Job) -> tuple[TritonGateway, ModelInfo]:
    """A gateway pinned to one version of ``job.model`` (the serving one unless named)."""
    probe = TritonGateway(_settings(job, job.version))
    try:
        version = job.version or probe.route(job.model).serving.version
        gateway = TritonGateway(_settings(job, version))
        info = gateway.route(job.model).serving
    except ApiError as exc:
        raise BatchError(f"Triton at {job.triton_url}, model {job.model}: {exc.message}") from None
    return gateway, info


def _settings(job: Job, version: str) -> GatewaySettings:
    return GatewaySettings(triton_url=job.triton_url, model_name=job.model, model_version=version,
                           batch_slots=0, triton_timeout_s=job.timeout_s,
                           connect_timeout_s=min(5.0, job.timeout_s))  # fmt: skip


def rows_for(items: list[Item], gateway: TritonGateway, info: ModelInfo, job: Job) -> list[dict]:
    """One row per item: its prediction, or the reason it has none."""
    rows: list[dict] = []
    pixels, decoded = [], []
    for item in items:
        if item.error:
            rows.append(_error_row(item, info, item.error))
            continue
        try:
            pixels.append(load_image(item.data, info.size, MAX_IMAGE_PIXELS))
            decoded.append(item)
        except ImageError as exc:
            rows.append(_error_row(item, info, exc.code))
    if decoded:
        outputs, answered = _infer(gateway, np.stack(pixels), job)
        for i, item in enumerate(decoded):
            rows.append(_row(item, answered, outputs, i, job.top_k))
    return rows


def _infer(gateway: TritonGateway, images: np.ndarray, job: Job):
    for attempt in range(RETRIES + 1):
        try:
            return gateway.infer(images, job.model, compare=False)
        except ApiError as exc:
            if exc.status not in (503, 504) or attempt == RETRIES:
                raise JobFailed(f"Triton refused a batch: {exc.message}") from None
            time.sleep(min(2.0**attempt, 10.0))
    raise AssertionError("unreachable")  # pragma: no cover


def _row(item: Item, info: ModelInfo, outputs: Outputs, row: int, k: int) -> dict:
    probs = outputs.probabilities[row]
    order = np.argsort(probs)[::-1][:k]
    top = [{"label": info.labels[i], "probability": round(float(probs[i]), 6)} for i in order]
    drift = _score(outputs.drift, row, info.drift_threshold)
    unknown = _score(outputs.unknown, row, info.unknown_threshold)
    return {"path": item.path, "sha256": item.sha256, "label": top[0]["label"],
            "probability": float(probs[order[0]]), "topk": json.dumps(top), "drift": drift[0],
            "familiar": drift[1], "unknown": unknown[0], "known_class": unknown[1],
            "model": info.name, "version": info.version, "error": None}  # fmt: skip


def _score(scores: np.ndarray | None, i: int, threshold: float | None) -> tuple:
    """(the score, whether it is at most the threshold), or (None, None) without one."""
    if scores is None or threshold is None:
        return None, None
    return float(scores[i]), bool(scores[i] <= threshold)


def _error_row(item: Item, info: ModelInfo, code: str) -> dict:
    return {"path": item.path, "sha256": item.sha256, "label": None, "probability": None,
            "topk": None, "drift": None, "familiar": None, "unknown": None,
            "known_class": None, "model": info.name, "version": info.version,
            "error": code}  # fmt: skip


def batches(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def classify(
    items: Iterable[Item],
    job: Job,
    gateway: TritonGateway,
    info: ModelInfo,
    on_rows: Callable[[list[dict]], None],
) -> None:
    """Every item through ``rows_for`` on a bounded pool; ``on_rows`` gets each batch's rows on
    the caller's thread, in completion order. A ``JobFailed`` stops the job after the batches in
    flight have delivered their rows (so they are kept)."""
    size = min(job.batch_size or info.max_batch_size, info.max_batch_size)
    limit = 2 * job.concurrency
    pending: set[Future] = set()
    failure: JobFailed | None = None
    with ThreadPoolExecutor(job.concurrency, thread_name_prefix="classify") as pool:
        for chunk in batches(items, size):
            pending.add(pool.submit(rows_for, chunk, gateway, info, job))
            if len(pending) >= limit:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                failure = _deliver(done, on_rows) or failure
                if failure:
                    break
        done, _ = wait(pending)
        failure = _deliver(done, on_rows) or failure
    if failure:
        raise failure


def _deliver(done: set[Future], on_rows: Callable[[list[dict]], None]) -> JobFailed | None:
    failure = None
    for future in done:
        try:
            on_rows(future.result())
        except JobFailed as exc:
            failure = exc
    return failure
