"""The shift stage in the tiny project's `dvc repro`: its metric, curve, plot and contact sheet,
and where its clean row comes from."""

from __future__ import annotations

import csv
import json

import pytest

from tests.conftest import run

pytestmark = pytest.mark.slow


def _reports(project):
    reports = project / "artifacts/reports"
    return reports, json.loads((reports / "shift.json").read_text())


def test_the_clean_row_is_exactly_the_evaluate_and_quantize_stages_accuracy(tiny_project):
    reports, shift = _reports(tiny_project)
    metrics = json.loads((reports / "metrics.json").read_text())
    assert shift["num_images"] == metrics["num_images"]  # every held-out file (under max_images)
    assert shift["clean"]["fp32"] == metrics["accuracy"]  # the files through the same path
    int8 = json.loads((reports / "int8.json").read_text())
    assert shift["clean"]["int8"] == int8["int8_accuracy"]


def test_every_configured_shift_and_severity_is_scored_and_shifts_cost_accuracy(tiny_project):
    import yaml

    _, shift = _reports(tiny_project)
    configured = yaml.safe_load((tiny_project / "params.yaml").read_text())["shift"]["shifts"]
    assert list(shift["shifts"]) == list(configured)
    for name, severities in configured.items():
        assert list(shift["shifts"][name]) == [f"{s:g}" for s in severities], name
        for scores in shift["shifts"][name].values():
            assert set(scores) == {"fp32", "int8"}
            assert all(0 <= v <= 1 for v in scores.values())
    # the suite measures something: its mildest noise costs (almost) nothing, the whole suite
    # costs clearly (the tiny model is trained without augmentation)
    assert shift["shifts"]["noise"][f"{configured['noise'][0]:g}"]["fp32"] >= (
        shift["clean"]["fp32"] - 0.05
    )
    assert shift["mean"]["fp32"] < shift["clean"]["fp32"] - 0.05, shift["mean"]


def test_the_curve_the_plot_and_the_contact_sheet_are_written_and_known_to_dvc(tiny_project):
    from PIL import Image

    reports, shift = _reports(tiny_project)
    with open(reports / "shift.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    scale = shift["shifts"]["scale"]
    assert [r["level"] for r in rows] == [str(n) for n in range(len(scale) + 1)]
    assert float(rows[0]["scale"]) == shift["clean"]["fp32"]
    assert [float(r["scale"]) for r in rows[1:]] == [v["fp32"] for v in scale.values()]
    with (
        Image.open(reports / "shift.png") as plot,
        Image.open(reports / "shift_worst.png") as sheet,
    ):
        assert plot.width >= 600 and sheet.width >= 600
    metrics = json.loads(run("dvc metrics show --json", tiny_project).stdout)
    assert "shift.json" in json.dumps(metrics)
    plots = json.loads(run("dvc plots show --json", tiny_project).stdout)
    assert "errors" not in plots, plots.get("errors")
    assert {"shift", "artifacts/reports/shift.png", "artifacts/reports/shift_worst.png"} <= set(
        plots["data"]
    )
    curves = json.dumps(plots["data"]["shift"])
    assert all(name in curves for name in shift["shifts"])  # one curve per shift
