"""``make search``: hyperparameter search with Optuna, pruning bad trials as they train.

    python -m model_preparation.tools.search [--trials N] [--run-best] [--out reports/search]
                                             [--storage postgresql://user:pass@host/db]

The space, the sampler (TPE, random, CMA-ES, grid), the pruner (median, Hyperband, none), the
per-trial budget and the objective are params.yaml ``search``; the other training settings are
``train``'s. Each trial trains in this process with the train stage's own loop and reports its
validation loss after every epoch, so the pruner can stop it early. The objective is either
that validation loss (``objective: val_loss``) or the shift-suite error (``objective: shift``):
1 − the mean accuracy of the trial's best model over ``shift.shifts`` (the shift stage's list),
on ``shift_images`` held-out files: the search then ranks recipes by how they hold up off the
training distribution, not by how they fit it; each trial then records both figures. The
study lives in SQLite (``artifacts/search/optuna.db``): run the command again and it resumes
where it stopped (a trial cut off by Ctrl-C or a crash is marked failed and the rest go on).
A study keeps one objective: name another ``study`` when you change it.

``--storage`` (or ``OPTUNA_STORAGE``) names a shared database instead, as Optuna documents for
distributed optimisation: any number of processes or pods run this command on one study, each
takes the next trial (trials are rows, created atomically: none runs twice), the pruner compares
against every worker's trials, and together they stop at ``trials``. A worker that dies is found
by its missing heartbeat and its trial marked failed. The local SQLite file is for one worker. It ends with a report
(``report.md``: best trial, top trials, pruned count; ``history.png``, ``importance.png``;
``trials.csv``) and the best parameters as ``best_params.yaml`` and as the ``dvc exp run -S …``
line that trains them in the pipeline; ``--run-best`` runs that line (experiment
``search-best``), so the winner shows in ``dvc exp show``.

Trials are not DVC experiments: pruning needs the trial's epochs inside Optuna's loop, and a
``dvc exp run`` per trial would report only once, at the end (see README).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import os
import re
import socket
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from imgcls.dvc import dvc

from ..common import (
    ARTIFACTS,
    PREPARED,
    PipelineError,
    Prepared,
    load_params,
    load_settings,
    parse_settings,
    quiet_tensorflow,
    run_cli,
)

SEARCH_DIR = ARTIFACTS / "search"
LOCAL_STORAGE = f"sqlite:///{SEARCH_DIR / 'optuna.db'}"
HEARTBEAT_S = 20  # a shared study's workers beat this often; silent for GRACE_S = dead
GRACE_S = 60
SAMPLERS = ("tpe", "random", "cmaes", "grid")
PRUNERS = ("median", "hyperband", "none")
OBJECTIVES = ("val_loss", "shift")


@dataclass(frozen=True)
class SearchParams:
    """params.yaml ``search``."""

    sampler: str
    pruner: str
    trials: int
    seed: int
    study: str  # the study's name in the SQLite file: the same name resumes it
    epochs: int  # per-trial budget (a pruned trial stops earlier)
    steps_per_epoch: int
    grid_points: int  # values per numeric range for the grid sampler
    space: dict  # train key (``augment.rotation`` for nested) → {low, high[, log]} or {choices}
    objective: str  # what a trial minimises: val_loss, or shift (1 − the shift-suite mean)
    shift_images: int  # held-out files each trial's shift suite scores

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise PipelineError(f"search.objective {self.objective!r}: one of "
                                f"{', '.join(OBJECTIVES)}")  # fmt: skip
        if self.shift_images < 1:
            raise PipelineError(f"search.shift_images {self.shift_images}: at least 1")
        if self.sampler not in SAMPLERS:
            raise PipelineError(f"search.sampler {self.sampler!r}: one of {', '.join(SAMPLERS)}")
        if self.pruner not in PRUNERS:
            raise PipelineError(f"search.pruner {self.pruner!r}: one of {', '.join(PRUNERS)}")
        if not self.space:
            raise PipelineError("search.space: name at least one train setting to search")
        for name, spec in self.space.items():
            check_dimension(name, spec)


def check_dimension(name: str, spec: Any) -> None:
    where = f"search.space.{name}"
    if not isinstance(spec, dict):
        raise PipelineError(f"{where}: expected {{low, high[, log]}} or {{choices: [...]}}")
    if set(spec) == {"choices"}:
        if not isinstance(spec["choices"], list) or not spec["choices"]:
            raise PipelineError(f"{where}.choices: a non-empty list")
        return
    if not {"low", "high"} <= set(spec) <= {"low", "high", "log"}:
        raise PipelineError(f"{where}: keys low, high (and log), or choices alone; got {spec}")
    if not spec["low"] < spec["high"]:
        raise PipelineError(f"{where}: low must be below high")


def apply_overrides(train: dict, values: dict[str, Any], budget: SearchParams) -> dict:
    """The train section with the trial's values (dotted keys reach into ``augment``) and the
    search's per-trial budget."""
    out = {**train, "augment": dict(train["augment"])}
    for key, value in values.items():
        section, _, leaf = key.rpartition(".")
        target = out[section] if section else out
        if leaf not in target:
            raise PipelineError(f"search.space.{key}: not a train setting")
        target[leaf] = value
    out.update(epochs=budget.epochs, steps_per_epoch=budget.steps_per_epoch, patience=budget.epochs)
    return out


