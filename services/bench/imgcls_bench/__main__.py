"""``make bench``: one run, the same JPEGs; every path side by side, at every image size asked.

    python -m imgcls_bench [--sizes 64,224] [--seconds 6] [--out bench-results] [--quick]

The headline is the served model's size (``prepare.image_size`` in ``params.yaml``); 224² follows
(real photos). Per size: preprocessing; the in-process ONNX Runtime limit (FP32, INT8); Triton
direct (dynamic batching on/off); the API end to end (FP32, INT8, other instance layouts, its own
batching off); the peers (original-style Flask, BentoML and Ray Serve when the optional bench
environment exists); ONNX Runtime vs Keras; cold start; open-loop arrivals (a fixed rate, as
independent users send) against two batching layouts; a promote under load (latency during it
against steady state, time until all traffic is on the new version); explanations (``POST
/explain`` latency and CPU at c1/c4, FP32 and INT8, and ``/predict`` throughput with one request in
ten an explanation). Every row that serves JPEGs shows its
**serving overhead**: server CPU per image − JPEG decode − in-process inference, both measured in
the same run. Writes ``bench.json``, ``bench.md`` and a chart per size.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from imgcls.preprocessing import letterbox_image, load_image, to_rgb
from local_stack.api import ApiServer
from local_stack.procs import exit_on_sigterm
from local_stack.tritonserver import TritonServer

from . import explain, report
from .lifecycle import promote_under_load
from .measure import Row, closed_loop
from .serving import SizeContext, open_loop_rows, peers_available, serving_rows
from .workload import IMAGE_SIZES, build_models, make_jpegs, parse_sizes, served_size


def _log(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


def bench_preprocessing(jpegs: dict[str, bytes], size: int, reps: int) -> list[dict]:
    """ms per image for load_image (JPEG draft mode on) vs a full decode + the same letterbox."""

    def full_decode(data: bytes) -> np.ndarray:
        img = Image.open(io.BytesIO(data))
        img.load()
        return letterbox_image(to_rgb(img), (size, size))

    rows = []
    for name, data in jpegs.items():
        timings = {}
        for label, fn in (
            ("draft", lambda d=data: load_image(d, size)),
            ("full_decode", lambda d=data: full_decode(d)),
        ):
            fn()
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            timings[label] = (time.perf_counter() - t0) / reps * 1000
        rows.append(
            {
                "image": name,
                "ms_draft": round(timings["draft"], 2),
                "ms_full_decode": round(timings["full_decode"], 2),
            }
        )
    return rows


def bench_limit(
    onnx_path: Path,
    size: int,
    seconds: float,
    batches: list[int],
    sessions: int = 1,
    runtime: str = "onnxruntime",
) -> list[Row]:
    """A runtime on ready tensors, no server: one session using every core, or ``sessions``
    sessions of one thread each run side by side (both runtimes release the GIL), as Triton's
    instances. ``runtime``: one of ``imgcls.runtimes.RUNTIMES``."""
    from imgcls.runtimes import open_session

    shared = open_session(onnx_path, runtime) if sessions == 1 else None
    rng = np.random.default_rng(0)
    rows = []
    for batch in batches:
        x = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)

        def make(x=x, batch=batch):
            sess = shared or open_session(onnx_path, runtime, threads=1)
            return lambda _i: (sess.run(None, {"image": x}), batch)[1]

        layout = "in-process" if sessions == 1 else f"{sessions} sessions × 1 thread"
        rows.append(
            closed_loop(f"limit: {runtime} {layout} bs{batch}", make, sessions, seconds,
                        note=onnx_path.name)
        )  # fmt: skip
    for row in rows:  # in-process: the "server" is this process
        row.server_cpu_s = row.client_cpu_s
    return rows


def cold_start(repo: Path, workdir: Path) -> dict:
    """Launch → ready for the local stack (Triton + API), the model already on disk."""
    t0 = time.monotonic()
    with TritonServer(repo, workdir=workdir / "cold-triton") as triton:
        t_triton = time.monotonic() - t0
        with ApiServer(triton.url, workdir=workdir / "cold-api"):
            t_stack = time.monotonic() - t0
    return {"triton_ready_s": round(t_triton, 2), "stack_ready_s": round(t_stack, 2)}


def limit_rows(fp32: Path, int8: Path, size: int, secs: float, quick: bool) -> list[Row]:
    """The in-process ONNX Runtime limit (FP32, INT8), both thread layouts."""
    # Two single-thread sessions at every batch size: the cost curve Triton's instances follow,
    # from which the report tells the cost of small batches from the rest of the overhead.
    curve = [1, 8] if quick else [1, 2, 4, 8, 16]
    rows = [
        *bench_limit(fp32, size, secs, [8] if quick else [1, 8, 16, 32]),
        *bench_limit(fp32, size, secs, curve, sessions=2),
    ]
    int8_rows = [
        *bench_limit(int8, size, secs, [8] if quick else [8, 16]),
        *bench_limit(int8, size, secs, curve, sessions=2),
        # OpenVINO on the same INT8 file (its own int8 kernels): the best of both is the limit
        *bench_limit(int8, size, secs, [8] if quick else [1, 16], runtime="openvino-f32"),
    ]
    for r in int8_rows:
        r.name = r.name.replace("limit:", "limit INT8:")
    # The FP32 graph in bfloat16 on OpenVINO (the CPU's bf16 / AMX units)
    bf16_rows = [
        *bench_limit(fp32, size, secs, [8] if quick else [1, 8, 16], runtime="openvino-bf16"),
        *bench_limit(fp32, size, secs, [8] if quick else [1, 16], 2, runtime="openvino-bf16"),
    ]
    for r in bf16_rows:
        r.name = r.name.replace("limit:", "limit BF16:")
    return rows + int8_rows + bf16_rows


def _keras_vs_ort(built: dict, size: int, secs: float) -> dict:
    cmd = [sys.executable, "-m", "imgcls_bench.build", "keras-vs-ort", built["keras"],
           built["fp32"], "--size", str(size), "--seconds", str(secs)]  # fmt: skip
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[-1])


def _metrics_cost(calls: int) -> dict:
    """``imgcls_bench.metrics_cost`` in a process of its own (prometheus' multiprocess mode)."""
    cmd = [sys.executable, "-m", "imgcls_bench.metrics_cost", "--calls", str(calls)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[-1])


def run_size(size: int, args: argparse.Namespace, jpegs: dict[str, bytes], headline: bool) -> dict:
    """Every path at one image size, with the overhead of each against this size's limit."""
    work, secs = Path(args.work).resolve(), args.seconds
    conc = [1, 2] if args.quick else [1, 4, 8, 16]
    _log(f"{size}²: building the FP32 and INT8 bench models (cached in {work})")
    built = build_models(work, size)
    out: dict = {"size": size, "cpu_count": os.cpu_count()}
    out["preprocessing"] = bench_preprocessing(jpegs, size, 3 if args.quick else 20)
    out["decode_ms"] = next(p["ms_draft"] for p in out["preprocessing"] if p["image"] == "640x480")
    _log(f"{size}²: in-process ONNX Runtime limit")
    limits = limit_rows(Path(built["fp32"]), Path(built["int8"]), size, secs, args.quick)
    limit = max(r.img_per_s for r in limits if r.name.startswith("limit: "))
    out["inference_ms"] = {k: round(v, 2) for k, v in report.inference_ms(limits).items()}
    if headline:
        _log("cold start")
        single = work / "single"
        shutil.rmtree(single, ignore_errors=True)
        shutil.copytree(Path(built["repository"]) / "resnet50v2", single / "resnet50v2")
        out["cold_start"] = cold_start(single, work)
    ctx = SizeContext(work, size, jpegs["640x480"], Path(built["fp32"]))
    served = serving_rows(Path(built["repository"]), conc, secs, ctx,
                          peers_available() and not args.skip_peers)  # fmt: skip
    if headline:
        capacity = max(r.img_per_s for s, r in served if s.label == report.API_ROW)
        fractions = [0.5, 0.9] if args.quick else [0.25, 0.5, 0.75, 0.9]
        opened = open_loop_rows(Path(built["repository"]), ctx, capacity, fractions, secs)
        out["open_loop"] = [r.summary() for r in opened]
        _log(f"{size}²: a promote under load")
        out["lifecycle"] = promote_under_load(Path(built["repository"]), Path(built["fp32"]),
                                              jpegs["640x480"], work, secs,
                                              clients=4 if args.quick else 16)  # fmt: skip
    _log(f"{size}²: explanations (alone, and 1 in {explain.MIX_EVERY} of /predict's requests)")
    out["explain"] = explain.measure_size(Path(built["repository"]), jpegs["640x480"], work, secs)
    _log(f"{size}²: the per-version metrics' cost per image (their own process)")
    out["metrics_cost"] = _metrics_cost(300 if args.quick else 3000)
    if not args.quick:
        _log(f"{size}²: ONNX Runtime vs Keras (tf.function)")
        out["onnxruntime_vs_keras"] = _keras_vs_ort(built, size, secs)
    out["limit_img_per_s"] = round(limit, 2)
    curves = report.batch_curves(limits)
    out["rows"] = [r.summary(limit) for r in limits] + [
        report.serving_summary(s, r, out, limit, curves) for s, r in served
    ]
    out["targets"] = report.targets(out)
    return out


def run(args: argparse.Namespace) -> dict:
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    sizes = list(dict.fromkeys(args.sizes or [served_size(), 224]))
    jpegs = make_jpegs({"640x480": IMAGE_SIZES["640x480"]} if args.quick else IMAGE_SIZES)
    result: dict = {"headline_size": sizes[0], "cpu_count": os.cpu_count(),
                    "seconds_per_cell": args.seconds, "runs": []}  # fmt: skip
    for i, size in enumerate(sizes):
        result["runs"].append(run_size(size, args, jpegs, headline=i == 0))
        (out_dir / "bench.json").write_text(
            json.dumps(result, indent=2)
        )  # kept if a later size fails
        report.chart(result["runs"][-1], result["cpu_count"],
                     out_dir / ("bench.png" if i == 0 else f"bench-{size}.png"))  # fmt: skip
    table = report.render(result)
    (out_dir / "bench.md").write_text(table)
    print(table)
    return result


def main() -> None:
    exit_on_sigterm()  # a killed bench stops its servers too
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=6.0, help="measured seconds per cell")
    parser.add_argument("--sizes", type=parse_sizes, default=None,
                        help="image sizes, the headline first (default: the served size, 224)")  # fmt: skip
    parser.add_argument("--out", default="bench-results")
    parser.add_argument("--work", default=".cache/bench")
    parser.add_argument("--quick", action="store_true", help="smoke run: few cells, short")
    parser.add_argument("--skip-peers", action="store_true", help="no BentoML / Ray Serve rows")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
