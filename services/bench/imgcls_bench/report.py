"""What ``make bench`` prints: per-row serving overhead, the performance targets, table, chart.

Serving overhead (CPU ms per image) = server CPU per image − JPEG decode (paths that decode) −
in-process inference, where decode is ``load_image`` on the bench's 640×480 JPEG and inference
is the cheapest CPU per image ONNX Runtime reached in-process on the same model in the same run
(its best batch and thread layout). What is left is what serving adds: HTTP, multipart, the
Triton hop, the backend's own work, and running smaller batches than the best.

Where Triton serves the row with single-thread instances, the overhead is split in two: *small
batches* = what one single-thread ONNX Runtime session spends per image at the batch Triton
actually ran (its metrics), minus the best; *path* = the rest, what HTTP, the API, Triton and the
backend cost per image. The path is split again by process (``api_path_ms`` · ``triton_ms`` ·
``shim_ms``): the API's CPU less decode, tritonserver's own, and the local Python backend's
stubs less what one-thread ONNX Runtime costs at the batch Triton ran — the shim's own cost,
which the native ONNX Runtime backend of the Docker image does not pay.

The row "API front alone" serves the same app with no model (it answers from memory): its
overhead is the HTTP front's own path — gunicorn, multipart, JSON, logs, metrics; decode
excluded — (``front_path_ms_c8`` / ``_c16`` in the targets), the part of the API's path that no
batching can share.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import explain, goals
from .measure import Row
from .serving import CAPTURE_ROW, OUTPUTS_OFF_ROW, SHADOW_ROW, Scenario

API_ROW = "API end to end (multipart JPEG)"
VARIANT_ROWS = {"fp32": API_ROW, "int8": "API end to end INT8", "bf16": "API end to end BF16"}
FRONT_ROW = "API front alone"
PEER_PREFIXES = ("peer: BentoML", "peer: Ray Serve")
BF16_PEERS = ("peer: BentoML, OpenVINO BF16", "peer: Ray Serve (2 × 1 thread), OpenVINO BF16")


def precision_of(limit_row_name: str) -> str:
    """``fp32``, ``int8`` or ``bf16``: a limit row's precision, whichever runtime ran it."""
    for prefix, precision in (("limit INT8", "int8"), ("limit BF16", "bf16")):
        if limit_row_name.startswith(prefix):
            return precision
    return "fp32"


def inference_ms(limit_rows: list[Row]) -> dict[str, float]:
    """Cheapest in-process CPU ms per image for each precision, over every runtime and layout:
    each served path is held to the best in-process figure of its own precision."""
    best: dict[str, float] = {}
    for row in limit_rows:
        if not row.images:  # nothing finished in the window (a very short cell)
            continue
        precision = precision_of(row.name)
        ms = row.server_cpu_s / row.images * 1000
        best[precision] = min(best.get(precision, ms), ms)
    return best


def batch_curves(limit_rows: list[Row]) -> dict[str, list[tuple[int, float]]]:
    """CPU ms per image of single-thread ONNX Runtime sessions by batch size, FP32 and INT8
    (what Triton's ONNX Runtime instances pay at the batch they ran)."""
    curves: dict[str, list[tuple[int, float]]] = {}
    for row in limit_rows:
        if "× 1 thread" in row.name and ": onnxruntime" in row.name and row.images:
            precision = precision_of(row.name)
            batch = int(row.name.rsplit("bs", 1)[1])
            curves.setdefault(precision, []).append((batch, row.server_cpu_s / row.images * 1000))
    return {k: sorted(v) for k, v in curves.items()}


def at_batch(curve: list[tuple[int, float]], batch: float) -> float:
    """The curve at ``batch``, interpolated in 1/batch (the fixed cost of a run is shared by its
    images), clamped to the measured ends."""
    xs = [1 / b for b, _ in reversed(curve)]
    ys = [ms for _, ms in reversed(curve)]
    return float(np.interp(1 / batch, xs, ys))


