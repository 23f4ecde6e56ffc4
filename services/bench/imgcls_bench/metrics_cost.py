"""What the per-version metrics cost per answered image: the counters every answer touches
(``imgcls.gateway.client.observe_answer``, what the roll-out's live guards read, and
``imgcls.gateway.model_metrics``, what users were answered), for requests of one image, timed in
a process of their own with prometheus_client in multiprocess mode, as under gunicorn.

    python -m imgcls_bench.metrics_cost [--calls 3000]    # one JSON line: cpu_ms_per_image

They are always on, so no served row can be measured without them: this is their ledger entry
(``make bench``'s target ``metrics_cpu_share_c<N>``: this against the API row's CPU per image).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time


def measure(calls: int) -> dict:
    """CPU per call of everything the API counts for one answered image."""
    import numpy as np

    from imgcls.gateway import model_metrics
    from imgcls.gateway.client import ModelInfo, Outputs, observe_answer

    info = ModelInfo("resnet50v2", "1", "image", "UINT8", 64, 64, "probabilities",
                     ("circle", "square", "triangle"), 32, 0.0, 1.8, 12.7)  # fmt: skip
    outputs = Outputs(np.array([[0.7, 0.2, 0.1]], np.float32), np.array([1.2], np.float32),
                      np.array([3.0], np.float32))  # fmt: skip

    def answer() -> None:
        observe_answer(info, "serving", time.perf_counter(), outputs)
        drift = model_metrics.familiarity(outputs.drift, info.drift_threshold, 1)
        unknown = model_metrics.known_class(outputs.unknown, info.unknown_threshold, 1)
        model_metrics.observe(info.name, info.version, info.labels, outputs.probabilities, drift,
                              0.5, unknown)  # fmt: skip

    answer()  # the series' files are created on first use
    started = time.process_time()
    for _ in range(calls):
        answer()
    spent = time.process_time() - started
    return {"calls": calls, "cpu_ms_per_image": round(spent / calls * 1000, 4),
            "multiprocess": bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m imgcls_bench.metrics_cost")
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args(argv)
    if args.calls < 1:
        parser.error("--calls must be at least 1")
    if "prometheus_client" in sys.modules:  # pragma: no cover - a caller's mistake
        raise SystemExit("run it in a process of its own (multiprocess mode is set at import)")
    with tempfile.TemporaryDirectory(prefix="imgcls-metrics-cost-") as tmp:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tmp  # before prometheus_client is imported
        print(json.dumps(measure(args.calls)))


if __name__ == "__main__":
    main()
