"""``make bench-pipeline`` runs for real on tiny sizes: every row measured, the report written."""

from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import run

pytestmark = [pytest.mark.slow, pytest.mark.bench]


def test_pipeline_bench_measures_prepare_train_and_export(tmp_path):
    out = tmp_path / "results"
    cmd = [
        sys.executable,
        "-m",
        "imgcls_bench.pipeline",
        "--sizes",
        "30,120",
        "--image-size",
        "32",
        "--train-steps",
        "2",
        "--batch-size",
        "8",
        "--caches",
        "none,memory",
        "--out",
        str(out),
    ]
    printed = run(cmd, tmp_path, timeout=600).stdout
    result = json.loads((out / "pipeline.json").read_text())
    prepare = result["prepare"]
    assert [(r["images"], r["cores"]) for r in prepare][-1] == (120, 1)
    assert [r["images"] for r in prepare[:2]] == [30, 120]
    for row in prepare:
        assert row["images_per_s"] > 0 and row["peak_rss_mb"] > 50  # the tree, TF included
    assert [r["cache"] for r in result["train"]] == ["none", "memory"]
    assert all(r["images_per_s"] > 0 and r["peak_rss_mb"] > 100 for r in result["train"])
    assert result["summary"]["size_ratio"] == 4
    export = result["export"]  # the export of the model trained last, measured
    assert export["seconds"] > 0 and export["peak_rss_mb"] > 100
    assert "export_within_3072_mb" in result["goals"]
    assert "| train.cache | img/s | peak RSS MB |" in printed
    assert (out / "pipeline.md").read_text() in printed
    # the generated photos are reused, the scratch projects removed
    assert list((tmp_path / ".cache/bench-pipeline").glob("photos-40-*/circle/*.jpg"))
    assert not (tmp_path / ".cache/bench-pipeline/work").exists()
