"""A Python-based Triton backend named ``openvino``, for hosts without the native one.

The official Triton image ships an OpenVINO backend; the nvidia-pytriton wheel does not. Triton
loads ``<backend-dir>/openvino/model.py`` for a model whose config says ``backend: "openvino"``,
so the same model repository serves here and under the official image. It reads the ONNX file
named by ``default_model_filename`` (OpenVINO reads ONNX directly) and the OpenVINO properties
the config's ``parameters`` name (``INFERENCE_PRECISION_HINT``, ``PERFORMANCE_HINT``,
``NUM_STREAMS``, ``INFERENCE_NUM_THREADS``: the native backend's keys). Every request of a
dynamic batch goes into one inference call (``batched.py``).
"""

import json
import os

import numpy as np
import openvino as ov
from batched import execute_batched  # beside this file (batched.py says why)

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
        return execute_batched(requests, self.input_names, self.output_names, self._run, "openvino")

    def _run(self, batch):
        result = self.request.infer(batch)
        return [np.asarray(result[self.compiled.output(name)], dtype=np.float32)
                for name in self.output_names]  # fmt: skip
