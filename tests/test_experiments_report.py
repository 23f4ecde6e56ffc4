"""The comparison's report, fast: whether a gap between optimizers is larger than the spread
between seeds, said in words, and the table (the commands themselves run in test_experiments.py)."""

from __future__ import annotations

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
