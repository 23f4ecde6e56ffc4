"""Peer: a BentoML 1.4 service with adaptive batching, the same ONNX model and ``load_image``.

What users would write instead of Triton + Flask: one service, ``@bentoml.api(batchable=True)``
(BentoML's dispatcher merges concurrent requests), ONNX Runtime in the same process. Runs in
the optional bench environment (``make bench`` creates it):

    BENTO_MODEL=model.onnx BENTO_SIZE=64 python -m bentoml serve imgcls_bench.bento_peer:Classifier --port 5300

``BENTO_THREADS`` sets the runtime's threads (0 = every core), ``BENTO_MAX_BATCH`` the largest
batch, ``BENTO_RUNTIME`` the runtime (``imgcls.runtimes``: onnxruntime, openvino-bf16).
"""

from __future__ import annotations

import os
from pathlib import Path

import bentoml
import numpy as np

from imgcls.preprocessing import load_image
from imgcls.runtimes import open_session

SIZE = int(os.environ.get("BENTO_SIZE", "224"))


@bentoml.service(workers=1, traffic={"timeout": 60, "concurrency": 256})
class Classifier:
    def __init__(self) -> None:
        self.session = open_session(
            os.environ["BENTO_MODEL"],
            os.environ.get("BENTO_RUNTIME", "onnxruntime"),
            int(os.environ.get("BENTO_THREADS", "0")),
        )

    @bentoml.api(
        batchable=True,
        max_batch_size=int(os.environ.get("BENTO_MAX_BATCH", "16")),
        max_latency_ms=10_000,
    )
    def predict(self, image: list[Path]) -> list[dict]:
        batch = np.stack([load_image(Path(p).read_bytes(), SIZE) for p in image])
        probs = self.session.run(None, {"image": batch})[0]
        return [{"class": int(np.argmax(p)), "probability": float(p.max())} for p in probs]
