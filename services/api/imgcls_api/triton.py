"""The one Triton client wrapper of the API.

- ``tritonclient.http`` (geventhttpclient) is not thread-safe but is greenlet-safe: in a gevent
  worker (the default) one client with a connection pool serves the whole process; under threads
  each thread gets its own.
- What the model expects (input name/shape/type, output name, labels, batch limit) is read from
  Triton — metadata, config, and one classification request for the label order from the
  model's own ``labels.txt`` — at start-up and again whenever a response carries a new model
  version, or the cached copy is older than ``model_info_ttl_s``.
- Tensors travel with the binary data extension, not as JSON numbers.
- Connection failures become 503 (with Retry-After), time-outs 504: never a hang, never a 500.
- Concurrent requests of one worker share Triton calls (``batching.Batcher``, ``BATCH_SLOTS``).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass, replace

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from .batching import Batcher
from .cooperative import gevent_active
from .errors import ApiError
from .observability import TRITON_LATENCY
from .settings import Settings

_TIMEOUT_ERRORS: tuple[type[BaseException], ...] = (socket.timeout, TimeoutError)
try:  # geventhttpclient raises gevent's Timeout on network_timeout
    from gevent import Timeout as _GeventTimeout

    _TIMEOUT_ERRORS = (*_TIMEOUT_ERRORS, _GeventTimeout)
except ImportError:  # pragma: no cover
    pass


@dataclass(frozen=True)
class ModelInfo:
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

    @property
    def size(self) -> tuple[int, int]:
        return self.height, self.width


class TritonGateway:
    """Thread-safe access to the models the API may use on one Triton server.

    Every method takes the model name; ``MODEL_VERSION`` pins the version of the default model
    (``MODEL_NAME``), the others are served at Triton's latest version.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._local = threading.local()
        self._shared: httpclient.InferenceServerClient | None = None  # under gevent
        self._lock = threading.Lock()
        self._info: dict[str, ModelInfo] = {}
        slots = settings.batch_slots
        self._batcher = Batcher(self._send, self._batch_limit, slots) if slots > 0 else None

    def _version(self, model: str) -> str:
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

    def _call(self, model: str, fn):
        """Run one client call about ``model``, translating failures into API errors."""
        try:
            return fn(self._client())
        except InferenceServerException as exc:
            raise self._translate(exc, model) from exc
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

    def _translate(self, exc: InferenceServerException, model: str) -> ApiError:
        text = str(exc.message() or exc)
        lowered = text.lower()
        if any(s in lowered for s in ("unknown model", "not ready", "unavailable", "not found")):
            with self._lock:
                self._info.pop(model, None)
            return self._unavailable(f"model {model!r} is not ready: {text}")
        if "timeout" in lowered or "deadline" in lowered:
            return ApiError(504, "triton_timeout", text)
        return ApiError(502, "triton_error", f"Triton refused the request: {text}")

    # -- health ----------------------------------------------------------------------------
    def model_ready(self, model: str) -> bool:
        version = self._version(model)
        return bool(self._call(model, lambda c: c.is_model_ready(model, version)))

    # -- model information -----------------------------------------------------------------
    def model_info(self, model: str, refresh: bool = False) -> ModelInfo:
        info = self._info.get(model)
        ttl = self.settings.model_info_ttl_s
        if refresh or info is None or time.monotonic() - info.fetched_at > ttl:
            with self._lock:
                current = self._info.get(model)
                if refresh or current is info:  # no other thread refreshed it meanwhile
                    current = self._fetch_info(model)
                    self._info[model] = current
                info = current
        return info

    def _fetch_info(self, model: str) -> ModelInfo:
        version = self._version(model)
        meta = self._call(model, lambda c: c.get_model_metadata(model, version))
        config = self._call(model, lambda c: c.get_model_config(model, version))
        (inp,), (out,) = meta["inputs"], meta["outputs"]
        shape = [int(d) for d in inp["shape"]]
        if len(shape) != 4 or shape[-1] != 3:
            raise ApiError(502, "unsupported_model", f"model input shape {shape} is not N×H×W×3")
        partial = ModelInfo(
            name=meta["name"],
            version=version or max(meta.get("versions", ["1"]), key=int),
            input_name=inp["name"],
            input_dtype=inp["datatype"],
            height=shape[1],
            width=shape[2],
            output_name=out["name"],
            labels=(),
            max_batch_size=int(config.get("max_batch_size", 0)) or 1,
            fetched_at=time.monotonic(),
        )
        num_classes = int(out["shape"][-1])
        return replace(partial, labels=self._labels(partial, num_classes))

    def _labels(self, info: ModelInfo, num_classes: int) -> tuple[str, ...]:
        """Label order from the model's labels file, via Triton's classification extension."""
        probe = np.zeros((1, info.height, info.width, 3), dtype=_NP_TYPES[info.input_dtype])
        result = self._infer_raw(info, probe, class_count=num_classes)
        labels = [""] * num_classes
        for entry in result.as_numpy(info.output_name).reshape(-1)[:num_classes]:
            _score, index, *label = entry.decode().split(":", 2)
            labels[int(index)] = label[0] if label else index
        return tuple(labels)

    # -- inference -------------------------------------------------------------------------
    def _infer_raw(self, info: ModelInfo, batch: np.ndarray, class_count: int = 0):
        tensor = httpclient.InferInput(info.input_name, list(batch.shape), info.input_dtype)
        tensor.set_data_from_numpy(batch, binary_data=True)
        output = httpclient.InferRequestedOutput(
            info.output_name, binary_data=True, class_count=class_count
        )
        version = self._version(info.name)
        with TRITON_LATENCY.time():
            return self._call(
                info.name,
                lambda c: c.infer(info.name, [tensor], model_version=version, outputs=[output]),
            )

    def infer(self, images: np.ndarray, model: str) -> tuple[np.ndarray, ModelInfo]:
        """Probabilities for a uint8 batch ``N×H×W×3`` already letterboxed to the model size."""
        if self._batcher is None:
            return self._send((model,), images)
        return self._batcher.submit((model, *images.shape[1:]), images)

    def _batch_limit(self, key: tuple) -> int:
        """Images per call: the model's ``max_batch_size`` (no network call: the batcher's lock
        is held, and ``infer`` callers have read the model's information already)."""
        info = self._info.get(key[0])
        return info.max_batch_size if info else 1

    def _send(self, key: tuple, images: np.ndarray) -> tuple[np.ndarray, ModelInfo]:
        """One or more Triton calls (``max_batch_size`` images each) for the model ``key[0]``."""
        model = key[0]
        info = self.model_info(model)
        parts = []
        for start in range(0, len(images), info.max_batch_size):
            chunk = np.ascontiguousarray(images[start : start + info.max_batch_size])
            result = self._infer_raw(info, chunk.astype(_NP_TYPES[info.input_dtype], copy=False))
            served = str(result.get_response().get("model_version", info.version))
            if served != info.version:
                # A new version went live: re-read shape and labels before answering with them.
                info = self.model_info(model, refresh=True)
                if (chunk.shape[1], chunk.shape[2]) != info.size:
                    raise self._unavailable("the model changed during the request; retry")
            parts.append(result.as_numpy(info.output_name))
        return np.concatenate(parts), info


_SHARED_CONNECTIONS = 16  # per gevent worker: calls in flight at once (batching keeps it few)
_NP_TYPES = {"UINT8": np.uint8, "FP32": np.float32, "FP16": np.float16}
