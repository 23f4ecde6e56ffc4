"""A Python-based Triton backend named ``onnxruntime``, for hosts without the native one.

The nvidia-pytriton wheel ships tritonserver and the Python backend but not
``libtriton_onnxruntime.so``. Triton loads ``<backend-dir>/onnxruntime/model.py`` for any model
whose config says ``backend: "onnxruntime"``, so the model repository stays byte-identical to
what the official image serves natively. Every request of a dynamic batch is concatenated into
one ONNX Runtime call, so batching pays off here as it does natively.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


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
        try:
            feeds = {
                name: [pb_utils.get_input_tensor_by_name(r, name).as_numpy() for r in requests]
                for name in self.input_names
            }
            sizes = [a.shape[0] for a in feeds[self.input_names[0]]]
            batch = {name: np.concatenate(parts) for name, parts in feeds.items()}
            results = self.session.run(self.output_names, batch)
        except Exception as exc:  # one bad batch must not take the model down
            error = pb_utils.TritonError(f"onnxruntime shim: {exc}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        bounds = np.cumsum([0, *sizes])
        return [
            pb_utils.InferenceResponse(
                output_tensors=[
                    pb_utils.Tensor(name, out[bounds[i] : bounds[i + 1]])
                    for name, out in zip(self.output_names, results, strict=True)
                ]
            )
            for i in range(len(requests))
        ]
