"""``make classify`` — label a whole archive with the served model, resumably, in shards:

    python -m imgcls_batch SRC [--out predictions.parquet] [--model resnet50v2_int8]
                               [--shard i/N] [--concurrency 4] [--overwrite]

SRC: a folder tree, a file list (``.txt``: one path or URL a line), or an object-store URL
(``s3://bucket/prefix``; credentials and ``AWS_ENDPOINT_URL`` as for any AWS tool). One row per
file (path, content hash, label, probability, top-k, drift score, model, version, error code) to
Parquet or CSV. Killed and run again with the same arguments, it skips the files already written;
``--shard i/N`` takes the files whose content hash falls in shard i (N runs cover each file once).
Bad arguments, an unreachable source or Triton: one line on stderr and exit code 2, nothing
written.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from tqdm import tqdm

from imgcls.contract import DEFAULT_MODEL

from .classify import BatchError, Job, JobFailed, classify, connect
from .output import Output, OutputError
from .sources import Shard, SourceError, list_sources, shard_items

FLUSH_ROWS = 1024  # rows per part file: a kill loses at most this many answers (redone on resume)
USAGE_ERROR = 2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m imgcls_batch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("src", help="folder, file list (.txt) or URL (s3://bucket/prefix)")
    parser.add_argument("--out", type=Path, default=Path("predictions.parquet"),
                        help="a .parquet or .csv file (default: predictions.parquet)")  # fmt: skip
    parser.add_argument("--model", default=os.environ.get("MODEL_NAME") or DEFAULT_MODEL,
                        help=f"served model (default {DEFAULT_MODEL}; its _int8 sibling for INT8)")  # fmt: skip
    parser.add_argument("--version", default="", help="model version (default: the serving one)")
    parser.add_argument("--triton-url", default=os.environ.get("TRITON_URL") or "127.0.0.1:8000")
    parser.add_argument("--shard", default=os.environ.get("BATCH_SHARD") or "0/1",
                        help="i/N: this run's share of the files, by content hash (default 0/1)")  # fmt: skip
    parser.add_argument("--concurrency", type=int, default=4, help="batches in flight at once")
    parser.add_argument("--batch-size", type=int, default=0, help="default: the model's maximum")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per Triton call")
    parser.add_argument("--flush-rows", type=int, default=FLUSH_ROWS,
                        help="rows per part file: a kill loses at most these (redone on resume)")  # fmt: skip
    parser.add_argument("--overwrite", action="store_true", help="start the output afresh")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    for name in ("concurrency", "top_k", "flush_rows"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.batch_size < 0 or args.timeout <= 0:
        parser.error("--batch-size must be ≥ 0 and --timeout above 0")
    return args


def run(args: argparse.Namespace) -> dict:
    shard = Shard.parse(args.shard)
    paths = list_sources(args.src)
    job = Job(args.triton_url, args.model, args.version, args.concurrency, args.batch_size,
              args.top_k, args.timeout)  # fmt: skip
    gateway, info = connect(job)
    output = Output(args.out, info.name, overwrite=args.overwrite)
    before = output.versions()
    todo = [p for p in paths if p not in output.done]
    counts: dict = {"rows": 0, "errors": 0}
    started = time.monotonic()
    bar = tqdm(total=len(todo), unit="file", disable=args.quiet, dynamic_ncols=True,
               mininterval=0.5 if sys.stderr.isatty() else 10.0,
               desc=f"shard {shard} · {info.name} v{info.version}")  # fmt: skip
    buffer: list[dict] = []

    def on_rows(rows: list[dict]) -> None:
        buffer.extend(rows)
        counts["rows"] += len(rows)
        counts["errors"] += sum(1 for r in rows if r["error"])
        bar.update(len(rows))
        bar.set_postfix(errors=counts["errors"], refresh=False)
        if len(buffer) >= args.flush_rows:
            output.append(buffer)
            buffer.clear()

    try:
        items = shard_items(todo, shard, on_skip=lambda: bar.update(1))  # other shards' files
        classify(items, job, gateway, info, on_rows)
    finally:
        output.append(buffer)  # what was answered is kept, whatever stopped the job
        bar.close()
    total = output.finish()
    counts["seconds"] = round(time.monotonic() - started, 2)
    if before - {info.version}:
        print(f"note: {args.out} also holds rows of version(s) {', '.join(sorted(before))}",
              file=sys.stderr)  # fmt: skip
    return {**counts, "total_rows": total, "files": len(paths), "shard": str(shard),
            "model": info.name, "version": info.version, "out": str(args.out)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        summary = run(args)
    except (SourceError, OutputError, BatchError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except JobFailed as exc:
        print(f"error: {exc}; the rows written so far are kept: run again to resume",
              file=sys.stderr)  # fmt: skip
        return 1
    except KeyboardInterrupt:
        print("interrupted: the rows written so far are kept; run again to resume", file=sys.stderr)
        return 130
    print(f"classified {summary['rows']} files ({summary['errors']} with an error) of "
          f"{summary['files']} in shard {summary['shard']} with {summary['model']} "
          f"v{summary['version']} in {summary['seconds']} s "
          f"({summary['rows'] / max(summary['seconds'], 1e-9):.1f} files/s): "
          f"{summary['total_rows']} rows in {summary['out']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
