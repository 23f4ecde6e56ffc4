"""``make bench-batch``: the batch jobs, measured in one run on the same model and images.

    python -m imgcls_bench.batch [--images 5000] [--size 64] [--seconds 10] [--out bench-results]
                                 [--search-trials 6] [--skip-search]

Classify: the bench's FP32 model (``imgcls_bench.build``, cached) on the local Triton; an archive
of generated JPEGs (400–640 px, cached). Rows: Triton direct as ``make bench`` measures it (ready
uint8 tensors, one image a request, c8 and c16: the issue's reference), Triton direct with
batches of the model's maximum from as many clients as the batch job's concurrency (the bound:
what is left when reading, hashing, decoding and writing cost nothing), the API's best closed loop (c8, c16: one image a
request), and ``python -m imgcls_batch`` over a fifth of the archive and over all of it (images
per second, peak RSS of the process: flat in the number of images when memory is bounded). Then
two shards in parallel, checked against the whole run: the same rows, and as a set exactly the
files. Search: ``model_preparation.tools.search`` with tiny trial budgets on the prepared data of
the project in the working directory, one worker against two on one study in a private PostgreSQL
(``local_stack.postgres``), the same number of trials, each worker given its share of the
machine's cores (``--threads``). Writes ``batch.md`` and ``batch.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow.parquet as pq
import tritonclient.http as httpclient
import yaml

from local_stack.api import ApiServer
from local_stack.procs import exit_on_sigterm
from local_stack.tritonserver import TritonServer
from model_preparation.tools.demo_data import render

from .measure import Row, closed_loop
from .serving import http_worker, triton_worker
from .workload import build_models

MODEL = "resnet50v2"
CONCURRENCY = 4  # the batch job's default


def _log(msg: str) -> None:
    print(f"[bench-batch] {msg}", flush=True)


def make_archive(root: Path, count: int) -> Path:
    """``count`` distinct JPEGs of the demo shapes in class folders (cached: made once)."""
    done = root / f".complete-{count}"
    if done.exists():
        return root
    rng = np.random.default_rng(11)
    shapes = ("circle", "square", "triangle")
    for i in range(count):
        shape = shapes[i % 3]
        folder = root / shape
        folder.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        render(shape, rng, 400, 640).save(buf, format="JPEG", quality=90)
        (folder / f"{i:06d}.jpg").write_bytes(buf.getvalue())
    done.write_text("made by imgcls_bench.batch\n")
    return root


def batch_worker(url: str, size: int, batch: int):
    """Triton direct: one client per thread sending ready tensors of ``batch`` images."""

    def make():
        client = httpclient.InferenceServerClient(url)
        x = np.random.default_rng(1).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
        tensor = httpclient.InferInput("image", list(x.shape), "UINT8")
        tensor.set_data_from_numpy(x, binary_data=True)
        out = [httpclient.InferRequestedOutput("probabilities", binary_data=True)]
        return lambda _i: (client.infer(MODEL, [tensor], outputs=out), batch)[1]

    return make


def _max_batch(url: str) -> int:
    return int(httpclient.InferenceServerClient(url).get_model_config(MODEL)["max_batch_size"])


def run_classify(args: list[str], env: dict | None = None) -> dict:
    """One ``python -m imgcls_batch`` run: wall time and its peak RSS (polled every 50 ms)."""
    cmd = [sys.executable, "-m", "imgcls_batch", *args, "--quiet"]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)  # fmt: skip
    peak = [0]

    def poll() -> None:
        handle = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                peak[0] = max(peak[0], handle.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    out, err = proc.communicate()
    watcher.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {err[-2000:]}")
    return {"seconds": round(time.monotonic() - t0, 2), "peak_rss_mb": round(peak[0] / 2**20, 1),
            "printed": out.strip().splitlines()[-1]}  # fmt: skip


def classify_rows(archive: Path, triton_url: str, work: Path, count: int) -> dict:
    """The batch job over ``archive`` (all its files, and a fifth of them from a file list)."""
    files = sorted(str(p) for p in archive.rglob("*.jpg"))
    fifth = work / "fifth.txt"
    fifth.write_text("\n".join(files[: len(files) // 5]) + "\n")
    out: dict = {}
    for name, src, n in (("fifth", fifth, len(files) // 5), ("all", archive, len(files))):
        target = work / f"{name}.parquet"
        run = run_classify([str(src), "--out", str(target), "--triton-url", triton_url,
                            "--overwrite", "--concurrency", str(CONCURRENCY)])  # fmt: skip
        rows = pq.read_table(target).num_rows
        assert rows == n, f"{target}: {rows} rows for {n} files"
        out[name] = {**run, "images": n, "img_per_s": round(n / run["seconds"], 1)}
    out["rss_growth"] = round(out["all"]["peak_rss_mb"] / out["fifth"]["peak_rss_mb"], 3)
    return out


def shard_check(archive: Path, triton_url: str, work: Path) -> dict:
    """Shards 0/2 and 1/2 side by side against the whole run's rows."""
    procs, outs = [], [work / f"shard{i}.parquet" for i in range(2)]
    t0 = time.monotonic()
    for i, target in enumerate(outs):
        cmd = [sys.executable, "-m", "imgcls_batch", str(archive), "--out", str(target),
               "--shard", f"{i}/2", "--overwrite", "--quiet", "--triton-url", triton_url]  # fmt: skip
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL))
    codes = [p.wait() for p in procs]
    seconds = time.monotonic() - t0
    shards = [pq.read_table(t).to_pylist() for t in outs]
    whole = {
        r["path"]: (r["label"], r["sha256"])
        for r in pq.read_table(work / "all.parquet").to_pylist()
    }
    merged = [(r["path"], (r["label"], r["sha256"])) for rows in shards for r in rows]
    files = {str(p) for p in archive.rglob("*.jpg")}
    return {"exit_codes": codes, "rows": [len(s) for s in shards], "seconds": round(seconds, 2),
            "union_is_the_files": {p for p, _ in merged} == files,
            "no_file_twice": len(merged) == len({p for p, _ in merged}),
            "same_rows_as_one_run": dict(merged) == whole}  # fmt: skip


