"""Triton's ``config.pbtxt`` as this project renders it, and the lifecycle state read back from
a config's ``parameters`` (the file's, or the JSON Triton serves for the config it loaded).

One config per model: its tensors and scheduling (``model.json``), the versions Triton loads, and
in ``parameters`` the state (``imgcls.serving``, ``.candidate``, ``.mode``, ``.percent``), each
loaded version's labels and its drift and unknown-class thresholds. Written only by the version
store (``imgcls.repository``), always whole.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from .contract import DRIFT_NAME, UNKNOWN_NAME
from .model_records import PREFIX, Lifecycle, Serving, Tensor

MODEL_FILE = "model.onnx"


def labels_from_parameters(params: Mapping[str, str]) -> dict[int, tuple[str, ...]]:
    """``{version: labels}`` of every loaded version, from a config's parameters."""
    key = PREFIX + "labels."
    return {
        int(k[len(key) :]): tuple(json.loads(v)) for k, v in params.items() if k.startswith(key)
    }


def drift_from_parameters(params: Mapping[str, str], output: str = "drift") -> dict[int, float]:
    """``{version: threshold}`` where the config declares the drift output (every loaded
    version has it), else empty; ``output="unknown"``: the unknown-class output's."""
    key = f"{PREFIX}{output}."
    return {int(k[len(key) :]): float(v) for k, v in params.items() if k.startswith(key)}


def config_parameters(config: Mapping[str, Any]) -> dict[str, str]:
    """A Triton config's ``parameters`` as plain strings (the JSON Triton serves)."""
    raw = config.get("parameters") or {}
    return {k: str(v.get("string_value", "")) for k, v in raw.items()}


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _unquote(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), text)


def _dims(dims: tuple[int, ...]) -> str:
    return "[ " + ", ".join(str(d) for d in dims) + " ]"


def _parameter(key: str, value: str) -> str:
    return f"parameters {{ key: {_quote(key)} value: {{ string_value: {_quote(value)} }} }}\n"


_PARAMETER = re.compile(
    r'^parameters \{ key: "((?:[^"\\]|\\.)*)" value: \{ string_value: "((?:[^"\\]|\\.)*)" \} \}$',
    re.M,
)


def parameters_in(config_text: str) -> dict[str, str]:
    """The ``parameters`` lines of a config.pbtxt this module rendered."""
    return {_unquote(k): _unquote(v) for k, v in _PARAMETER.findall(config_text)}


def render_config(
    serving: Serving,
    state: Lifecycle,
    labels: Mapping[int, tuple[str, ...]],
    drift: Mapping[int, float | None] | None = None,
    unknown: Mapping[int, float | None] | None = None,
) -> str:
    """config.pbtxt for Triton's native ONNX Runtime backend (and the local shim).

    ``labels`` holds those of every loaded version. Triton's classification extension reads a
    labels file named in the config, one per model: it names the serving version's only while
    every loaded version has the same labels; otherwise there is none (no wrong names).
    ``drift`` holds the loaded versions' drift thresholds: the config declares the drift output
    only when every loaded version has one (a config's outputs are the model's, for all of its
    versions; a version without the output would not load).
    """
    inp, out = serving.input, serving.output
    thresholds = _all_thresholds(state, drift or {})
    unknown_limits = _all_thresholds(state, unknown or {}) if thresholds else {}
    same = len({labels[v] for v in state.loaded}) == 1
    label_file = f"    label_filename: {_quote(f'{state.serving}/labels.txt')}\n" if same else ""
    is_image = len(inp.dims) == 3 and inp.dims[-1] in (1, 3)
    image_format = "    format: FORMAT_NHWC\n" if is_image else ""  # Triton's image clients
    text = f"""# Rendered by imgcls.triton_config from model.json and the lifecycle state below (the
# publish stage and `python -m imgcls.lifecycle` write it): do not edit by hand.
name: {_quote(serving.name)}
backend: {_quote(serving.backend)}
{_model_file(serving)}max_batch_size: {serving.max_batch_size}
input [
  {{
    name: {_quote(inp.name)}
    data_type: {inp.datatype}
{image_format}    dims: {_dims(inp.dims)}
  }}
]
output [
  {{
    name: {_quote(out.name)}
    data_type: {out.datatype}
    dims: {_dims(out.dims)}
{label_file}  }}{_extra_output(DRIFT_NAME, thresholds)}{_extra_output(UNKNOWN_NAME, unknown_limits)}
]
{_batching(serving)}instance_group [
  {{
    count: {serving.instance_count}
  }}
]
{_warmup(inp)}"""
    for key, value in _backend_parameters(serving).items():
        text += _parameter(key, value)
    text += "# The lifecycle: which versions Triton loads, and how the API routes between them.\n"
    text += f"version_policy: {{ specific: {{ versions: {_dims(state.loaded)} }} }}\n"
    for key, value in state.parameters().items():
        text += _parameter(key, value)
    for version in state.loaded:
        text += _parameter(f"{PREFIX}labels.{version}", json.dumps(list(labels[version])))
    for version, threshold in thresholds.items():
        text += _parameter(f"{PREFIX}drift.{version}", repr(threshold))
    for version, threshold in unknown_limits.items():
        text += _parameter(f"{PREFIX}unknown.{version}", repr(threshold))
    return text


def _all_thresholds(state: Lifecycle, drift: Mapping[int, float | None]) -> dict[int, float]:
    found = {v: drift.get(v) for v in state.loaded}
    if any(t is None for t in found.values()):
        return {}
    return {v: float(t) for v, t in found.items() if t is not None}


def _extra_output(name: str, thresholds: Mapping[int, float]) -> str:
    """A score output (N×1) the config declares where every loaded version has it."""
    if not thresholds:
        return ""
    return f",\n  {{\n    name: {_quote(name)}\n    data_type: TYPE_FP32\n    dims: [ 1 ]\n  }}"


def _model_file(serving: Serving) -> str:
    """OpenVINO's backend looks for ``model.xml`` unless told; it reads ONNX as well."""
    return f'default_model_filename: "{MODEL_FILE}"\n' if serving.backend == "openvino" else ""


def _backend_parameters(serving: Serving) -> dict[str, str]:
    """Each native backend's own parameter names (the local shims read the same keys)."""
    threads = serving.intra_op_threads
    if serving.backend == "openvino":
        # Triton hands an instance one batch at a time: one stream, latency-minded.
        params = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"}
        if serving.precision:
            params["INFERENCE_PRECISION_HINT"] = serving.precision
        if threads > 0:
            params["INFERENCE_NUM_THREADS"] = str(threads)
        return params
    return {"intra_op_thread_count": str(threads)} if threads > 0 else {}


def _batching(serving: Serving) -> str:
    if not serving.dynamic_batching:
        return ""
    preferred = ", ".join(str(b) for b in serving.preferred_batch_sizes)
    return (
        "dynamic_batching {\n"
        + (f"  preferred_batch_size: [ {preferred} ]\n" if preferred else "")
        + f"  max_queue_delay_microseconds: {serving.max_queue_delay_us}\n}}\n"
    )


def _warmup(inp: Tensor) -> str:
    """One zero image through every instance before a version is READY: the first users after
    a load do not pay the runtime's first-run allocations."""
    return (
        f'model_warmup [\n  {{\n    name: "zeros"\n    batch_size: 1\n    inputs {{\n'
        f"      key: {_quote(inp.name)}\n      value: {{ data_type: {inp.datatype} "
        f"dims: {_dims(inp.dims)} zero_data: true }}\n    }}\n  }}\n]\n"
    )
