"""Peer: the original project's style — Flask dev server, ``threaded=False``, JSON tensors.

Same preprocessing function and the same Triton model; what differs is the serving pattern
(one request at a time per process, tensors as JSON numbers, a new client per request).

    python -m imgcls_bench.baseline --port 5100 --triton-url 127.0.0.1:8000 --model resnet50v2
"""

from __future__ import annotations

import argparse

import numpy as np
import tritonclient.http as httpclient
from flask import Flask, jsonify, request

from imgcls.preprocessing import load_image


def create_app(triton_url: str, model: str, size: int) -> Flask:
    app = Flask(__name__)

    @app.post("/predict")
    def predict():
        pixels = load_image(request.files["image"].read(), size)[None]
        client = httpclient.InferenceServerClient(triton_url)
        tensor = httpclient.InferInput("image", list(pixels.shape), "UINT8")
        tensor.set_data_from_numpy(pixels, binary_data=False)
        out = httpclient.InferRequestedOutput("probabilities", binary_data=False)
        probs = client.infer(model, [tensor], outputs=[out]).as_numpy("probabilities")[0]
        client.close()
        return jsonify({"class": int(np.argmax(probs)), "probability": float(probs.max())})

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--triton-url", required=True)
    parser.add_argument("--model", default="resnet50v2")
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    create_app(args.triton_url, args.model, args.size).run("127.0.0.1", args.port, threaded=False)


if __name__ == "__main__":
    main()
