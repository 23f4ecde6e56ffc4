"""What explanations cost on the served model, measured: a section of every ``make bench`` run
(``measure_size``), and alone:

    python -m imgcls_bench.explain [--sizes 64,224] [--seconds 10] [--out bench-results]

For each size, the bench's FP32 and INT8 models (``imgcls_bench.build``, cached) on the local
stack (Triton + the API under gunicorn): ``POST /explain`` of the 640×480 test JPEG in a closed
loop with 1 and 4 clients (p50/p99, server CPU per explanation: API and Triton processes), and
``/predict`` throughput with 4 clients alone and with every tenth request an explanation
(predictions per second, the explanations not counted). Writes ``explain.md`` and
``explain.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import requests

from local_stack.api import ApiServer
from local_stack.procs import exit_on_sigterm
from local_stack.tritonserver import TritonServer

from .measure import Row, closed_loop
from .workload import IMAGE_SIZES, build_models, make_jpegs, parse_sizes

MODELS = {"fp32": "resnet50v2", "int8": "resnet50v2_int8"}
MIX_EVERY = 10  # one request in ten is an explanation


def _worker(api_url: str, jpeg: bytes, model: str, explain_every: int = 1):
    """A worker factory (each worker its own session). Request ``i`` is an explanation when
    ``i % explain_every == 0`` (every one with 1, none with 0), else a prediction; a worker
    returns the requests of the kind the row counts: explanations for 1, else predictions."""

    def make():
        session = requests.Session()

        def work(i: int) -> int:
            explain = explain_every > 0 and i % explain_every == 0
            route = "explain" if explain else "predict"
            resp = session.post(f"{api_url}/{route}", files={"image": jpeg},
                                params={"model": model}, timeout=120)  # fmt: skip
            if resp.status_code != 200:
                raise RuntimeError(resp.text[:200])
            return 1 if explain_every == 1 or not explain else 0

        return work

    return make


def measure_size(repository: Path, jpeg: bytes, work: Path, seconds: float) -> list[dict]:
    rows: list[Row] = []
    with (
        TritonServer(repository, workdir=work / "explain-triton") as triton,
        ApiServer(triton.url, workdir=work / "explain-api") as api,
    ):
        pids = [triton.proc.pid, api.proc.pid]
        for precision, model in MODELS.items():
            for clients in (1, 4):
                make = _worker(api.url, jpeg, model)
                rows.append(closed_loop(f"explain {precision}", make, clients, seconds,
                                        server_pids=pids))  # fmt: skip
        fp32 = MODELS["fp32"]
        alone = _worker(api.url, jpeg, fp32, explain_every=0)
        rows.append(closed_loop("predict fp32 alone", alone, 4, seconds, server_pids=pids))
        mixed = _worker(api.url, jpeg, fp32, explain_every=MIX_EVERY)
        rows.append(closed_loop(f"predict fp32, 1 in {MIX_EVERY} an explanation", mixed, 4,
                                seconds, server_pids=pids))  # fmt: skip
    return [r.summary() for r in rows]


TITLE = "Explanations (occlusion: 50 forward passes per image)"


def render(results: dict[int, list[dict]], title: str = f"## {TITLE}") -> str:
    """The rows of one or more sizes as a markdown table: requests per second (explanations, or
    predictions in the predict rows), latency and the server's CPU per request."""
    lines = [title, "",
             "| size | row | clients | per second | p50 ms | p99 ms | server CPU s per request |",
             "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for size, rows in results.items():
        for r in rows:
            cpu = r["cpu_s_per_image"]
            lines.append(f"| {size}² | {r['name']} | {r['concurrency']} | {r['img_per_s']} | "
                         f"{r['p50_ms']} | {r['p99_ms']} | {cpu if cpu is not None else '—'} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    exit_on_sigterm()  # a killed bench stops its servers too

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)  # fmt: skip
    parser.add_argument("--sizes", default="64,224")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", default="bench-results")
    parser.add_argument("--work", default=".cache/bench")
    args = parser.parse_args(argv)
    work, out = Path(args.work).resolve(), Path(args.out)
    jpeg = make_jpegs({"640x480": IMAGE_SIZES["640x480"]})["640x480"]
    results = {}
    for size in parse_sizes(args.sizes):
        built = build_models(work, size)
        results[size] = measure_size(Path(built["repository"]), jpeg, work, args.seconds)
    out.mkdir(parents=True, exist_ok=True)
    text = render(results)
    (out / "explain.md").write_text(text, encoding="utf-8")
    (out / "explain.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
