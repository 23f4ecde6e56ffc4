"""``make bench``: one run, one model, one set of JPEGs; every path side by side.

    python -m imgcls_bench [--seconds 6] [--size 224] [--out bench-results] [--quick]

Rows: preprocessing per image size; the in-process ONNX Runtime limit; Triton direct (dynamic
batching on/off); the API end to end; INT8; the peers (original-style Flask baseline, Ray Serve
when the optional bench environment exists); ONNX Runtime vs Keras; cold start. Writes
``bench.json``, ``bench.md`` (the table) and ``bench.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import requests
import tritonclient.http as httpclient
from PIL import Image

from imgcls.preprocessing import letterbox_image, load_image, to_rgb
from local_stack.api import ApiServer
from local_stack.procs import ManagedProcess, free_port
from local_stack.triton import TritonServer
from model_preparation.demo_data import render

from .measure import Row, closed_loop

IMAGE_SIZES = {
    "320x240": (320, 240),
    "640x480": (640, 480),
    "1280x960": (1280, 960),
    "4000x3000": (4000, 3000),
}
BENCH_ENV = Path(".cache/bench-venv")


def _log(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


def make_jpegs(sizes: dict[str, tuple[int, int]]) -> dict[str, bytes]:
    rng = np.random.default_rng(7)
    out = {}
    for name, (w, h) in sizes.items():
        img = render("triangle", rng, min(w, h), min(w, h)).resize(
            (w, h), Image.Resampling.BILINEAR
        )
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        out[name] = buf.getvalue()
    return out


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
    onnx_path: Path, size: int, seconds: float, batches: list[int], sessions: int = 1
) -> list[Row]:
    """ONNX Runtime on ready tensors, no server: one session using every core, or ``sessions``
    sessions of one thread each run side by side (ORT releases the GIL), as Triton's instances."""
    from model_preparation.onnx_utils import session

    shared = session(onnx_path) if sessions == 1 else None
    rng = np.random.default_rng(0)
    rows = []
    for batch in batches:
        x = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)

        def make(x=x, batch=batch):
            sess = shared or session(onnx_path, threads=1)
            return lambda _i: (sess.run(None, {"image": x}), batch)[1]

        layout = "in-process" if sessions == 1 else f"{sessions} sessions × 1 thread"
        rows.append(
            closed_loop(f"limit: onnxruntime {layout} bs{batch}", make, sessions, seconds,
                        note=onnx_path.name)
        )  # fmt: skip
    for row in rows:  # in-process: the "server" is this process
        row.server_cpu_s = row.client_cpu_s
    return rows


def triton_worker(url: str, model: str, size: int):
    def make():
        client = httpclient.InferenceServerClient(url)
        x = np.random.default_rng(1).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
        tensor = httpclient.InferInput("image", list(x.shape), "UINT8")
        tensor.set_data_from_numpy(x, binary_data=True)
        out = [httpclient.InferRequestedOutput("probabilities", binary_data=True)]
        return lambda _i: (client.infer(model, [tensor], outputs=out), 1)[1]

    return make


def http_worker(url: str, data: bytes):
    def make():
        http = requests.Session()

        def send(_i: int) -> int:
            resp = http.post(url, files={"image": ("x.jpg", data, "image/jpeg")}, timeout=60)
            return 1 if resp.status_code == 200 else -1

        return send

    return make


def _pids(*procs: ManagedProcess | None) -> list[int]:
    return [p.proc.pid for p in procs if p is not None and p.proc is not None]


def _start_peer(
    cmd: list[str], port: int, workdir: Path, env: dict | None = None, timeout: float = 120
) -> ManagedProcess:
    peer = ManagedProcess(workdir, env)
    peer.name = cmd[2] if len(cmd) > 2 else "peer"
    peer.spawn(cmd)
    deadline = time.monotonic() + timeout
    probe = make_probe(port)
    while time.monotonic() < deadline:
        if not peer.running:
            raise RuntimeError(f"{peer.name} exited: see {peer.log_path}")
        if probe():
            return peer
        time.sleep(0.5)
    peer.stop()
    raise TimeoutError(f"{peer.name} not ready on :{port}")


def make_probe(port: int):
    def probe() -> bool:
        try:
            r = requests.post(
                f"http://127.0.0.1:{port}/predict",
                files={"image": ("x.jpg", PROBE_JPEG)},
                timeout=30,
            )
            return r.status_code == 200
        except requests.RequestException:
            return False

    return probe


