"""A Python-based Triton backend named ``onnxruntime``, for hosts without the native one.

The nvidia-pytriton wheel ships tritonserver and the Python backend but not
``libtriton_onnxruntime.so``. Triton loads ``<backend-dir>/onnxruntime/model.py`` for any model
whose config says ``backend: "onnxruntime"``, so the model repository stays byte-identical to
what the official image serves natively. Every request of a dynamic batch is concatenated into
one ONNX Runtime call (``batched.py``), so batching pays off here as it does natively.
"""

import json
import os

import onnxruntime as ort
from batched import execute_batched  # beside this file (batched.py says why)


def _intra_op_threads(config):
    """``intra_op_thread_count`` from the model config, as the native backend reads it; else
    ``ORT_INTRA_OP_THREADS``; else 0 (ONNX Runtime picks: one thread per core)."""
    param = config.get("parameters", {}).get("intra_op_thread_count", {})
    return int(param.get("string_value") or os.environ.get("ORT_INTRA_OP_THREADS", "0"))


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        filename = config.get("default_model_filename") or "model.onnx"
        path = os.path.join(args["model_repository"], args["model_version"], filename)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = _intra_op_threads(config)
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        self.input_names = [i["name"] for i in config["input"]]
        self.output_names = [o["name"] for o in config["output"]]

    def execute(self, requests):
        return execute_batched(requests, self.input_names, self.output_names,
                               lambda batch: self.session.run(self.output_names, batch),
                               "onnxruntime")  # fmt: skip
