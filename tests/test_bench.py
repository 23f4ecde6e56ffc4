"""Smoke test of `make bench`: every code path once, on a tiny model, with no timing assertion."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_bench_quick_run_writes_table_json_and_chart(tmp_path):
    out = tmp_path / "results"
    cmd = [sys.executable, "-m", "imgcls_bench", "--quick", "--size", "32", "--seconds", "0.5",
           "--skip-ray", "--out", str(out), "--work", str(tmp_path / "work")]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads((out / "bench.json").read_text())
    names = {r["name"] for r in result["rows"]}
    assert {"triton direct (batching on)", "triton direct (batching off)", "API end to end (multipart JPEG)",
            "API end to end INT8", "peer: Flask threaded=False + JSON tensors"} <= names  # fmt: skip
    assert all(r["errors"] == 0 and r["img_per_s"] > 0 for r in result["rows"])
    assert result["limit_img_per_s"] > 0 and result["cold_start"]["stack_ready_s"] > 0
    assert (out / "bench.png").stat().st_size > 1000
    assert "| path |" in (out / "bench.md").read_text()