def suggest(trial, name: str, spec: dict) -> Any:
    if "choices" in spec:
        return trial.suggest_categorical(name, spec["choices"])
    low, high, log = spec["low"], spec["high"], bool(spec.get("log", False))
    if isinstance(low, int) and isinstance(high, int) and not log:
        return trial.suggest_int(name, low, high)
    return trial.suggest_float(name, float(low), float(high), log=log)


def grid(space: dict, points: int) -> dict[str, list]:
    """Every dimension as a finite list: choices as given, ranges at ``points`` values
    (geometric when ``log``)."""
    out = {}
    for name, spec in space.items():
        if "choices" in spec:
            out[name] = list(spec["choices"])
            continue
        low, high = float(spec["low"]), float(spec["high"])
        steps = [i / max(points - 1, 1) for i in range(points)]
        if spec.get("log"):
            values = [math.exp(math.log(low) + t * (math.log(high) - math.log(low))) for t in steps]
        else:
            values = [low + t * (high - low) for t in steps]
        if isinstance(spec["low"], int) and isinstance(spec["high"], int) and not spec.get("log"):
            out[name] = sorted({round(v) for v in values})
        else:
            out[name] = [float(f"{v:.6g}") for v in values]
    return out


def make_sampler(params: SearchParams, done: int = 0, salt: int = 0):
    """The configured sampler, seeded with ``seed + trials already in the study``: a resumed
    search draws new values instead of replaying the first run's. ``salt`` (a shared study's
    workers: their process ids) keeps workers that start together from drawing the same values;
    TPE then also assumes the worst for trials still running elsewhere (constant liar)."""
    import optuna

    seed = params.seed + done + salt
    if params.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, constant_liar=bool(salt))
    if params.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if params.sampler == "cmaes":  # categorical dimensions fall back to independent sampling
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    return optuna.samplers.GridSampler(grid(params.space, params.grid_points), seed=params.seed)


def make_pruner(params: SearchParams):
    import optuna

    if params.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    if params.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=params.epochs, reduction_factor=3
        )
    return optuna.pruners.NopPruner()


