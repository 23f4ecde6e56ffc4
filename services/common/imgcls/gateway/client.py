"""The one Triton client of the project: the API's, the batch job's and the bench's.

- Which version answers comes from the config Triton has loaded: the ``imgcls.*`` parameters the
  lifecycle commands write (``imgcls.repository``) name the serving version, and a candidate that
  answers a share of the requests (canary) or is sent a share of them in the background (shadow).
  Every request is pinned to one version, and its labels are that version's, read from the same
  config and cached by (model, version): versions are never rewritten, so the cache cannot go
  stale and an answer's labels always belong to the version it names.
- When a pinned version has just been unloaded (promote, rollback), the request re-reads the
  routing once and goes where it now points: the user sees no error. The routing is re-read at
  least every ``model_info_ttl_s`` (a new canary share reaches every worker within it).
- A model repository this project did not write (no ``imgcls.*`` parameters) is served as before:
  Triton's latest version, labels through the classification extension over its labels file,
  re-read when a response names a new version.
- Candidates are compared with the serving version on live traffic (``api_candidate_comparisons
  _total``): a canary answer is also asked of the serving version, a shadowed request of the
  candidate, in the background (``background.py``), never delaying the user's answer.
- Tensors travel with the binary data extension, not as JSON numbers. Failures are classified by
  Triton's HTTP status (message text only when there is none): unreachable or not ready → 503 with
  Retry-After, time-outs → 504, anything else Triton refuses → 502; never a hang, never a 500.
- ``tritonclient.http`` (geventhttpclient) is greenlet-safe but not thread-safe: under gevent one
  pooled client serves the process; under threads each thread has its own.
- Concurrent requests of one worker share Triton calls (``batching.Batcher``, ``BATCH_SLOTS``),
  per model *version*.
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from imgcls.contract import DRIFT_NAME, UNKNOWN_NAME
from imgcls.model_records import Lifecycle
from imgcls.triton_config import config_parameters, drift_from_parameters, labels_from_parameters

from .background import Background
from .batching import Batcher
from .cooperative import gevent_active
from .errors import ApiError
from .metrics import (
    COMPARISONS,
    MIRROR_SKIPPED,
    MODEL_ERRORS,
    MODEL_IMAGES,
    MODEL_LATENCY,
    MODEL_REQUESTS,
    MODEL_UNFAMILIAR,
    MODEL_UNKNOWN,
    TRITON_LATENCY,
)
from .settings import GatewaySettings

_TIMEOUT_ERRORS: tuple[type[BaseException], ...] = (socket.timeout, TimeoutError)
try:  # geventhttpclient raises gevent's Timeout on network_timeout
    from gevent import Timeout as _GeventTimeout

    _TIMEOUT_ERRORS = (*_TIMEOUT_ERRORS, _GeventTimeout)
except ImportError:  # pragma: no cover
    pass


@dataclass(frozen=True)
class Disagreement:
    """One input on which the serving version and the candidate named different classes."""

    model: str
    labels: tuple[str, ...]  # the classes a person may choose from: both versions' labels
    serving_version: str
    serving_label: str
    candidate_version: str
    candidate_label: str
    pixels: np.ndarray  # H×W×3: what both versions saw


@dataclass(frozen=True)
class ModelInfo:
    """One version of a model, as the API calls it."""

    name: str
    version: str
    input_name: str
    input_dtype: str
    height: int
    width: int
    output_name: str
    labels: tuple[str, ...]
    max_batch_size: int
    fetched_at: float
    pinned: bool = True  # False: ask Triton for its latest version (a repository not ours)
    drift_threshold: float | None = None  # the version answers DRIFT_NAME too: above, unfamiliar
    unknown_threshold: float | None = None  # it answers UNKNOWN_NAME: above, no class it knows

    @property
    def size(self) -> tuple[int, int]:
        return self.height, self.width


@dataclass(frozen=True)
class Outputs:
    """What one version answered for a batch, row by row (the batcher slices it per request)."""

    probabilities: np.ndarray  # N × classes
    drift: np.ndarray | None = None  # N drift scores, where the version has the output
    unknown: np.ndarray | None = None  # N unknown-class scores, where it has that output

    def __len__(self) -> int:
        return len(self.probabilities)

    def __getitem__(self, rows: slice) -> Outputs:
        drift = None if self.drift is None else self.drift[rows]
        unknown = None if self.unknown is None else self.unknown[rows]
        return Outputs(self.probabilities[rows], drift, unknown)

    @staticmethod
    def concatenate(parts: list[Outputs]) -> Outputs:
        if len(parts) == 1:
            return parts[0]

        def joined(scores: list[np.ndarray | None]) -> np.ndarray | None:
            return None if any(s is None for s in scores) else np.concatenate(scores)

        return Outputs(np.concatenate([p.probabilities for p in parts]),
                       joined([p.drift for p in parts]), joined([p.unknown for p in parts]))  # fmt: skip


@dataclass(frozen=True)
class Route:
    """What the model's loaded config says: who serves, and the candidate with its share."""

    serving: ModelInfo
    candidate: ModelInfo | None = None
    mode: str = ""  # canary | shadow
    percent: float = 0.0
    fetched_at: float = 0.0


