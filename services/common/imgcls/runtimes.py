"""The in-process runtimes that run the project's ONNX files: ONNX Runtime, and OpenVINO for the
CPU's reduced-precision units. One place, used by the pipeline's checks, the bench and its peers.

Both answer ``run(None, {input_name: uint8 batch}) -> [probabilities]``, ONNX Runtime's own
signature, so callers (``predict``) take either.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .contract import INPUT_NAME

RUNTIMES = ("onnxruntime", "openvino-bf16", "openvino-f32")


def onnxruntime_session(path: Path | str, threads: int = 0):
    """An ONNX Runtime CPU session; ``threads`` intra-op threads (0: one per core).

    Its threads sleep between operators instead of spinning: a spinning pool takes the cores
    from every other process (a training, Triton, a second test worker) while it waits, so on a
    shared machine it is slower for everyone, itself included (measured in docs/testing.md)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3  # errors only: graph-optimisation notices are not progress
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class OpenVinoSession:
    """The ONNX file compiled by OpenVINO for the CPU. ``precision``: OpenVINO's inference
    precision hint — ``bf16`` runs on the CPU's bfloat16 (or AMX) units where it has them and
    falls back to f32 where it does not; ``threads`` inference threads (0: OpenVINO's choice)."""

    def __init__(self, path: Path | str, precision: str = "bf16", threads: int = 0) -> None:
        import openvino as ov

        core = ov.Core()
        props: dict = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
        if threads > 0:
            props["INFERENCE_NUM_THREADS"] = threads
        self.compiled = core.compile_model(core.read_model(str(path)), "CPU", props)
        self.request = self.compiled.create_infer_request()
        names = self.compiled.input(0).get_names()  # a tensor can carry several names
        self.input = INPUT_NAME if INPUT_NAME in names else sorted(names)[0]

    def get_inputs(self):  # ONNX Runtime's shape of the question, for callers that ask it
        return [type("Input", (), {"name": self.input})()]

    def run(self, _outputs, feeds: dict) -> list[np.ndarray]:
        (batch,) = feeds.values()  # one input, whatever the caller called it
        result = self.request.infer({0: batch})
        return [np.asarray(result[self.compiled.output(0)], dtype=np.float32)]


def open_session(path: Path | str, runtime: str = "onnxruntime", threads: int = 0):
    """A session of one of ``RUNTIMES`` for ``path``."""
    if runtime == "onnxruntime":
        return onnxruntime_session(path, threads)
    if runtime.startswith("openvino-"):
        return OpenVinoSession(path, runtime.split("-", 1)[1], threads)
    raise ValueError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")


def predict(sess, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Probabilities for uint8 images, in batches (any session of this module)."""
    name = sess.get_inputs()[0].name
    out = [
        sess.run(None, {name: images[i : i + batch_size]})[0]
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
