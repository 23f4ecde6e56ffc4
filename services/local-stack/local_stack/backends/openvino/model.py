"""A Python-based Triton backend named ``openvino``, for hosts without the native one.

The official Triton image ships an OpenVINO backend; the nvidia-pytriton wheel does not. Triton
loads ``<backend-dir>/openvino/model.py`` for a model whose config says ``backend: "openvino"``,
so the same model repository serves here and under the official image. It reads the ONNX file
named by ``default_model_filename`` (OpenVINO reads ONNX directly) and the OpenVINO properties
the config's ``parameters`` name (``INFERENCE_PRECISION_HINT``, ``PERFORMANCE_HINT``,
``NUM_STREAMS``, ``INFERENCE_NUM_THREADS``: the native backend's keys). Every request of a
dynamic batch goes into one inference call.
"""

import json
import os

import numpy as np
import openvino as ov
import triton_python_backend_utils as pb_utils

PROPERTIES = ("INFERENCE_PRECISION_HINT", "PERFORMANCE_HINT", "NUM_STREAMS",
              "INFERENCE_NUM_THREADS")  # fmt: skip


def _properties(config):
    params = config.get("parameters", {})
    found = {k: params[k].get("string_value", "") for k in PROPERTIES if k in params}
    return {k: v for k, v in found.items() if v}


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        filename = config.get("default_model_filename") or "model.onnx"
        path = os.path.join(args["model_repository"], args["model_version"], filename)
        core = ov.Core()
        self.compiled = core.compile_model(core.read_model(path), "CPU", _properties(config))
        self.request = self.compiled.create_infer_request()
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
            result = self.request.infer(batch)
            results = [np.asarray(result[self.compiled.output(name)]) for name in self.output_names]
        except Exception as exc:  # one bad batch must not take the model down
            error = pb_utils.TritonError(f"openvino shim: {exc}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        bounds = np.cumsum([0, *sizes])
        return [
            pb_utils.InferenceResponse(
                output_tensors=[
                    pb_utils.Tensor(name, out[bounds[i] : bounds[i + 1]].astype(np.float32))
                    for name, out in zip(self.output_names, results, strict=True)
                ]
            )
            for i in range(len(requests))
        ]