class VersionGone(ApiError):
    """The pinned version is no longer loaded (promoted away or rolled back): route again."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(503, "triton_unavailable", message, retry_after=retry_after)


def compare_top1(
    serving_labels: tuple[str, ...],
    candidate_labels: tuple[str, ...],
    serving_probs: np.ndarray,
    candidate_probs: np.ndarray,
) -> Counter:
    """Per image: ``agree`` (same top-1 label), ``disagree``, or ``new_label`` (the candidate's
    top-1 is a class the serving version does not have, so it could not have agreed). Labels are
    compared by name: a class added or reordered does not count as a disagreement by itself."""
    known = set(serving_labels)
    outcomes: Counter = Counter()
    for s, c in zip(serving_probs.argmax(axis=1), candidate_probs.argmax(axis=1), strict=True):
        theirs, ours = serving_labels[int(s)], candidate_labels[int(c)]
        outcomes[
            "agree" if ours == theirs else "new_label" if ours not in known else "disagree"
        ] += 1
    return outcomes


class TritonGateway:
    """Thread-safe access to the models the API may use on one Triton server.

    Every method takes the model name; ``MODEL_VERSION`` pins the version of the default model
    (``MODEL_NAME``): then there is no canary or shadow for it.
    """

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self._local = threading.local()
        self._shared: httpclient.InferenceServerClient | None = None  # under gevent
        self._lock = threading.RLock()  # _translate may forget a route while one is read
        self._routes: dict[str, Route] = {}
        self._infos: dict[tuple[str, str], ModelInfo] = {}  # (model, version): never changes
        self._rng = random.Random()
        self._mirror = Background(settings.mirror_max_pending, "comparison call")
        slots = settings.batch_slots
        self._batcher = Batcher(self._send, self._batch_limit, slots) if slots > 0 else None
        # called with each input the serving version and a candidate disagree on (the capture
        # store keeps them to be labelled: create_app sets it when CAPTURE_DIR is on)
        self.on_disagreement: Callable[[Disagreement], None] | None = None

    def _pinned_version(self, model: str) -> str:
        return self.settings.model_version if model == self.settings.model_name else ""

    # -- clients ---------------------------------------------------------------------------
    def _client(self) -> httpclient.InferenceServerClient:
        if gevent_active():
            if self._shared is None:
                self._shared = self._new_client(concurrency=_SHARED_CONNECTIONS)
            return self._shared
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self._new_client()
        return client

    def _new_client(self, concurrency: int = 1) -> httpclient.InferenceServerClient:
        return httpclient.InferenceServerClient(
            self.settings.triton_url,
            concurrency=concurrency,
            connection_timeout=self.settings.connect_timeout_s,
            network_timeout=self.settings.triton_timeout_s,
        )

    def _drop_client(self) -> None:
        """Forget the client after a network failure so the next call reconnects.

        The shared client is replaced, not closed: other greenlets may still be using it, and it
        closes its connections when the last of them lets go of it.
        """
        if gevent_active():
            self._shared = None
            return
        client = getattr(self._local, "client", None)
        self._local.client = None
        if client is not None:
            with contextlib.suppress(Exception):  # closing a broken client must not raise
                client.close()

    def _call(self, model: str, fn, version: str = ""):
        """Run one client call about ``model``, translating failures into API errors."""
        try:
            return fn(self._client())
        except InferenceServerException as exc:
            raise self._translate(exc, model, version) from exc
        except _TIMEOUT_ERRORS as exc:
            self._drop_client()
            raise ApiError(
                504,
                "triton_timeout",
                f"Triton did not answer within {self.settings.triton_timeout_s:g}s",
            ) from exc
        except (OSError, ConnectionError) as exc:
            self._drop_client()
            raise self._unavailable(f"Triton is unreachable at {self.settings.triton_url}") from exc

    def _unavailable(self, message: str) -> ApiError:
        return ApiError(503, "triton_unavailable", message, retry_after=self.settings.retry_after_s)

    def _translate(self, exc: InferenceServerException, model: str, version: str) -> ApiError:
        """Triton's HTTP status decides; the message only when it carries none."""
        text = str(exc.message() or exc)
        kind = failure_kind(_status(exc), text)
        if f"output '{DRIFT_NAME}'" in text:
            # The config no longer declares the drift output (a version without one was loaded
            # beside this one): this routing is stale. Route again: the new one does not ask.
            return VersionGone(f"model {model!r} changed its outputs: {text}",
                               self.settings.retry_after_s)  # fmt: skip
        if kind == "unavailable":
            if version and "version" in text.lower():
                return VersionGone(
                    f"model {model!r} version {version} is not loaded: {text}",
                    self.settings.retry_after_s,
                )
            with self._lock:
                self._routes.pop(model, None)
            return self._unavailable(f"model {model!r} is not ready: {text}")
        if kind == "timeout":
            return ApiError(504, "triton_timeout", text)
        return ApiError(502, "triton_error", f"Triton refused the request: {text}")

    # -- health ----------------------------------------------------------------------------
    def model_ready(self, model: str) -> bool:
        version = self._pinned_version(model)
        return bool(self._call(model, lambda c: c.is_model_ready(model, version)))

    # -- routing ---------------------------------------------------------------------------
    def model_info(self, model: str, refresh: bool = False) -> ModelInfo:
        """The serving version of ``model`` (what an answer without a canary comes from)."""
        return self.route(model, newer_than=time.monotonic() if refresh else None).serving

    def route(self, model: str, newer_than: float | None = None) -> Route:
        """The model's routing, re-read when older than the TTL or than ``newer_than``."""
        threshold = time.monotonic() - self.settings.model_info_ttl_s
        if newer_than is not None:
            threshold = max(threshold, newer_than)
        route = self._routes.get(model)
        if route is None or route.fetched_at <= threshold:
            with self._lock:  # one re-read for all the requests that found it stale
                route = self._routes.get(model)
                if route is None or route.fetched_at <= threshold:
                    route = self._routes[model] = self._fetch_route(model)
        return route

    def _fetch_route(self, model: str) -> Route:
        fetched = time.monotonic()
        config = self._call(model, lambda c: c.get_model_config(model))
        params = config_parameters(config)
        state, labels = Lifecycle.from_parameters(params), labels_from_parameters(params)
        drift = drift_from_parameters(params)
        unknown = drift_from_parameters(params, UNKNOWN_NAME)
        pinned = self._pinned_version(model)

        def remember(version: int) -> ModelInfo:
            info = _info_from_config(config, str(version), labels[version], fetched, pinned=True,
                                     drift_threshold=drift.get(version),
                                     unknown_threshold=unknown.get(version))  # fmt: skip
            self._infos[(info.name, info.version)] = info
            return info

        if pinned.isdigit() and int(pinned) in labels:
            return Route(remember(int(pinned)), None)
        if pinned or state is None or state.serving not in labels:
            return Route(self._probe_labels(model, config, pinned, fetched), fetched_at=fetched)
        candidate = None
        if state.candidate is not None and state.candidate in labels:
            candidate = remember(state.candidate)
        return Route(remember(state.serving), candidate, state.mode, state.percent, fetched)

    def _probe_labels(self, model: str, config: dict, version: str, fetched: float) -> ModelInfo:
        """A repository without our parameters: the latest (or ``MODEL_VERSION``), with labels
        from Triton's classification extension over the model's labels file."""
        meta = self._call(model, lambda c: c.get_model_metadata(model, version), version)
        served = version or max(meta.get("versions", ["1"]), key=int)
        num_classes = int(meta["outputs"][0]["shape"][-1])
        partial = _info_from_config(config, served, (), fetched, pinned=bool(version))
        probe = np.zeros((1, partial.height, partial.width, 3), _NP_TYPES[partial.input_dtype])
        result = self._infer_raw(partial, probe, class_count=num_classes)
        labels = [""] * num_classes
        for entry in result.as_numpy(partial.output_name).reshape(-1)[:num_classes]:
            _score, index, *label = entry.decode().split(":", 2)
            labels[int(index)] = label[0] if label else index
        info = replace(partial, labels=tuple(labels))
        self._infos[(info.name, info.version)] = info
        return info

    # -- inference -------------------------------------------------------------------------
    def infer(
        self, images: np.ndarray, model: str, compare: bool = True
    ) -> tuple[Outputs, ModelInfo]:
        """Probabilities (and drift scores) for a uint8 batch ``N×H×W×3`` already letterboxed
        to the model size, and the version that answered (its labels with it); all of the batch
        goes to one version. ``compare=False``: not a user's images (an explanation's masked
        copies), so never sent to a shadow candidate nor counted in its agreement."""
        route = self.route(model)
        for attempt in range(len(_REROUTE_WAITS) + 1):
            info, role = self._choose(route)
            started = time.perf_counter()
            try:
                outputs, info = self._submit(info, images)
            except VersionGone:
                if attempt == len(_REROUTE_WAITS):
                    raise
                time.sleep(_REROUTE_WAITS[attempt])  # gevent's, under gevent
                route = self.route(model, newer_than=route.fetched_at)
                continue
            except ApiError as exc:
                _observe_error(info, role, exc)
                raise
            observe_answer(info, role, started, outputs)
            if compare:
                self._compare(route, role, images, outputs.probabilities, info)
            return outputs, info
        raise AssertionError("unreachable")  # pragma: no cover

    def _choose(self, route: Route) -> tuple[ModelInfo, str]:
        if route.candidate and route.mode == "canary" and self._rng.random() * 100 < route.percent:
            return route.candidate, "canary"
        return route.serving, "serving"

    def _submit(self, info: ModelInfo, images: np.ndarray) -> tuple[Outputs, ModelInfo]:
        key = (info.name, info.version, info.pinned, *images.shape[1:])
        if self._batcher is None:
            return self._send(key, images)
        return self._batcher.submit(key, images)

    def _batch_limit(self, key: tuple) -> int:
        """Images per call: the version's ``max_batch_size`` (no network call: the batcher's
        lock is held, and the caller read the routing already)."""
        info = self._infos.get((key[0], key[1]))
        return info.max_batch_size if info else 1

    def _send(self, key: tuple, images: np.ndarray) -> tuple[Outputs, ModelInfo]:
        """One or more Triton calls (``max_batch_size`` images each) for one version."""
        info = self._infos[(key[0], key[1])]
        parts = []
        for start in range(0, len(images), info.max_batch_size):
            chunk = np.ascontiguousarray(images[start : start + info.max_batch_size])
            result = self._infer_raw(info, chunk.astype(_NP_TYPES[info.input_dtype], copy=False))
            served = str(result.get_response().get("model_version", info.version))
            if served != info.version:
                if info.pinned:
                    raise ApiError(502, "triton_error", f"asked for version {info.version}, "
                                   f"Triton answered with {served}")  # fmt: skip
                # Not our repository: a new latest version went live; re-read its labels.
                info = self.route(info.name, newer_than=info.fetched_at).serving
                if (chunk.shape[1], chunk.shape[2]) != info.size:
                    raise self._unavailable("the model changed during the request; retry")
            parts.append(Outputs(result.as_numpy(info.output_name),
                                 _score(result, DRIFT_NAME, info.drift_threshold),
                                 _score(result, UNKNOWN_NAME, info.unknown_threshold)))  # fmt: skip
        return Outputs.concatenate(parts), info

    def _infer_raw(self, info: ModelInfo, batch: np.ndarray, class_count: int = 0):
        tensor = httpclient.InferInput(info.input_name, list(batch.shape), info.input_dtype)
        tensor.set_data_from_numpy(batch, binary_data=True)
        outputs = [httpclient.InferRequestedOutput(
            info.output_name, binary_data=True, class_count=class_count
        )]  # fmt: skip
        if info.drift_threshold is not None and not class_count:
            outputs.append(httpclient.InferRequestedOutput(DRIFT_NAME, binary_data=True))
        if info.unknown_threshold is not None and not class_count:
            outputs.append(httpclient.InferRequestedOutput(UNKNOWN_NAME, binary_data=True))
        version = info.version if info.pinned else ""
        with TRITON_LATENCY.time():
            return self._call(
                info.name,
                lambda c: c.infer(info.name, [tensor], model_version=version, outputs=outputs),
                version,
            )

    # -- live comparison of the candidate ------------------------------------------------------
    def _compare(
        self, route: Route, role: str, images: np.ndarray, probs: np.ndarray, info: ModelInfo
    ) -> None:
        """Ask the other version the same question in the background and count agreement."""
        if route.candidate is None:
            return
        if role == "canary":
            other, other_role = route.serving, "reference"
        elif route.mode == "shadow" and self._rng.random() * 100 < route.percent:
            other, other_role = route.candidate, "shadow"
        else:
            return

        def call() -> None:
            started = time.perf_counter()
            try:
                other_outputs, answered = self._submit(other, images)
                other_probs = other_outputs.probabilities
            except ApiError as exc:
                MIRROR_SKIPPED.labels(info.name, "failed").inc()
                if not isinstance(exc, VersionGone):
                    _observe_error(other, other_role, exc)
                return
            observe_answer(answered, other_role, started, other_outputs)
            pairs = [(info, probs), (answered, other_probs)]
            (s_info, s_probs), (c_info, c_probs) = pairs if role == "serving" else pairs[::-1]
            outcomes = compare_top1(s_info.labels, c_info.labels, s_probs, c_probs)
            for outcome, count in outcomes.items():
                COMPARISONS.labels(info.name, s_info.version, c_info.version, outcome).inc(count)
            if self.on_disagreement is not None:
                self._disagreements(s_info, c_info, s_probs, c_probs, images)

        if not self._mirror.submit(call):
            MIRROR_SKIPPED.labels(info.name, "busy").inc()

    def _disagreements(self, s_info, c_info, s_probs, c_probs, images: np.ndarray) -> None:
        labels = tuple(dict.fromkeys((*s_info.labels, *c_info.labels)))
        for row, (s, c) in enumerate(zip(s_probs.argmax(1), c_probs.argmax(1), strict=True)):
            said, says = s_info.labels[int(s)], c_info.labels[int(c)]
            if said != says:
                self.on_disagreement(Disagreement(
                    s_info.name, labels, s_info.version, said, c_info.version, says, images[row]
                ))  # fmt: skip