def storage_url(url: str) -> str:
    """SQLAlchemy's URL for ``url``: PostgreSQL through psycopg 3 (the driver installed)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def redacted(url: str) -> str:
    """``url`` without its password, for messages."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def open_storage(url: str):
    """The study's database, checked to answer (a clear error, not a traceback, when not)."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    if url == LOCAL_STORAGE:
        SEARCH_DIR.mkdir(parents=True, exist_ok=True)
        return optuna.storages.RDBStorage(url)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: stable
    try:
        return optuna.storages.RDBStorage(
            storage_url(url), heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
            engine_kwargs={"pool_pre_ping": True, "connect_args": _connect_args(url)},
        )  # fmt: skip
    except (SQLAlchemyError, ImportError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PipelineError(f"search storage {redacted(url)} does not answer: {reason}") from None


def _connect_args(url: str) -> dict:
    return {"connect_timeout": 10} if url.startswith(("postgres", "mysql")) else {}


def open_study(params: SearchParams, storage_url: str = LOCAL_STORAGE):
    """Create or resume the study. In the local SQLite file (one worker) trials left RUNNING by
    an interrupted run become FAIL at once; in a shared database only those whose worker stopped
    beating do (the others are running elsewhere)."""
    import optuna

    storage = open_storage(storage_url)
    shared = storage_url != LOCAL_STORAGE
    done = 0
    if params.study in optuna.get_all_study_names(storage):
        done = len(optuna.load_study(study_name=params.study, storage=storage).trials)
    study = optuna.create_study(
        study_name=params.study,
        storage=storage,
        load_if_exists=True,
        direction="minimize",
        sampler=make_sampler(params, done, salt=os.getpid() if shared else 0),
        pruner=make_pruner(params),
    )
    keep_objective(study, params.objective)
    if shared:
        optuna.storages.fail_stale_trials(study)
        return study
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
        print(f"[search] trial {trial.number} was interrupted: marked failed", flush=True)
    return study


def keep_objective(study, objective: str) -> None:
    """A study ranks by one objective: record it in a new study, refuse another on resume (a
    study from before objectives were recorded ranked by val_loss)."""
    held = study.user_attrs.get("objective") or ("val_loss" if study.trials else None)
    if held is None:
        study.set_user_attr("objective", objective)
    elif held != objective:
        raise PipelineError(f"search.objective {objective!r}: study {study.study_name!r} ranks "
                            f"by {held!r}; name another search.study for the new objective")  # fmt: skip


def _taken(trials: list) -> list:
    """Trials some worker has started (enqueued ones, WAITING, are still to be taken)."""
    import optuna

    return [t for t in trials if t.state != optuna.trial.TrialState.WAITING]


def stop_at(total: int):
    """An Optuna callback: stop this worker once the study holds ``total`` trials, counting
    those other workers are running (so N workers do not run N − 1 trials too many)."""

    def callback(study, _trial) -> None:
        if len(_taken(study.get_trials(deepcopy=False))) >= total:
            study.stop()

    return callback


def shift_error(model, shift) -> float:
    """1 − the model's mean accuracy over the shift suite (``shift``: its ``ShiftParams``)."""
    from ..shift import KerasSession, shift_suite

    result, _, _ = shift_suite({"fp32": KerasSession(model)}, PREPARED, shift, log=False)
    return 1.0 - result["mean"]["fp32"]


def objective_for(params: SearchParams, train_section: dict, shift=None):
    """One trial: train with the sampled values, report val_loss per epoch, prune if told; the
    value is the best epoch's val_loss, or with ``shift`` (the suite's ``ShiftParams``) the shift
    error of that epoch's model. Pruning compares val_loss either way: a trial that does not
    learn is stopped before its suite is paid for."""
    quiet_tensorflow()
    import keras
    import optuna

    from ..train import train
    from ..train_params import TrainParams

    def objective(trial) -> float:
        keras.backend.clear_session()  # one process, many trials: drop the last one's graphs
        values = {name: suggest(trial, name, spec) for name, spec in params.space.items()}
        settings = parse_settings(
            TrainParams, apply_overrides(train_section, values, params), "search trial"
        )
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        print(f"[search] trial {trial.number}: {values}", flush=True)

        def report(epoch: int, logs: dict[str, float]) -> None:
            trial.report(logs["val_loss"], epoch)
            trial.set_user_attr("val_accuracy", logs["val_accuracy"])
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {epoch + 1}")

        errors: list[float] = []
        on_best = (
            None if shift is None else (lambda model: errors.append(shift_error(model, shift)))
        )
        history = train(PREPARED, settings, on_epoch=report, on_best=on_best)
        best = min(history, key=lambda h: h["val_loss"])
        trial.set_user_attr("val_accuracy", best["val_accuracy"])
        trial.set_user_attr("val_loss", best["val_loss"])
        if shift is None:
            return best["val_loss"]
        trial.set_user_attr("shift_mean", 1.0 - errors[0])
        print(f"[search] trial {trial.number}: val_loss {best['val_loss']:.4f}, shift-suite mean "
              f"{1.0 - errors[0]:.4f}", flush=True)  # fmt: skip
        return errors[0]

    return objective