PROBE_JPEG = make_jpegs({"p": (64, 48)})["p"]


def cold_start(repo: Path, workdir: Path) -> dict:
    """Launch → ready for the local stack (Triton + API), the model already on disk."""
    t0 = time.monotonic()
    with TritonServer(repo, workdir=workdir / "cold-triton") as triton:
        t_triton = time.monotonic() - t0
        with ApiServer(triton.url, workdir=workdir / "cold-api"):
            t_stack = time.monotonic() - t0
    return {"triton_ready_s": round(t_triton, 2), "stack_ready_s": round(t_stack, 2)}


@dataclass(frozen=True)
class Scenario:
    """One group of table rows: who answers the load generator, for which model, at which of
    the bench's concurrencies."""

    label: str
    front: str  # "triton" (client → Triton), "api" (→ API → Triton), "baseline", "ray"
    model: str = "resnet50v2"
    cells: str = "all"  # "all", "high" (the two highest), "edges" (lowest and third)
    replicas: int = 1  # Ray Serve only
    threads: int = 0  # Ray Serve only: ONNX Runtime threads per replica (0 = every core)


SCENARIOS = (
    Scenario("triton direct (batching on)", "triton"),
    Scenario("triton direct (batching off)", "triton", "resnet50v2_nobatch"),
    Scenario("API end to end (multipart JPEG)", "api"),
    Scenario("API end to end INT8", "api", "resnet50v2_int8", cells="high"),
    Scenario("API end to end (1 instance × all cores)", "api", "resnet50v2_1x2", cells="edges"),
    Scenario("peer: Flask threaded=False + JSON tensors", "baseline"),
    # Ray gets the same two layouts as Triton; it runs with Triton stopped.
    Scenario("peer: Ray Serve (1 replica)", "ray"),
    Scenario("peer: Ray Serve (2 replicas × 1 thread)", "ray", replicas=2, threads=1),
)


def _cells(which: str, conc: list[int]) -> list[int]:
    return {"all": conc, "high": conc[-2:], "edges": conc[:1] + conc[2:3]}[which]


@contextlib.contextmanager
def _front(s: Scenario, triton: TritonServer | None, ctx: dict) -> Iterator[tuple]:
    """Start what answers scenario ``s``; yield (worker factory, server pids); stop it."""
    work, size, jpeg = ctx["work"], ctx["size"], ctx["jpeg"]
    if s.front == "triton":
        yield triton_worker(triton.url, s.model, size), _pids(triton)
    elif s.front == "api":
        env = {"MODEL_NAME": s.model}
        with ApiServer(triton.url, workdir=work / f"api-{s.model}", env=env) as api:
            yield http_worker(f"{api.url}/predict", jpeg), _pids(triton, api)
    else:
        port = free_port()
        peer = _start_peer(_peer_command(s, port, triton, ctx), port, work / f"{s.front}-{s.replicas}",
                           env=_peer_env(s), timeout=240 if s.front == "ray" else 120)  # fmt: skip
        try:
            yield http_worker(f"http://127.0.0.1:{port}/predict", jpeg), _pids(triton, peer)
        finally:
            peer.stop(grace=30)


def _peer_command(s: Scenario, port: int, triton: TritonServer | None, ctx: dict) -> list[str]:
    size = str(ctx["size"])
    if s.front == "baseline":
        return [sys.executable, "-m", "imgcls_bench.baseline", "--port", str(port),
                "--triton-url", triton.url, "--size", size]  # fmt: skip
    return [str(BENCH_ENV / "bin" / "python"), "-m", "imgcls_bench.ray_peer", "--port", str(port),
            "--model", ctx["fp32"], "--size", size, "--replicas", str(s.replicas),
            "--threads", str(s.threads)]  # fmt: skip


def _peer_env(s: Scenario) -> dict | None:
    if s.front != "ray":
        return None
    src = Path(__file__).resolve().parents[2]
    return {
        "PYTHONPATH": f"{src / 'common'}{os.pathsep}{src / 'bench'}",
        "RAY_USAGE_STATS_ENABLED": "0",
    }


