"""``make compare``: which optimizer? The same data, budget and seeds, one DVC experiment each.

    python -m model_preparation.tools.compare [--out reports/optimizers]

For every optimizer × seed of params.yaml ``compare``, runs ``dvc exp run --temp`` of the train
stage, named ``opt-<optimizer>-s<seed>`` so ``dvc exp show`` and ``dvc plots diff`` list them; the
workspace is left untouched. The held-out accuracy is the validation accuracy at the epoch of the
lowest validation loss: the split the evaluate stage scores and the checkpoint the train stage
keeps (ONNX and Keras agree to ~1e-9), without an export per run. Then reads each experiment's DVCLive curves and metrics back from its Git ref and
writes ``curves.png`` (training and validation loss/accuracy, every run overlaid), ``report.md``
(the table, seed spread included) and ``results.json``.

Each optimizer runs at its own usual learning rate (``compare.learning_rates``): one shared
rate would compare one optimizer's good setting with another's bad one.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import re
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from imgcls.dvc import dvc

from ..common import OPTIMIZERS, PipelineError, load_settings, run_cli

EPOCH_LINE = re.compile(r"^epoch (\d+)/\d+ .* \((\d+)s\)$")
CURVES = {
    "train_loss": "artifacts/dvclive/plots/metrics/train/loss.tsv",
    "val_loss": "artifacts/dvclive/plots/metrics/eval/loss.tsv",
    "train_accuracy": "artifacts/dvclive/plots/metrics/train/accuracy.tsv",
    "val_accuracy": "artifacts/dvclive/plots/metrics/eval/accuracy.tsv",
}


@dataclass(frozen=True)
class LearningRates:
    adam: float
    sgd: float
    adagrad: float
    adasmooth: float


@dataclass(frozen=True)
class CompareParams:
    """params.yaml ``compare``."""

    optimizers: tuple[str, ...]
    learning_rates: LearningRates
    seeds: tuple[int, ...]
    epochs: int
    steps_per_epoch: int
    target_accuracy: float  # the "epochs to reach" column

    def __post_init__(self) -> None:
        unknown = sorted(set(self.optimizers) - set(OPTIMIZERS))
        if unknown or not self.optimizers:
            raise PipelineError(
                f"compare.optimizers {list(self.optimizers)}: choose from {', '.join(OPTIMIZERS)}"
            )
        if not self.seeds:
            raise PipelineError("compare.seeds: at least one seed")


@dataclass
class RunResult:
    name: str
    optimizer: str
    seed: int
    curves: dict[str, list[float]]
    heldout_accuracy: float
    best_val_loss: float
    epochs_to_target: int | None
    seconds_per_epoch: float


def experiment_name(optimizer: str, seed: int) -> str:
    return f"opt-{optimizer}-s{seed}"


def run_experiment(optimizer: str, seed: int, params: CompareParams) -> list[float]:
    """``dvc exp run --temp`` for one optimizer and seed; the epochs' end times (s) it printed."""
    name = experiment_name(optimizer, seed)
    remove, env = dvc("exp", "remove", name)
    subprocess.run(remove, env=env, capture_output=True)  # a rerun replaces it
    sets = {
        "train.optimizer": optimizer,
        "train.learning_rate": getattr(params.learning_rates, optimizer),
        "train.seed": seed,
        "train.epochs": params.epochs,
        "train.steps_per_epoch": params.steps_per_epoch,
        "train.patience": params.epochs,  # whole curves: no early stop inside a comparison
    }
    args = ["exp", "run", "--temp", "-n", name]
    for key, value in sets.items():
        args += ["-S", f"{key}={value}"]
    print(f"[compare] {name}: dvc {' '.join(args)} train", flush=True)
    cmd, env = dvc(*args, "train")
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    ends = []
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        if match := EPOCH_LINE.match(line):
            ends.append(float(match.group(2)))
            print(f"[compare] {name}: {line}", flush=True)
        elif line.startswith(("error", "ERROR")):
            print(f"[compare] {name}: {line}", flush=True)
    if proc.wait() != 0:
        raise PipelineError(f"experiment {name} failed (exit {proc.returncode})")
    return ends