def failure_kind(status: int | None, text: str) -> str:
    """``unavailable`` | ``timeout`` | ``error`` for a Triton failure: by HTTP status when there
    is one (404 unknown model/version, 503 not ready), else by the message's words."""
    if status is not None:
        if status in (404, 503):
            return "unavailable"
        if status in (408, 504):
            return "timeout"
        return "error"
    lowered = text.lower()
    if any(s in lowered for s in ("unknown model", "not ready", "unavailable", "not found")):
        return "unavailable"
    if "timeout" in lowered or "deadline" in lowered:
        return "timeout"
    return "error"


def _status(exc: InferenceServerException) -> int | None:
    try:
        return int(exc.status())
    except (TypeError, ValueError):
        return None


def observe_answer(info: ModelInfo, role: str, started: float, outputs: Outputs) -> None:
    """A version's answer, in whatever role: what the roll-out's live guards read."""
    MODEL_REQUESTS.labels(info.name, info.version, role).inc()
    MODEL_LATENCY.labels(info.name, info.version, role).observe(time.perf_counter() - started)
    if outputs.drift is not None and info.drift_threshold is not None:
        MODEL_IMAGES.labels(info.name, info.version, role).inc(len(outputs.drift))
        unfamiliar = int((outputs.drift > info.drift_threshold).sum())
        MODEL_UNFAMILIAR.labels(info.name, info.version, role).inc(unfamiliar)
    if outputs.unknown is not None and info.unknown_threshold is not None:
        unknown = int((outputs.unknown > info.unknown_threshold).sum())
        MODEL_UNKNOWN.labels(info.name, info.version, role).inc(unknown)