def shift_settings(params: SearchParams):
    """The shift stage's suite (``shift`` in params.yaml) on ``search.shift_images`` files, for the
    ``shift`` objective; None for ``val_loss``."""
    if params.objective != "shift":
        return None
    from ..shift import ShiftParams

    suite = load_settings(ShiftParams, "shift")
    return dataclasses.replace(suite, max_images=params.shift_images)


def limit_threads(threads: int) -> None:
    """TensorFlow's op pools at ``threads`` (before its runtime starts: before the first trial).
    Workers sharing a machine then share its cores instead of oversubscribing them."""
    quiet_tensorflow()
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


def dvc_command(best: dict[str, Any], name: str = "search-best") -> list[str]:
    cmd = ["dvc", "exp", "run", "-n", name]
    for key, value in best.items():
        cmd += ["-S", f"train.{key}={value}"]
    return cmd


def write_report(study, params: SearchParams, out: Path) -> str:
    import optuna

    out.mkdir(parents=True, exist_ok=True)
    states = optuna.trial.TrialState
    done = study.get_trials(deepcopy=False, states=(states.COMPLETE,))
    pruned = study.get_trials(deepcopy=False, states=(states.PRUNED,))
    failed = study.get_trials(deepcopy=False, states=(states.FAIL,))
    write_trials_csv(study, params, out / "trials.csv")
    if not done:
        raise PipelineError("no trial completed: nothing to report (see the trial output above)")
    best = study.best_trial
    (out / "best_params.yaml").write_text(
        yaml.safe_dump({"train": best.params}, sort_keys=False), encoding="utf-8"
    )
    command = " ".join(dvc_command(best.params))
    plots = write_plots(study, out)
    top = sorted(done, key=lambda t: t.value)[:5]
    keys = list(params.space)
    figures = FIGURES[params.objective]
    lines = [
        f"# Hyperparameter search `{params.study}`",
        "",
        f"Sampler **{params.sampler}**, pruner **{params.pruner}**, budget {params.epochs} epochs "
        f"× {params.steps_per_epoch} steps per trial. Trials: {len(done)} complete, "
        f"{len(pruned)} pruned, {len(failed)} failed. Objective: {OBJECTIVE_TEXT[params.objective]}.",
        "",
        f"**Best: trial {best.number}**, "
        + ", ".join(f"{f} {_figure(best, f):.4f}" for f in figures),
        "",
        "```bash",
        command,
        "```",
        "",
        "| trial | " + " | ".join(figures) + " | " + " | ".join(keys) + " |",
        "| ---: | "
        + " | ".join("---:" for _ in figures)
        + " | "
        + " | ".join("---" for _ in keys)
        + " |",
        *(
            f"| {t.number} | "
            + " | ".join(f"{_figure(t, f):.4f}" for f in figures)
            + " | "
            + " | ".join(_fmt(t.params.get(k)) for k in keys)
            + " |"
            for t in top
        ),
        "",
        *(f"![{name}]({name}.png)" for name in plots),
        "",
    ]
    text = "\n".join(lines)
    (out / "report.md").write_text(text, encoding="utf-8")
    return text


OBJECTIVE_TEXT = {
    "val_loss": "the lowest validation loss",
    "shift": "the highest shift-suite mean accuracy (the best epoch's model, "
    "search.shift_images held-out files under shift.shifts)",
}
FIGURES = {"val_loss": ("val_loss", "val_accuracy"),
           "shift": ("shift_mean", "val_loss", "val_accuracy")}  # fmt: skip