def serving_summary(s: Scenario, row: Row, run: dict, limit: float,
                    curves: dict[str, list[tuple[int, float]]]) -> dict:  # fmt: skip
    """The row's summary plus its overhead and the batch Triton ran (where Triton serves it)."""
    out, infer = row.summary(limit), run["inference_ms"]
    decode = run["decode_ms"] if s.decodes else 0
    if out["cpu_s_per_image"] is not None and s.precision in infer:
        spent = out["cpu_s_per_image"] * 1000
        model = infer[s.precision] if s.infers else 0
        out["overhead_ms"] = round(spent - decode - model, 2)
    counts = row.counters
    if counts.get("nv_inference_exec_count"):
        ran = counts["nv_inference_count"] / counts["nv_inference_exec_count"]
        out["triton_batch"] = round(ran, 1)
        curve = curves.get(s.precision)
        if curve and s.single_thread_instances and "overhead_ms" in out:
            onnx_ms = at_batch(curve, ran)
            loss = max(0.0, onnx_ms - infer[s.precision])
            out["small_batch_ms"] = round(loss, 2)
            out["path_ms"] = round(out["overhead_ms"] - loss, 2)
            out.update(_path_parts(counts, row.images, onnx_ms, decode))
    return out


def _path_parts(counts: dict[str, float], images: int, onnx_ms: float, decode_ms: float) -> dict:
    """The path by process: the API's (less decode), tritonserver's own, and the backend
    shim's (its stub processes less what one-thread ONNX Runtime costs at the batch ran). The
    Docker image's native backend does not pay the shim: overhead − shim is that path's figure."""
    if "cpu_backend_s" not in counts or not images:
        return {}
    per_image = {k: counts[k] / images * 1000 for k in counts if k.startswith("cpu_")}
    parts = {
        "triton_ms": round(per_image["cpu_triton_s"], 2),
        "shim_ms": round(per_image["cpu_backend_s"] - onnx_ms, 2),
    }
    if "cpu_api_s" in per_image:
        parts["api_path_ms"] = round(per_image["cpu_api_s"] - decode_ms, 2)
    return parts


def _pick(rows: list[dict], prefix: str, concurrency: int | None = None) -> dict | None:
    """The fastest row of ``prefix`` (at ``concurrency``); the FP32 peers' prefixes do not
    take their OpenVINO BF16 rows (compared like with like apart)."""
    found = [r for r in rows if r["name"].startswith(prefix)
             and (concurrency is None or r["concurrency"] == concurrency)
             and ("BF16" not in r["name"] or "BF16" in prefix)]  # fmt: skip
    return max(found, key=lambda r: r["img_per_s"]) if found else None


def _ideal(run: dict, precision: str) -> float:
    """img/s if the machine only decoded the JPEG and ran the model at its best in-process cost
    for that precision (the ceiling the performance goals compare the API with)."""
    return run["cpu_count"] * 1000 / (run["decode_ms"] + run["inference_ms"][precision])


def _variants(run: dict) -> dict:
    """The API end to end on each precision at the highest concurrency measured: the fastest
    against FP32, each against its own ceiling, and BF16 against the peers on BF16."""
    rows, out = run["rows"], {}
    served = [r["concurrency"] for r in rows if r["name"].startswith(API_ROW)]
    if not served:
        return out
    c = max(served)
    found = {p: _pick(rows, prefix, c) for p, prefix in VARIANT_ROWS.items()}
    found = {p: r for p, r in found.items() if r and p in run["inference_ms"]}
    for precision, row in found.items():
        out[f"{precision}_api_img_per_s_c{c}"] = row["img_per_s"]
        ceiling = row["img_per_s"] / _ideal(run, precision)
        out[f"{precision}_api_over_decode_plus_inference_c{c}"] = round(ceiling, 2)
    fastest = max(found, key=lambda p: found[p]["img_per_s"])
    out[f"fastest_variant_c{c}"] = fastest
    if "fp32" in found:
        ratio = found[fastest]["img_per_s"] / found["fp32"]["img_per_s"]
        out[f"fastest_over_fp32_api_c{c}"] = round(ratio, 2)
    peers = [p for p in (_pick(rows, pre, c) for pre in BF16_PEERS) if p]
    if "bf16" in found and peers:
        best = max(peers, key=lambda r: r["img_per_s"])
        out[f"bf16_api_over_best_bf16_peer_c{c}"] = round(
            found["bf16"]["img_per_s"] / best["img_per_s"], 2
        )
        out[f"best_bf16_peer_c{c}"] = best["name"]
    return out