def _observe_error(info: ModelInfo, role: str, exc: ApiError) -> None:
    kind = {504: "timeout", 503: "unavailable"}.get(exc.status, "error")
    MODEL_ERRORS.labels(info.name, info.version, role, kind).inc()


def _info_from_config(
    config: dict,
    version: str,
    labels: tuple[str, ...],
    fetched: float,
    pinned: bool,
    drift_threshold: float | None = None,
    unknown_threshold: float | None = None,
) -> ModelInfo:
    (inp,) = config["input"]
    outputs = {o["name"]: o for o in config["output"]}
    has_drift = DRIFT_NAME in outputs and drift_threshold is not None
    has_unknown = UNKNOWN_NAME in outputs and unknown_threshold is not None
    (out,) = [o for name, o in outputs.items() if name not in (DRIFT_NAME, UNKNOWN_NAME)]
    dims = [int(d) for d in inp["dims"]]
    if len(dims) != 3 or dims[-1] != 3:
        raise ApiError(502, "unsupported_model", f"model input shape {dims} is not H×W×3")
    return ModelInfo(
        name=config["name"],
        version=version,
        input_name=inp["name"],
        input_dtype=inp["data_type"].removeprefix("TYPE_"),
        height=dims[0],
        width=dims[1],
        output_name=out["name"],
        labels=labels,
        max_batch_size=int(config.get("max_batch_size", 0)) or 1,
        fetched_at=fetched,
        pinned=pinned,
        drift_threshold=drift_threshold if has_drift else None,
        unknown_threshold=unknown_threshold if has_unknown else None,
    )


def _score(result, name: str, threshold: float | None) -> np.ndarray | None:
    """A score output (N×1) as N values, where the version has it."""
    return None if threshold is None else result.as_numpy(name).reshape(-1)


# A version that is not ready (just unloaded, or swapped while Triton reloads its config): route
# again at once, then after these pauses; a reload on a busy machine can take a moment, and a
# user should not see it (≤ 0.75 s in all, then the 503 is real).
_REROUTE_WAITS = (0.0, 0.05, 0.2, 0.5)
_SHARED_CONNECTIONS = 16  # per gevent worker: calls in flight at once (batching keeps it few)
_NP_TYPES = {"UINT8": np.uint8, "FP32": np.float32, "FP16": np.float16}
