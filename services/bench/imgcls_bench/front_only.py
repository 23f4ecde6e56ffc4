"""The API's HTTP front with no model behind it: the bench's measure of what the front alone costs.

``create_app()`` exactly as served (gunicorn config, multipart reader, decode, JSON, logs,
metrics), but the Triton gateway is replaced by one that answers from memory at once, so server
CPU per image − decode is the front's own path cost. Only ``make bench`` starts it (row "API
front alone"); it is never a way to serve.
"""

from __future__ import annotations

import os

from imgcls.gateway.memory import MemoryGateway
from imgcls_api import create_app


def create():
    """The served app with the memory gateway (gunicorn: ``imgcls_bench.front_only:create()``);
    ``BENCH_FRONT_SIZE``, the model's image side, set by the bench."""
    size = os.environ.get("BENCH_FRONT_SIZE", "")
    if not size.isdigit():
        raise SystemExit(f"BENCH_FRONT_SIZE={size!r}: the image side the bench serves (make bench)")
    app = create_app()
    gateway = MemoryGateway(size=(int(size), int(size)), max_batch_size=32,
                            models=(app.config["SETTINGS"].model_name,))  # fmt: skip
    gateway.record = False  # it serves for minutes: nothing kept per call
    app.extensions["triton"] = gateway
    return app