def targets(run: dict) -> dict:
    """The performance issues' numbers, measured in this run at this size."""
    rows, out = run["rows"], {}
    for c in (8, 16):
        api, int8 = _pick(rows, API_ROW, c), _pick(rows, "API end to end INT8", c)
        peers = [p for p in (_pick(rows, pre, c) for pre in PEER_PREFIXES) if p]
        if api:
            out[f"overhead_ms_c{c}"] = api.get("overhead_ms")
            out[f"overhead_split_c{c}"] = [api.get("small_batch_ms"), api.get("path_ms")]
            # what the machine does if it only decoded and inferred (the 0.8 × goal)
            out[f"api_over_decode_plus_inference_c{c}"] = round(
                api["img_per_s"] / _ideal(run, "fp32"), 2
            )
        if api and "shim_ms" in api:
            out[f"path_split_c{c}"] = {
                k: api.get(k) for k in ("api_path_ms", "triton_ms", "shim_ms")
            }
            out[f"overhead_ms_without_shim_c{c}"] = round(api["overhead_ms"] - api["shim_ms"], 2)
        if int8:
            out[f"overhead_ms_int8_c{c}"] = int8.get("overhead_ms")
            out[f"int8_api_over_decode_plus_inference_c{c}"] = round(
                int8["img_per_s"] / _ideal(run, "int8"), 2
            )
        front = _pick(rows, FRONT_ROW, c)
        if front and "overhead_ms" in front:
            out[f"front_path_ms_c{c}"] = front["overhead_ms"]
        if api and peers:
            best = max(peers, key=lambda r: r["img_per_s"])
            out[f"api_over_best_peer_c{c}"] = round(api["img_per_s"] / best["img_per_s"], 2)
            out[f"best_peer_c{c}"] = best["name"]
    base, api = _pick(rows, "peer: Flask"), _pick(rows, API_ROW)
    if base and api:
        out["api_over_baseline"] = round(api["img_per_s"] / base["img_per_s"], 2)
    return {**out, **outputs_cost(rows, run.get("metrics_cost")), **_variants(run)}


def outputs_cost(rows: list[dict], metrics: dict | None = None) -> dict:
    """The cost ledger of per-request features, as shares of /predict's server CPU per image at
    each concurrency both rows have: the drift and unknown-class outputs (the row without them
    against the API row; the goal: at most 5 % at the served size), capture (the row with it
    on against the API row, which runs with it off) and a candidate in shadow at 100 % (its
    answers in the background and their comparison: Triton's work for it included), and the
    per-version metrics (always on: ``metrics``, their CPU per image timed on their own)."""
    out = {}
    for c in sorted({r["concurrency"] for r in rows}):
        api = _pick(rows, API_ROW, c)
        if not api or not api["cpu_s_per_image"]:
            continue
        plain, capture = _pick(rows, OUTPUTS_OFF_ROW, c), _pick(rows, CAPTURE_ROW, c)
        if plain and plain["cpu_s_per_image"]:
            extra = api["cpu_s_per_image"] - plain["cpu_s_per_image"]
            out[f"outputs_cpu_share_c{c}"] = round(extra / api["cpu_s_per_image"], 3)
        for key, row in (("capture", capture), ("shadow", _pick(rows, SHADOW_ROW, c))):
            if row and row["cpu_s_per_image"]:
                extra = row["cpu_s_per_image"] - api["cpu_s_per_image"]
                out[f"{key}_cpu_share_c{c}"] = round(extra / api["cpu_s_per_image"], 3)
        if metrics:
            share = metrics["cpu_ms_per_image"] / 1000 / api["cpu_s_per_image"]
            out[f"metrics_cpu_share_c{c}"] = round(share, 4)
    return out


def render(result: dict) -> str:
    return "\n".join(_render_run(run, result) for run in result["runs"])