def serving_rows(repo: Path, conc: list[int], secs: float, ctx: dict, ray: bool) -> list[Row]:
    """Every scenario, one loop: the Triton-backed ones with one Triton, then the peers that
    need none (with Triton stopped, so they get the whole machine)."""
    rows: list[Row] = []

    def measure(s: Scenario, triton: TritonServer | None) -> None:
        with _front(s, triton, ctx) as (worker, pids):
            for c in _cells(s.cells, conc):
                _log(f"{s.label} c={c}")
                rows.append(closed_loop(s.label, worker, c, secs, server_pids=pids))

    with TritonServer(repo, workdir=ctx["work"] / "triton") as triton:
        for s in (s for s in SCENARIOS if s.front != "ray"):
            measure(s, triton)
    if not ray:
        _log(f"Ray Serve peer skipped (no {BENCH_ENV}; `make bench` creates it)")
    for s in (s for s in SCENARIOS if s.front == "ray" and ray):
        measure(s, None)
    return rows


def limit_rows(fp32: Path, int8: Path, size: int, secs: float, quick: bool) -> list[Row]:
    """The in-process ONNX Runtime limit (FP32, INT8), both thread layouts."""
    rows = [
        *bench_limit(fp32, size, secs, [1, 8] if quick else [1, 8, 16, 32]),
        *bench_limit(fp32, size, secs, [8] if quick else [8, 16], sessions=2),
    ]
    int8_rows = [
        *bench_limit(int8, size, secs, [8] if quick else [8, 16]),
        *bench_limit(int8, size, secs, [8], sessions=2),
    ]
    for r in int8_rows:
        r.name = r.name.replace("limit:", "limit INT8:")
    return rows + int8_rows


def _build(work: Path, size: int) -> dict:
    cmd = [sys.executable, "-m", "imgcls_bench.build", "models", str(work / "models"),
           "--size", str(size)]  # fmt: skip
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[-1])


def _keras_vs_ort(built: dict, size: int, secs: float) -> dict:
    cmd = [sys.executable, "-m", "imgcls_bench.build", "keras-vs-ort", built["keras"],
           built["fp32"], "--size", str(size), "--seconds", str(secs)]  # fmt: skip
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[-1])


def run(args: argparse.Namespace) -> dict:
    work, out_dir = Path(args.work).resolve(), Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    conc, secs = ([1, 2] if args.quick else [1, 4, 8, 16]), args.seconds
    _log(f"building the {args.size}² FP32 and INT8 bench models (cached in {work})")
    built = _build(work, args.size)
    jpegs = make_jpegs({"640x480": IMAGE_SIZES["640x480"]} if args.quick else IMAGE_SIZES)
    result: dict = {"size": args.size, "cpu_count": os.cpu_count(), "seconds_per_cell": secs}
    _log("preprocessing")
    result["preprocessing"] = bench_preprocessing(jpegs, args.size, 3 if args.quick else 20)
    _log("in-process ONNX Runtime limit")
    rows = limit_rows(Path(built["fp32"]), Path(built["int8"]), args.size, secs, args.quick)
    limit = max(r.img_per_s for r in rows if r.name.startswith("limit: "))
    _log("cold start")
    single = work / "single"
    shutil.rmtree(single, ignore_errors=True)
    shutil.copytree(Path(built["repository"]) / "resnet50v2", single / "resnet50v2")
    result["cold_start"] = cold_start(single, work)
    ctx = {"work": work, "size": args.size, "jpeg": jpegs["640x480"], "fp32": built["fp32"]}
    ray = (BENCH_ENV / "bin" / "python").exists() and not args.skip_ray
    rows += serving_rows(Path(built["repository"]), conc, secs, ctx, ray)
    if not args.quick:
        _log("ONNX Runtime vs Keras (tf.function)")
        result["onnxruntime_vs_keras"] = _keras_vs_ort(built, args.size, secs)
    result["limit_img_per_s"] = round(limit, 2)
    result["rows"] = [r.summary(limit) for r in rows]
    result["targets"] = targets(result)
    (out_dir / "bench.json").write_text(json.dumps(result, indent=2))
    table = render_table(result)
    (out_dir / "bench.md").write_text(table)
    chart(result, out_dir / "bench.png")
    print(table)
    return result


def _best(result: dict, prefix: str, concurrency: int | None = None) -> dict | None:
    rows = [
        r
        for r in result["rows"]
        if r["name"].startswith(prefix) and (concurrency is None or r["concurrency"] == concurrency)
    ]
    return max(rows, key=lambda r: r["img_per_s"]) if rows else None