def _figure(trial, name: str) -> float:
    """A trial's figure by name (trials from before a figure was recorded: NaN)."""
    if name == "val_loss" and "val_loss" not in trial.user_attrs and trial.value is not None:
        return trial.value  # val_loss studies recorded it as the value only
    return float(trial.user_attrs.get(name, float("nan")))


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def write_trials_csv(study, params: SearchParams, path: Path) -> None:
    keys = list(params.space)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["trial", "state", "objective", "val_loss", "shift_mean", "epochs_run",
                         *keys])  # fmt: skip
        for t in study.get_trials(deepcopy=False):
            # a pruned trial's value is its last val_loss (Optuna's rule): the objective only
            # when that is what the study ranks by
            ranked = t.state.name == "COMPLETE" or params.objective == "val_loss"
            value = "" if t.value is None or not ranked else f"{t.value:.6f}"
            figures = [_figure(t, f) if t.value is not None else math.nan
                       for f in ("val_loss", "shift_mean")]  # fmt: skip
            shown = ["" if math.isnan(f) else f"{f:.6f}" for f in figures]
            row = [t.number, t.state.name, value, *shown, len(t.intermediate_values)]
            writer.writerow(row + [t.params.get(k, "") for k in keys])


def write_plots(study, out: Path) -> list[str]:
    """Optimisation history and parameter importance, as far as the study allows."""
    import matplotlib

    matplotlib.use("Agg")
    import warnings

    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ovm
    from optuna.exceptions import ExperimentalWarning

    warnings.simplefilter("ignore", ExperimentalWarning)  # optuna's matplotlib plots: stable here
    from optuna.importance import PedAnovaImportanceEvaluator

    def importance(s):  # PED-ANOVA: fANOVA, optuna's default, needs scikit-learn
        return ovm.plot_param_importances(s, evaluator=PedAnovaImportanceEvaluator())

    written = []
    for name, draw in (("history", ovm.plot_optimization_history), ("importance", importance)):
        try:
            ax = draw(study)
        except (ValueError, RuntimeError, ImportError) as exc:  # e.g. one trial only
            print(f"[search] no {name} plot: {exc}", flush=True)
            continue
        fig = ax.figure if hasattr(ax, "figure") else ax[0].figure
        fig.set_size_inches(7, 4)
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=90)
        plt.close(fig)
        written.append(name)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, help="total trials (default: search.trials)")
    parser.add_argument(
        "--run-best", action="store_true", help="then run the best as an experiment"
    )
    parser.add_argument("--out", type=Path, default=Path("reports/search"))
    parser.add_argument("--storage", default=os.environ.get("OPTUNA_STORAGE") or LOCAL_STORAGE,
                        help="the study's database URL, shared by every worker "
                        "(default: the local SQLite file; postgresql://user:pass@host/db)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for this worker's TensorFlow (default: all; several "
                        "workers on one machine: its cores ÷ workers)")  # fmt: skip
    args = parser.parse_args()
    if args.threads < 0:
        raise PipelineError("--threads: 0 (all) or more")
    if args.threads:
        limit_threads(args.threads)
    params = load_settings(SearchParams, "search")
    if args.trials is not None:
        params = dataclasses.replace(params, trials=args.trials)
    Prepared.read()  # a clear error when prepare has not run
    train_section = load_params("train")
    apply_overrides(train_section, dict.fromkeys(params.space), params)  # names checked up front
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(params, args.storage)
    trials = _taken(study.get_trials(deepcopy=False))
    finished = [t for t in trials if t.state.is_finished()]
    remaining = max(0, params.trials - len(trials))
    elsewhere = len(trials) - len(finished)
    print(f"[search] study {params.study!r}: {len(finished)} trials done, "
          + (f"{elsewhere} running elsewhere, " if elsewhere else "") + f"{remaining} to go")  # fmt: skip
    shift = shift_settings(params)
    if remaining:
        study.optimize(objective_for(params, train_section, shift), n_trials=remaining,
                       callbacks=[stop_at(params.trials)])  # fmt: skip
    print(write_report(study, params, args.out))
    if args.run_best:
        cmd = dvc_command(study.best_trial.params)
        print(f"[search] {' '.join(cmd)}", flush=True)
        remove, env = dvc("exp", "remove", "search-best")
        subprocess.run(remove, env=env, capture_output=True)
        run_cmd, env = dvc("exp", "run", "--temp", *cmd[3:])  # the workspace stays as it is
        if subprocess.run(run_cmd, env=env).returncode != 0:
            raise PipelineError("the best parameters' experiment failed")
    print(f"[search] report: {args.out}/report.md", file=sys.stderr)


if __name__ == "__main__":
    run_cli(main)