def _render_run(run: dict, result: dict) -> str:
    infer = run["inference_ms"]
    lines = [
        f"## ResNet50V2 {run['size']}²" + (" (the served model's size)" if run["size"] == result["headline_size"] else ""),
        "",
        f"Limit (best in-process ONNX Runtime FP32): {run['limit_img_per_s']} img/s on {result['cpu_count']} cores; "
        f"{result['seconds_per_cell']} s per cell. Overhead = server CPU/img − decode ({run['decode_ms']} ms, 640×480 JPEG) "
        f"− in-process inference (FP32 {infer.get('fp32')} ms, INT8 {infer.get('int8')} ms: best batch and layout).",
        "",
        "| path | conc. | img/s | p50 ms | p99 ms | server CPU ms/img | overhead ms/img (small batches + path) | path: API · Triton · shim | Triton batch | × limit | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]  # fmt: skip
    for r in run["rows"]:
        cpu = r["cpu_s_per_image"]
        lines.append(
            f"| {r['name']} | {r['concurrency']} | {r['img_per_s']} | {r['p50_ms']} | {r['p99_ms']} | "
            f"{round(cpu * 1000, 2) if cpu is not None else '–'} | {_overhead(r)} | {_parts(r)} | "
            f"{r.get('triton_batch', '–')} | {r['ratio_to_limit']} | {r['errors']} |"
        )
    lines += ["", "| image | preprocess ms (draft) | full decode ms |", "| --- | ---: | ---: |"]
    lines += [
        f"| {p['image']} | {p['ms_draft']} | {p['ms_full_decode']} |" for p in run["preprocessing"]
    ]
    if "onnxruntime_vs_keras" in run:
        k = run["onnxruntime_vs_keras"]
        lines += ["", f"ONNX Runtime vs Keras tf.function: bs1 {k['onnxruntime_bs1']} vs {k['keras_tf_function_bs1']} img/s "
                      f"(×{k['ratio_bs1']}); bs8 {k['onnxruntime_bs8']} vs {k['keras_tf_function_bs8']} img/s (×{k['ratio_bs8']})."]  # fmt: skip
    if "cold_start" in run:
        lines += ["", f"Cold start (launch → Triton + API ready): {run['cold_start']}"]
    if "open_loop" in run:
        lines += ["", "Open loop (Poisson arrivals at a fixed rate; latency from each request's "
                  "scheduled arrival):", "",
                  "| layout | offered /s | answered img/s | p50 ms | p99 ms | errors |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
        lines += [f"| {r['name']} | {r['concurrency']} | {r['img_per_s']} | {r['p50_ms']} | "
                  f"{r['p99_ms']} | {r['errors']} |" for r in run["open_loop"]]  # fmt: skip
    if "lifecycle" in run:
        from .lifecycle import render as render_lifecycle

        lines += ["", render_lifecycle(run["lifecycle"])]
    if "explain" in run:
        table = explain.render({run["size"]: run["explain"]}, title=f"### {explain.TITLE}")
        lines += ["", table]
    lines += ["", "Targets measured in this run: " + json.dumps(run["targets"]), ""]
    return "\n".join(lines) + "\n"


def _parts(r: dict) -> str:
    if "shim_ms" not in r:
        return "–"
    return f"{r.get('api_path_ms', '–')} · {r['triton_ms']} · {r['shim_ms']}"


def _overhead(r: dict) -> str:
    if "overhead_ms" not in r:
        return "–"
    split = f" ({r['small_batch_ms']} + {r['path_ms']})" if "small_batch_ms" in r else ""
    return f"{r['overhead_ms']}{split}"


def chart(run: dict, cpu_count: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = run["rows"]
    labels = [f"{r['name']} c{r['concurrency']}".replace("limit: onnxruntime in-process", "limit")
              for r in rows]  # fmt: skip
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(17, 0.35 * len(rows) + 2), sharey=True)
    y = np.arange(len(rows))
    ax1.barh(y, [r["img_per_s"] for r in rows], color="tab:blue")
    ax1.axvline(run["limit_img_per_s"], color="red", linestyle="--", label="in-process limit")
    ax1.set_yticks(y, labels, fontsize=7)
    ax1.set_xlabel("img/s")
    ax1.legend()
    ax2.barh(y, [r["p99_ms"] for r in rows], color="tab:orange")
    ax2.set_xlabel("p99 latency (ms)")
    ax3.barh(y, [r.get("overhead_ms") or 0 for r in rows], color="tab:green")
    ax3.axvline(
        goals.OVERHEAD_MS, color="red", linestyle="--", label=f"{goals.OVERHEAD_MS} ms goal"
    )
    ax3.set_xlabel("serving overhead (CPU ms/img)")
    ax3.legend()
    ax1.invert_yaxis()
    fig.suptitle(f"ResNet50V2 {run['size']}², {cpu_count} CPU cores")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