def experiment_rev(name: str) -> str:
    refs = subprocess.run(
        ["git", "for-each-ref", "--format=%(refname) %(objectname)", "refs/exps/"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    matches = [line.split()[1] for line in refs if line.endswith(f"/{name}") or f"/{name} " in line]
    if not matches:
        raise PipelineError(f"no Git ref for experiment {name}")
    return matches[-1]


def git_file(rev: str, path: str) -> str:
    return subprocess.run(
        ["git", "show", f"{rev}:{path}"], capture_output=True, text=True, check=True
    ).stdout


def read_tsv(text: str) -> list[float]:
    rows = list(csv.reader(io.StringIO(text), delimiter="\t"))
    return [float(row[1]) for row in rows[1:]]


def collect(optimizer: str, seed: int, ends: list[float], target: float) -> RunResult:
    name = experiment_name(optimizer, seed)
    rev = experiment_rev(name)
    curves = {key: read_tsv(git_file(rev, path)) for key, path in CURVES.items()}
    best = min(range(len(curves["val_loss"])), key=curves["val_loss"].__getitem__)
    reached = [i + 1 for i, acc in enumerate(curves["val_accuracy"]) if acc >= target]
    durations = [b - a for a, b in itertools.pairwise(ends)]  # the first has tracing
    return RunResult(
        name=name,
        optimizer=optimizer,
        seed=seed,
        curves=curves,
        heldout_accuracy=curves["val_accuracy"][best],
        best_val_loss=curves["val_loss"][best],
        epochs_to_target=reached[0] if reached else None,
        seconds_per_epoch=statistics.median(durations) if durations else float("nan"),
    )


def spread(values: list[float]) -> str:
    """mean, and min–max over seeds when there are several."""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ({min(values):.3f}–{max(values):.3f})"


def table(results: list[RunResult], params: CompareParams) -> str:
    target = params.target_accuracy
    lines = [
        f"| optimizer (lr) | best val loss | held-out accuracy | epochs to val acc ≥ {target:g} "
        "| s/epoch |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for opt in params.optimizers:
        runs = [r for r in results if r.optimizer == opt]
        reached = [r.epochs_to_target for r in runs]
        to_target = ", ".join("never" if e is None else str(e) for e in reached)
        lines.append(
            f"| {opt} ({getattr(params.learning_rates, opt):g}) "
            f"| {spread([r.best_val_loss for r in runs])} "
            f"| {spread([r.heldout_accuracy for r in runs])} | {to_target} "
            f"| {statistics.median(r.seconds_per_epoch for r in runs):.1f} |"
        )
    return "\n".join(lines)


def noise_sentence(results: list[RunResult], params: CompareParams) -> str:
    """How the gap between the two best optimizers compares with the spread between seeds."""
    means = {
        opt: statistics.mean(r.heldout_accuracy for r in results if r.optimizer == opt)
        for opt in params.optimizers
    }
    spreads = {
        opt: max(r.heldout_accuracy for r in results if r.optimizer == opt)
        - min(r.heldout_accuracy for r in results if r.optimizer == opt)
        for opt in params.optimizers
    }
    ranked = sorted(means, key=means.get, reverse=True)
    widest = max(spreads.values())
    if len(ranked) < 2 or len(params.seeds) < 2:
        return f"Best mean held-out accuracy: {ranked[0]} ({means[ranked[0]]:.3f})."
    gap = means[ranked[0]] - means[ranked[1]]
    verdict = "larger" if gap > widest else "not larger"
    return (
        f"Best mean held-out accuracy: {ranked[0]} ({means[ranked[0]]:.3f}), then {ranked[1]} "
        f"({means[ranked[1]]:.3f}): a gap of {gap:.3f}, {verdict} than the widest spread between "
        f"two seeds of one optimizer ({widest:.3f}, {max(spreads, key=spreads.get)})."
    )


def plot(results: list[RunResult], params: CompareParams, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    colours = dict(
        zip(params.optimizers, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False)
    )
    styles = ["-", "--", ":", "-."]
    for ax, key in zip(axes.flat, CURVES, strict=True):
        for r in results:
            ax.plot(
                range(1, len(r.curves[key]) + 1),
                r.curves[key],
                color=colours[r.optimizer],
                linestyle=styles[params.seeds.index(r.seed) % len(styles)],
                label=f"{r.optimizer} seed {r.seed}",
            )
        ax.set_title(key.replace("_", " "))
        ax.grid(alpha=0.3)
        if "loss" in key:
            ax.set_yscale("log")
    for ax in axes[1]:
        ax.set_xlabel("epoch")
    axes[0][1].legend(fontsize=8)
    fig.suptitle(
        f"Optimizers on the same data, {params.epochs} epochs × {params.steps_per_epoch} steps"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_report(results: list[RunResult], params: CompareParams, out: Path, minutes: float):
    out.mkdir(parents=True, exist_ok=True)
    plot(results, params, out / "curves.png")
    text = "\n".join(
        [
            "# Optimizer comparison",
            "",
            f"{len(params.optimizers)} optimizers × seeds {list(params.seeds)}, "
            f"{params.epochs} epochs × {params.steps_per_epoch} steps each, as DVC experiments "
            f"`opt-<optimizer>-s<seed>` ({minutes:.0f} min in all). Spread: min–max over seeds.",
            "",
            table(results, params),
            "",
            noise_sentence(results, params),
            "",
            "![curves](curves.png)",
            "",
        ]
    )
    (out / "report.md").write_text(text, encoding="utf-8")
    (out / "results.json").write_text(
        json.dumps({"params": asdict(params), "runs": [asdict(r) for r in results]}, indent=2)
        + "\n"
    )
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("reports/optimizers"))
    args = parser.parse_args()
    params = load_settings(CompareParams, "compare")
    started, results = time.monotonic(), []
    for optimizer in params.optimizers:
        for seed in params.seeds:
            ends = run_experiment(optimizer, seed, params)
            results.append(collect(optimizer, seed, ends, params.target_accuracy))
    minutes = (time.monotonic() - started) / 60
    print(write_report(results, params, args.out, minutes))
    print(
        f"[compare] report in {args.out}/report.md; `dvc exp show` lists the runs", file=sys.stderr
    )


if __name__ == "__main__":
    run_cli(main)
