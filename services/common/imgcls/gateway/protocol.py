"""What the API asks of a gateway: the real one (``client.TritonGateway``) and the stand-in that
answers from memory (``memory.MemoryGateway``) both satisfy it."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from .client import ModelInfo, Outputs, Route


class Gateway(Protocol):
    def model_ready(self, model: str) -> bool:
        """Whether ``model`` can answer now (a 503 ``ApiError`` when Triton cannot be reached)."""
        ...

    def model_info(self, model: str, refresh: bool = False) -> ModelInfo:
        """The version a request for ``model`` goes to: its input, labels and thresholds."""
        ...

    def route(self, model: str) -> Route:
        """The serving version and the candidate, if any, with its share (canary, shadow)."""
        ...

    def infer(
        self, images: np.ndarray, model: str, compare: bool = True
    ) -> tuple[Outputs, ModelInfo]:
        """N×H×W×3 uint8 → the outputs of one version, and which; ``compare``: a canary or
        shadow candidate is compared in the background."""
        ...