def serving_rows(repo: Path, archive: Path, work: Path, secs: float, size: int) -> dict:
    jpeg = next(archive.rglob("*.jpg")).read_bytes()
    with TritonServer(repo, workdir=work / "batch-triton") as triton:
        _log("Triton direct as make bench measures it: one image a request, c8 and c16")
        singles = [closed_loop("triton direct", triton_worker(triton.url, MODEL, size), c, secs)
                   for c in (8, 16)]  # fmt: skip
        batch = _max_batch(triton.url)
        _log(f"Triton direct, the bound: batches of {batch}, {CONCURRENCY} clients")
        bound = closed_loop(f"triton direct bs{batch}", batch_worker(triton.url, size, batch),
                            CONCURRENCY, secs)  # fmt: skip
        with ApiServer(triton.url, workdir=work / "batch-api") as api:
            _log("the API, closed loop c8 and c16")
            api_rows = [closed_loop("API /predict", http_worker(f"{api.url}/predict", jpeg), c,
                                    secs) for c in (8, 16)]  # fmt: skip
        _log("python -m imgcls_batch over the archive")
        classify = classify_rows(archive, triton.url, work, len(list(archive.rglob("*.jpg"))))
        _log("two shards in parallel")
        shards = shard_check(archive, triton.url, work)
    best_api = max(api_rows, key=lambda r: r.img_per_s)
    direct = max(singles, key=lambda r: r.img_per_s)
    rate = classify["all"]["img_per_s"]
    return {"triton_direct": _row(direct), "triton_batched": _row(bound), "api_best": _row(best_api),
            "classify": classify, "classify_over_triton_direct": round(rate / direct.img_per_s, 3),
            "classify_over_triton_batched": round(rate / bound.img_per_s, 3),
            "classify_over_api": round(rate / best_api.img_per_s, 3), "shards": shards}  # fmt: skip


def _row(row: Row) -> dict:
    s = row.summary()
    return {k: s[k] for k in ("name", "concurrency", "img_per_s", "p50_ms", "p99_ms", "errors")}


