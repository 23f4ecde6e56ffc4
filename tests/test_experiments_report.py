"""The comparison's report, fast: whether a gap between optimizers is larger than the spread
between seeds, said in words, and the table (the commands themselves run in test_experiments.py)."""

from __future__ import annotations

import pytest

from model_preparation.tools.compare import (
    CompareParams,
    LearningRates,
    RunResult,
    noise_sentence,
    table,
)


def _run(opt: str, seed: int, acc: float) -> RunResult:
    curves = {k: [1.0] for k in ("train_loss", "val_loss", "train_accuracy", "val_accuracy")}
    return RunResult(f"opt-{opt}-s{seed}", opt, seed, curves, acc, 0.5, 3, 10.0)


def test_the_report_says_whether_a_gap_is_larger_than_the_seed_noise():
    params = CompareParams(
        ("adam", "sgd"), LearningRates(1e-3, 1e-2, 1e-2, 1e-3), (1, 2), 2, 3, 0.9
    )
    noisy = [
        _run("adam", 1, 0.90),
        _run("adam", 2, 0.80),
        _run("sgd", 1, 0.84),
        _run("sgd", 2, 0.83),
    ]
    assert "not larger than the widest spread between two seeds of one optimizer (0.100, adam)" in (
        noise_sentence(noisy, params)
    )
    clear = [
        _run("adam", 1, 0.95),
        _run("adam", 2, 0.94),
        _run("sgd", 1, 0.70),
        _run("sgd", 2, 0.72),
    ]
    assert "a gap of 0.235, larger than" in noise_sentence(clear, params)
    assert "| adam (0.001) | 0.500 (0.500–0.500) | 0.945 (0.940–0.950) | 3, 3 | 10.0 |" in table(
        clear, params
    )


def test_a_study_keeps_its_objective_and_a_resume_with_another_is_refused(tmp_path):
    """Trial values of two objectives (a loss, an error rate) cannot be ranked together."""
    from model_preparation.common import PipelineError, parse_settings
    from model_preparation.tools.search import SearchParams, open_study

    raw = {"sampler": "random", "pruner": "none", "trials": 2, "seed": 1, "study": "s",
           "epochs": 1, "steps_per_epoch": 1, "grid_points": 2,
           "space": {"learning_rate": {"choices": [0.001]}}, "objective": "shift",
           "shift_images": 10}  # fmt: skip
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    shift = parse_settings(SearchParams, raw, "search")
    assert open_study(shift, url).user_attrs["objective"] == "shift"
    assert open_study(shift, url).user_attrs["objective"] == "shift"  # resumed: the same
    loss = parse_settings(SearchParams, {**raw, "objective": "val_loss"}, "search")
    with pytest.raises(PipelineError, match="study 's' ranks by 'shift'; name another"):
        open_study(loss, url)
    other = parse_settings(SearchParams, {**raw, "objective": "val_loss", "study": "t"}, "search")
    assert open_study(other, url).user_attrs["objective"] == "val_loss"  # a new study: its own
