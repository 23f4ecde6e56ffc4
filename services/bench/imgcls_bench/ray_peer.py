"""Peer: Ray Serve with the same preprocessing and ONNX Runtime, batching with ``@serve.batch``.

Runs in the optional bench environment (``make bench`` creates it with ray[serve]):

    python -m imgcls_bench.ray_peer --port 5200 --model model.onnx --size 224
"""

from __future__ import annotations

import argparse
import os
import signal
import time

import numpy as np
import ray
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from imgcls.preprocessing import load_image
from imgcls.runtimes import RUNTIMES, open_session


def build(model_path: str, size: int, max_batch: int, replicas: int, threads: int, runtime: str):
    @serve.deployment(num_replicas=replicas, max_ongoing_requests=64)
    class Classifier:
        def __init__(self) -> None:
            self.session = open_session(model_path, runtime, threads)

        @serve.batch(max_batch_size=max_batch, batch_wait_timeout_s=0.002)
        async def infer(self, images: list[np.ndarray]) -> list[np.ndarray]:
            probs = self.session.run(None, {"image": np.stack(images)})[0]
            return list(probs)

        async def __call__(self, request: Request) -> JSONResponse:
            form = await request.form()
            data = await form["image"].read()
            probs = await self.infer(load_image(data, size))
            return JSONResponse({"class": int(np.argmax(probs)), "probability": float(probs.max())})

    return Classifier.bind()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="runtime threads (0: all)")
    parser.add_argument("--runtime", choices=RUNTIMES, default="onnxruntime")
    args = parser.parse_args()
    ray.init(num_cpus=len(os.sched_getaffinity(0)), include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    serve.run(
        build(args.model, args.size, args.max_batch, args.replicas, args.threads, args.runtime),
        route_prefix="/predict",
    )
    print("ray peer ready", flush=True)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    while not stop:
        time.sleep(0.5)
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
