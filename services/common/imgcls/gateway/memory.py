"""A gateway that answers from memory, at once: the API with no model behind it.

Two users, one stand-in: the API's unit tests (parsing, errors, responses: ``tests/conftest.py``)
and the bench's "API front alone" row (``imgcls_bench.front_only``: server CPU per image minus
decode is then the front's own path cost). Nothing that claims to test Triton uses it.

Every answer is a deterministic function of the image, so a test can tell which image produced
which result: the probabilities follow each image's mean colour; the drift score is its mean
brightness / 100 (threshold 1: a bright image is unfamiliar); the unknown-class score is 2 minus
the spread of its channel means / 64 (threshold 1: a grey image is of no class it knows).
"""

from __future__ import annotations

import numpy as np

from imgcls.contract import DEFAULT_MODELS

from .client import ModelInfo, Outputs, Route
from .errors import ApiError


class MemoryGateway:
    """Serves ``models`` (by default the project's FP32, INT8 and BF16), version "1" each."""

    def __init__(
        self,
        labels: tuple[str, ...] = ("circle", "square", "triangle"),
        size: tuple[int, int] = (8, 8),
        max_batch_size: int = 4,
        drift_threshold: float | None = 1.0,
        unknown_threshold: float | None = 1.0,
        models: tuple[str, ...] = DEFAULT_MODELS,
    ) -> None:
        self.infos = {
            name: ModelInfo(
                name=name,
                version="1",
                input_name="image",
                input_dtype="UINT8",
                height=size[0],
                width=size[1],
                output_name="probabilities",
                labels=tuple(labels),
                max_batch_size=max_batch_size,
                fetched_at=0.0,
                drift_threshold=drift_threshold,
                unknown_threshold=unknown_threshold,
            )
            for name in models
        }
        self.batches: list[np.ndarray] = []  # what infer() was given, batch by batch
        self.models: list[str] = []  # which model each batch went to
        self.error: ApiError | None = None  # raised by every call while set
        self.record = True  # the bench turns the two lists off: they would grow without end

    def _check(self, model: str) -> ModelInfo:
        if self.error is not None:
            raise self.error
        if model not in self.infos:
            raise ApiError(
                503, "triton_unavailable", f"model {model!r} is not ready", retry_after=2
            )
        return self.infos[model]

    def model_ready(self, model: str) -> bool:
        self._check(model)
        return True

    def model_info(self, model: str, refresh: bool = False) -> ModelInfo:
        return self._check(model)

    def route(self, model: str) -> Route:
        return Route(self._check(model))

    def infer(
        self, images: np.ndarray, model: str, compare: bool = True
    ) -> tuple[Outputs, ModelInfo]:
        info = self._check(model)
        if self.record:
            self.batches.append(images)
            self.models.append(model)
        channels = images.reshape(len(images), -1, 3).mean(axis=1)
        logits = channels[:, : len(info.labels)]
        logits = np.pad(logits, ((0, 0), (0, len(info.labels) - logits.shape[1])))
        exp = np.exp((logits - logits.max(axis=1, keepdims=True)) / 32.0)
        probs = (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)
        drift = (channels.mean(axis=1) / 100).astype(np.float32)
        unknown = (2.0 - np.ptp(channels, axis=1) / 64).astype(np.float32)
        return Outputs(probs, drift if info.drift_threshold is not None else None,
                       unknown if info.unknown_threshold is not None else None), info  # fmt: skip
