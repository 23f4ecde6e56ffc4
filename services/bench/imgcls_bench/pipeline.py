"""``make bench-pipeline``: does the pipeline's memory stay flat as the dataset grows?

    python -m imgcls_bench.pipeline [--sizes 1500,6000] [--image-size 224] [--out bench-results]

Generates photo-sized noisy JPEGs (300–520 px a side, like the demo shapes but photo-sized),
then runs the pipeline's own stage commands in a scratch project and measures them from outside:
- ``prepare`` at each dataset size on every core, and at the largest size pinned to one core:
  images/s and the peak RSS of the whole process tree (the pool's workers included);
- ``train`` on the smallest prepared set with each ``train.cache`` mode: training images/s (the
  last epoch, so tracing is excluded) and peak RSS;
- ``export`` of the model trained last (Keras → ONNX, the parity check included): seconds and the
  peak RSS of its process tree (its conversion runs in child processes), against
  ``goals.EXPORT_LIMIT_MB``.
Writes ``pipeline.json`` and ``pipeline.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import psutil
import yaml

from local_stack.procs import exit_on_sigterm
from model_preparation.common import Prepared
from model_preparation.tools.demo_data import render

from . import goals as targets

CLASSES = ("circle", "square", "triangle")
CACHE = Path(".cache/bench-pipeline")
REPO = Path(__file__).resolve().parents[3]


def _log(msg: str) -> None:
    print(f"[bench-pipeline] {msg}", flush=True)


def _render_chunk(job: tuple[Path, str, int, int, int]) -> int:
    out, shape, seed, start, stop = job
    rng = np.random.default_rng([seed, CLASSES.index(shape), start])
    for i in range(start, stop):
        render(shape, rng, 300, 520).save(out / shape / f"{shape}_{i:06d}.jpg", quality=90)
    return stop - start


def _built_once(out: Path, fill) -> Path:
    """``out`` with one folder per class, filled by ``fill(out)`` unless a complete copy exists
    (an interrupted build is started again, not reused)."""
    if (out / ".complete").exists():
        return out
    shutil.rmtree(out, ignore_errors=True)
    for shape in CLASSES:
        (out / shape).mkdir(parents=True)
    fill(out)
    (out / ".complete").touch()
    return out


def photo_dataset(per_class: int, seed: int = 11) -> Path:
    """``per_class`` JPEGs per class, generated once on every core and reused."""

    def fill(out: Path) -> None:
        step = 100
        jobs = [
            (out, shape, seed, start, min(start + step, per_class))
            for shape in CLASSES
            for start in range(0, per_class, step)
        ]
        _log(f"generating {per_class * len(CLASSES)} photo-sized JPEGs in {out}")
        with ProcessPoolExecutor() as pool:
            list(pool.map(_render_chunk, jobs))

    return _built_once(CACHE / f"photos-{per_class}-{seed}", fill)


def subset(source: Path, per_class: int) -> Path:
    """The first ``per_class`` images of each class of ``source``, as hard links."""

    def fill(out: Path) -> None:
        for shape in CLASSES:
            for path in sorted((source / shape).glob("*.jpg"))[:per_class]:
                os.link(path, out / shape / path.name)

    return _built_once(CACHE / f"{source.name}-first-{per_class}", fill)


@dataclass
class Measured:
    seconds: float
    peak_rss_mb: float
    output: str


def measure(cmd: list[str], cwd: Path, cpus: set[int] | None = None) -> Measured:
    """Run a stage command; wall time and the peak summed RSS of its process tree (sampled)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", DVC_NO_ANALYTICS="1")

    def pin() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)

    started = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=pin,
    )
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                tree = [root, *root.children(recursive=True)]
                peak[0] = max(peak[0], sum(_rss(p) for p in tree))
            except psutil.Error:
                pass
            done.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        output, _ = proc.communicate()
    finally:
        done.set()
        sampler.join()
        if proc.poll() is None:
            proc.kill()
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{output[-3000:]}")
    return Measured(seconds, peak[0] / 2**20, output)


def _rss(process: psutil.Process) -> int:
    try:
        return process.memory_info().rss
    except psutil.Error:
        return 0


def scratch_project(root: Path, raw: Path, params: dict) -> Path:
    """A directory the stages run in: ``data/raw`` → the dataset, its own params.yaml."""
    shutil.rmtree(root, ignore_errors=True)
    (root / "data").mkdir(parents=True)
    (root / "data/raw").symlink_to(raw.resolve())
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


@dataclass
class PrepareRow:
    images: int
    cores: int
    seconds: float
    images_per_s: float
    peak_rss_mb: float


@dataclass
class TrainRow:
    cache: str
    images_per_s: float
    peak_rss_mb: float


@dataclass
class ExportRow:
    seconds: float
    peak_rss_mb: float


def bench_prepare(raw: Path, work: Path, params: dict, cpus: set[int]) -> PrepareRow:
    project = scratch_project(work, raw, params)
    m = measure([sys.executable, "-m", "model_preparation.prepare"], project, cpus)
    report = json.loads((project / "artifacts/reports/data.json").read_text())
    images = report["num_images"]
    row = PrepareRow(images, len(cpus), m.seconds, images / m.seconds, m.peak_rss_mb)
    _log(
        f"prepare {images} images on {len(cpus)} core(s): {m.seconds:.1f} s, "
        f"{row.images_per_s:.0f} img/s, peak RSS {m.peak_rss_mb:.0f} MB"
    )
    return row