def search_rows(trials: int, work: Path) -> dict:
    """One worker, then two, each on a fresh study of ``trials`` tiny trials in PostgreSQL."""
    from local_stack.postgres import PostgresMissing, bin_dir, postgres_server

    params = yaml.safe_load(Path("params.yaml").read_text(encoding="utf-8"))
    if not Path("artifacts/prepared").is_dir():
        return {"skipped": "no prepared data here (make data && dvc repro prepare)"}
    try:
        bin_dir()
    except PostgresMissing as exc:
        return {"skipped": str(exc)}
    params["search"].update(sampler="random", pruner="none", trials=trials, epochs=1,
                            steps_per_epoch=5)  # fmt: skip
    out: dict = {"trials": trials, "epochs": 1, "steps_per_epoch": 5}
    with postgres_server() as url:
        for workers in (1, 2):
            params["search"]["study"] = f"bench-{workers}"
            path = work / f"search-params-{workers}.yaml"
            path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
            env = {**os.environ, "PARAMS_FILE": str(path), "TF_CPP_MIN_LOG_LEVEL": "2"}
            threads = max(1, (os.cpu_count() or 1) // workers)  # the machine's cores, shared
            cmd = [sys.executable, "-m", "model_preparation.tools.search", "--storage", url,
                   "--threads", str(threads)]  # fmt: skip
            _log(f"search: {workers} worker(s) of {threads} thread(s), {trials} trials")
            t0 = time.monotonic()
            with tempfile.TemporaryDirectory() as tmp:
                procs = [subprocess.Popen([*cmd, "--out", f"{tmp}/w{i}"], env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                         for i in range(workers)]  # fmt: skip
                codes = [p.wait() for p in procs]
            out[f"workers_{workers}"] = {"seconds": round(time.monotonic() - t0, 1),
                                         "threads": threads, "exit_codes": codes}  # fmt: skip
    out["two_over_one"] = round(out["workers_2"]["seconds"] / out["workers_1"]["seconds"], 3)
    return out


def render_md(result: dict) -> str:
    c, d, a = result["classify"], result["triton_direct"], result["api_best"]
    b = result["triton_batched"]
    lines = [
        f"## Batch jobs ({result['size']}², {result['images']} JPEGs of 400–640 px, "
        f"{result['cpu_count']} cores)", "",
        "| path | images/s | note |", "| --- | ---: | --- |",
        f"| Triton direct, one image a request (best: c{d['concurrency']}) | {d['img_per_s']} | "
        "ready tensors, as `make bench`'s rows |",
        f"| Triton direct, batches of the model's maximum (c{b['concurrency']}) | {b['img_per_s']} "
        "| ready tensors: the bound |",
        f"| API /predict, best closed loop (c{a['concurrency']}) | {a['img_per_s']} | one image a request |",
        f"| `python -m imgcls_batch`, {c['fifth']['images']} files | {c['fifth']['img_per_s']} | "
        f"peak RSS {c['fifth']['peak_rss_mb']} MB |",
        f"| `python -m imgcls_batch`, {c['all']['images']} files | {c['all']['img_per_s']} | "
        f"peak RSS {c['all']['peak_rss_mb']} MB |", "",
        f"Classify ÷ Triton direct: **{result['classify_over_triton_direct']}** (goal ≥ 0.9); "
        f"÷ the batched bound: {result['classify_over_triton_batched']}; ÷ the API: "
        f"{result['classify_over_api']}; peak RSS, all ÷ a fifth: {c['rss_growth']}.",
        f"Two shards in parallel: {result['shards']}.",
    ]  # fmt: skip
    search = result.get("search")
    if search and "skipped" not in search:
        lines += ["", f"Search, {search['trials']} trials of {search['steps_per_epoch']} steps on "
                  f"one PostgreSQL study: 1 worker {search['workers_1']['seconds']} s, 2 workers "
                  f"{search['workers_2']['seconds']} s: **{search['two_over_one']}×** (goal ≤ 0.6)."]  # fmt: skip
    elif search:
        lines += ["", f"Search: skipped ({search['skipped']})."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    exit_on_sigterm()  # a killed bench stops its servers too

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)  # fmt: skip
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--search-trials", type=int, default=6)
    parser.add_argument("--skip-search", action="store_true")
    parser.add_argument("--out", default="bench-results")
    parser.add_argument("--work", default=".cache/bench")
    args = parser.parse_args(argv)
    work, out = Path(args.work).resolve(), Path(args.out)
    run_dir = work / "batch-run"
    run_dir.mkdir(parents=True, exist_ok=True)
    _log(f"the archive: {args.images} JPEGs (cached in {work})")
    archive = make_archive(work / f"archive-{args.images}", args.images)
    built = build_models(work, args.size)
    result = {"size": args.size, "images": args.images, "cpu_count": os.cpu_count(),
              **serving_rows(Path(built["repository"]), archive, run_dir, args.seconds, args.size)}  # fmt: skip
    if not args.skip_search:
        result["search"] = search_rows(args.search_trials, run_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = render_md(result)
    (out / "batch.md").write_text(text, encoding="utf-8")
    (out / "batch.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
