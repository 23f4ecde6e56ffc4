"""The API's HTTP front with no model behind it: the bench's measure of what the front alone costs.

``create_app()`` exactly as served (gunicorn config, multipart reader, decode, JSON, logs,
metrics), but the Triton gateway is replaced by one that answers from memory at once, so server
CPU per image − decode is the front's own path cost. Only ``make bench`` starts it (row "API
front alone"); it is never a way to serve.
"""

from __future__ import annotations

import os
import time

import numpy as np

from imgcls_api import create_app
from imgcls_api.gateway import ModelInfo, Outputs, Route


class MemoryGateway:
    """Uniform probabilities over three labels for a model of the bench's size."""

    def __init__(self, model: str, size: int) -> None:
        self.info = ModelInfo(model, "1", "image", "UINT8", size, size, "probabilities",
                              ("a", "b", "c"), 32, time.monotonic())  # fmt: skip

    def model_ready(self, model: str) -> bool:
        return True

    def model_info(self, model: str, refresh: bool = False) -> ModelInfo:
        return self.info

    def route(self, model: str) -> Route:
        return Route(self.info)

    def infer(
        self, images: np.ndarray, model: str, compare: bool = True
    ) -> tuple[Outputs, ModelInfo]:
        return Outputs(np.full((len(images), 3), 1 / 3, np.float32)), self.info


def create():
    """The served app with the memory gateway (gunicorn: ``imgcls_bench.front_only:create()``);
    ``BENCH_FRONT_SIZE``, the model's image side, set by the bench."""
    size = os.environ.get("BENCH_FRONT_SIZE", "")
    if not size.isdigit():
        raise SystemExit(f"BENCH_FRONT_SIZE={size!r}: the image side the bench serves (make bench)")
    app = create_app()
    app.extensions["triton"] = MemoryGateway(app.config["SETTINGS"].model_name, int(size))
    return app