def bench_train(project: Path, params: dict, cache: str) -> TrainRow:
    params = {**params, "train": {**params["train"], "cache": cache}}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    m = measure([sys.executable, "-m", "model_preparation.train"], project)
    rates = [float(r) for r in re.findall(r"^epoch .* (\d+(?:\.\d+)?) img/s", m.output, re.M)]
    if not rates:
        raise RuntimeError(f"no epoch lines in the train output:\n{m.output[-2000:]}")
    row = TrainRow(cache, rates[-1], m.peak_rss_mb)
    _log(f"train cache={cache}: {row.images_per_s:.1f} img/s, peak RSS {m.peak_rss_mb:.0f} MB")
    return row


def bench_export(project: Path) -> ExportRow:
    m = measure([sys.executable, "-m", "model_preparation.export"], project)
    row = ExportRow(m.seconds, m.peak_rss_mb)
    _log(f"export: {m.seconds:.1f} s, peak RSS {m.peak_rss_mb:.0f} MB (process tree)")
    return row


def base_params(image_size: int, train: dict) -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["prepare"]["image_size"] = image_size
    params["train"].update(train)
    return params


def report(
    out: Path, prepare: list[PrepareRow], train: list[TrainRow], export: ExportRow, meta: dict
) -> str:
    full = [r for r in prepare if r.cores > 1]
    small, large = full[0], full[-1]
    one = next(r for r in prepare if r.cores == 1)
    summary = {
        "rss_ratio_large_vs_small": large.peak_rss_mb / small.peak_rss_mb,
        "size_ratio": large.images / small.images,
        "speedup_all_cores_vs_one": large.images_per_s / one.images_per_s,
    }
    goals = {  # the scale goals: flat memory, and the cores actually used
        f"rss_within_{targets.RSS_GROWTH}x": summary["rss_ratio_large_vs_small"]
        <= targets.RSS_GROWTH,
        f"speedup_at_least_{targets.CORES_SPEEDUP}x": summary["speedup_all_cores_vs_one"]
        >= targets.CORES_SPEEDUP,
        f"export_within_{targets.EXPORT_LIMIT_MB}_mb": export.peak_rss_mb
        <= targets.EXPORT_LIMIT_MB,
    }
    lines = [
        f"prepare ({meta['image_size']}² letterbox, {meta['cpus']} cores; photo-sized JPEGs)",
        "",
        "| images | cores | seconds | img/s | peak RSS (tree) MB |",
        "| ---: | ---: | ---: | ---: | ---: |",
        *(
            f"| {r.images} | {r.cores} | {r.seconds:.1f} | {r.images_per_s:.0f} | "
            f"{r.peak_rss_mb:.0f} |"
            for r in prepare
        ),
        "",
        f"peak RSS ×{summary['rss_ratio_large_vs_small']:.2f} for ×"
        f"{summary['size_ratio']:.1f} the images; all cores ×"
        f"{summary['speedup_all_cores_vs_one']:.2f} faster than one. Goals: "
        + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in goals.items()),
        "",
        f"train ({meta['train_images']} training images, batch {meta['batch_size']}, "
        "last epoch's rate)",
        "",
        "| train.cache | img/s | peak RSS MB |",
        "| --- | ---: | ---: |",
        *(f"| {r.cache} | {r.images_per_s:.1f} | {r.peak_rss_mb:.0f} |" for r in train),
        "",
        f"export ({meta['image_size']}², Keras → ONNX + parity check): {export.seconds:.1f} s, "
        f"peak RSS (tree) {export.peak_rss_mb:.0f} MB (limit {targets.EXPORT_LIMIT_MB})",
        "",
    ]
    text = "\n".join(lines)
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "meta": meta,
        "summary": summary,
        "goals": goals,
        "prepare": [asdict(r) for r in prepare],
        "train": [asdict(r) for r in train],
        "export": asdict(export),
    }
    (out / "pipeline.json").write_text(json.dumps(payload, indent=2) + "\n")
    (out / "pipeline.md").write_text(text)
    return text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", default="1500,6000", help="dataset sizes (images), comma-separated"
    )
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--train-steps", type=int, default=6, help="steps per training epoch")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--caches", default="none,file,memory")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args(argv)
    args.sizes = sorted(int(s) for s in args.sizes.split(","))
    if len(args.sizes) < 2:
        parser.error("--sizes needs at least two dataset sizes")
    return args


def main(argv: list[str] | None = None) -> None:
    exit_on_sigterm()  # a killed bench stops its servers too
    args = parse_args(argv)
    cpus = os.sched_getaffinity(0)
    per_class = [-(-n // len(CLASSES)) for n in args.sizes]
    biggest = photo_dataset(per_class[-1])
    work = CACHE / "work"
    params = base_params(
        args.image_size,
        {"epochs": 2, "steps_per_epoch": args.train_steps, "batch_size": args.batch_size},
    )
    prepare = [
        bench_prepare(subset(biggest, n), work / f"prepare-{n}", params, cpus) for n in per_class
    ]
    prepare.append(bench_prepare(biggest, work / "prepare-one-core", params, {min(cpus)}))
    smallest = work / f"prepare-{per_class[0]}"
    train = [bench_train(smallest, params, cache) for cache in args.caches.split(",")]
    export = bench_export(smallest)
    meta = {
        "image_size": args.image_size,
        "cpus": len(cpus),
        "batch_size": args.batch_size,
        "train_images": Prepared.read(smallest / "artifacts/prepared").num_train,
    }
    print(report(args.out, prepare, train, export, meta))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