def targets(result: dict) -> dict:
    """The issue's ratios, measured in this run."""
    api8 = _best(result, "API end to end (multipart", 8) or _best(
        result, "API end to end (multipart"
    )
    api = _best(result, "API end to end (multipart")
    ray = _best(result, "peer: Ray Serve")
    base = _best(result, "peer: Flask")
    int8 = _best(result, "API end to end INT8")
    out = {
        "api_c8_over_limit": round(api8["img_per_s"] / result["limit_img_per_s"], 3)
        if api8
        else None
    }
    if api and ray:
        out["api_over_ray"] = round(api["img_per_s"] / ray["img_per_s"], 2)
        out["api_p99_ms_vs_ray_p99_ms"] = [api["p99_ms"], ray["p99_ms"]]
        # What a server with zero overhead (exactly the in-process limit) would score against
        # the same Ray row: no tuning of the serving path can go past this ratio.
        out["limit_over_ray"] = round(result["limit_img_per_s"] / ray["img_per_s"], 2)
    if api and base:
        out["api_over_baseline"] = round(api["img_per_s"] / base["img_per_s"], 2)
    if api and int8:
        out["int8_over_fp32_api"] = round(int8["img_per_s"] / api["img_per_s"], 2)
    out["cold_start_s"] = result["cold_start"]["stack_ready_s"]
    return out


def render_table(result: dict) -> str:
    lines = [
        f"Limit (best in-process ONNX Runtime FP32, {result['size']}²): {result['limit_img_per_s']} img/s "
        f"on {result['cpu_count']} cores; {result['seconds_per_cell']} s per cell.",
        "",
        "| path | conc. | img/s | p50 ms | p95 ms | p99 ms | server CPU s/img | load-gen CPU s | × limit | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['name']} | {r['concurrency']} | {r['img_per_s']} | {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | "
            f"{r['cpu_s_per_image'] if r['cpu_s_per_image'] is not None else '–'} | {round(r['client_cpu_s'] or 0, 1)} | "
            f"{r['ratio_to_limit']} | {r['errors']} |"
        )
    lines += ["", "| image | preprocess ms (draft) | full decode ms |", "| --- | ---: | ---: |"]
    lines += [
        f"| {p['image']} | {p['ms_draft']} | {p['ms_full_decode']} |"
        for p in result["preprocessing"]
    ]
    if "onnxruntime_vs_keras" in result:
        k = result["onnxruntime_vs_keras"]
        lines += ["", f"ONNX Runtime vs Keras tf.function: bs1 {k['onnxruntime_bs1']} vs {k['keras_tf_function_bs1']} img/s "
                      f"(×{k['ratio_bs1']}); bs8 {k['onnxruntime_bs8']} vs {k['keras_tf_function_bs8']} img/s (×{k['ratio_bs8']})."]  # fmt: skip
    lines += ["", f"Cold start (launch → Triton + API ready): {result['cold_start']}", "",
              "Targets measured in this run: " + json.dumps(result["targets"])]  # fmt: skip
    return "\n".join(lines) + "\n"


def chart(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    labels = [
        f"{r['name']} c{r['concurrency']}".replace("limit: onnxruntime in-process", "limit")
        for r in rows
    ]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 0.35 * len(rows) + 2), sharey=True)
    y = np.arange(len(rows))
    ax1.barh(y, [r["img_per_s"] for r in rows], color="tab:blue")
    ax1.axvline(result["limit_img_per_s"], color="red", linestyle="--", label="in-process limit")
    ax1.set_yticks(y, labels, fontsize=7)
    ax1.set_xlabel("img/s")
    ax1.legend()
    ax2.barh(y, [r["p99_ms"] for r in rows], color="tab:orange")
    ax2.set_xlabel("p99 latency (ms)")
    ax1.invert_yaxis()
    fig.suptitle(f"ResNet50V2 {result['size']}², {result['cpu_count']} CPU cores")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=6.0, help="measured seconds per cell")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--out", default="bench-results")
    parser.add_argument("--work", default=".cache/bench")
    parser.add_argument("--quick", action="store_true", help="smoke run: few cells, short")
    parser.add_argument("--skip-ray", action="store_true")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
