"""The experiment commands, for real, on the tiny project: the optimizer comparison (DVC
experiments, curves, table) and the Optuna search (pruning, resumable study, best parameters
that ``dvc exp run`` takes, two workers on one study in a real PostgreSQL)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
import yaml

from tests.conftest import run, run_env

pytestmark = pytest.mark.slow


def test_optimizer_comparison_is_one_experiment_per_optimizer(tiny_project, tmp_path):
    out = tmp_path / "optimizers"
    before = run("git status --porcelain", tiny_project).stdout
    printed = run(
        [sys.executable, "-m", "model_preparation.tools.compare", "--out", str(out)], tiny_project
    )
    params = yaml.safe_load((tiny_project / "params.yaml").read_text())["compare"]
    results = json.loads((out / "results.json").read_text())["runs"]
    assert [(r["optimizer"], r["seed"]) for r in results] == [
        (o, s) for o in params["optimizers"] for s in params["seeds"]
    ]
    for r in results:  # one curve per run, a point per epoch, for every curve
        assert {len(v) for v in r["curves"].values()} == {params["epochs"]}
        assert 0 <= r["heldout_accuracy"] <= 1 and r["best_val_loss"] > 0
    report = (out / "report.md").read_text()
    assert all(f"| {o} (" in report for o in params["optimizers"]) and report in printed.stdout
    assert (out / "curves.png").stat().st_size > 10_000
    shown = json.dumps(json.loads(run("dvc exp show --json", tiny_project).stdout))
    assert all(f"opt-{o}-s{params['seeds'][0]}" in shown for o in params["optimizers"])
    # each experiment is a run of the pipeline with its own params: the table shows them
    assert all(f'"optimizer": "{o}"' in shown for o in params["optimizers"])
    assert run("git status --porcelain", tiny_project).stdout == before  # workspace untouched


SEARCH = {  # lr 10 diverges. Seed 6 draws 0.001 twice (trials 0, 1); the resumed run's sampler
    # is seeded 6 + 2 and draws 10.0 first: trial 2 is pruned
    "sampler": "random",
    "pruner": "median",
    "trials": 3,
    "seed": 6,
    "study": "test",
    "epochs": 2,
    "steps_per_epoch": 2,
    "grid_points": 2,
    "space": {"learning_rate": {"choices": [0.001, 10.0]}},
    "objective": "val_loss",
    "shift_images": 24,
}


def search_project(tiny_project, tmp_path):
    """The tiny project's clone with its prepared data and a tiny search section."""
    project = tmp_path / "project"
    run(f"git clone -q {tiny_project} {project}", tmp_path)
    run(f"dvc cache dir {tiny_project / '.dvc/cache'} && dvc checkout -q", project)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["search"] = SEARCH
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return project


def test_search_prunes_resumes_and_its_best_params_run_in_dvc(tiny_project, tmp_path):
    """On the shift-suite objective (the two-worker test below runs on val_loss)."""
    project = search_project(tiny_project, tmp_path)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["search"]["objective"] = "shift"
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = tmp_path / "search"
    search = [sys.executable, "-m", "model_preparation.tools.search", "--out", str(out)]
    run([*search, "--trials", "2"], project)  # interrupted after two trials...
    printed = run(search, project).stdout  # ...and resumed: one more
    assert "2 trials done, 1 to go" in printed
    with (out / "trials.csv").open() as fh:
        trials = list(csv.DictReader(fh))
    assert len(trials) == 3
    assert [t["state"] for t in trials].count("PRUNED") >= 1, trials
    for t in (t for t in trials if t["state"] == "COMPLETE"):  # the value: 1 − the suite's mean
        assert 0 <= float(t["shift_mean"]) <= 1 and float(t["val_loss"]) > 0, t
        assert float(t["objective"]) == pytest.approx(1 - float(t["shift_mean"]), abs=1e-6)
    for t in (t for t in trials if t["state"] == "PRUNED"):  # no shift figure: no objective
        assert t["objective"] == "" and float(t["val_loss"]) > 0, t
    report = (out / "report.md").read_text()
    assert "1 pruned" in report and "**Best: trial" in report
    assert "Objective: the highest shift-suite mean accuracy" in report
    assert "| trial | shift_mean | val_loss | val_accuracy | learning_rate |" in report
    best = yaml.safe_load((out / "best_params.yaml").read_text())
    assert best == {"train": {"learning_rate": 0.001}}
    assert (out / "history.png").exists()
    # the best parameters are what the pipeline takes: dvc exp run trains with them
    sets = " ".join(f"-S train.{k}={v}" for k, v in best["train"].items())
    run(
        f"dvc exp run -q --temp -n best {sets} -S train.epochs=1 -S train.steps_per_epoch=1 train",
        project,
    )
    shown = json.dumps(json.loads(run("dvc exp show --json", project).stdout))
    assert '"best"' in shown and '"learning_rate": 0.001' in shown


def test_search_refuses_a_space_that_is_not_a_train_setting(tiny_project, tmp_path):
    project = search_project(tiny_project, tmp_path)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["search"]["space"] = {"learnin_rate": {"low": 0.001, "high": 0.01}}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = run([sys.executable, "-m", "model_preparation.tools.search"], project, check=False)
    assert (
        result.returncode == 2 and "search.space.learnin_rate: not a train setting" in result.stderr
    )


@pytest.fixture()
def postgres_url():
    """A private PostgreSQL (``local_stack.postgres``), stopped after; CI (REQUIRE_POSTGRES)
    fails where it is not installed."""
    from local_stack.postgres import PostgresMissing, bin_dir, postgres_server

    try:
        bin_dir()
    except PostgresMissing as exc:
        if os.environ.get("REQUIRE_POSTGRES"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    with postgres_server() as url:
        yield url


def test_two_workers_share_one_postgresql_study_and_its_pruner(tiny_project, tmp_path,
                                                               postgres_url):  # fmt: skip
    """Two `make search` processes on one study in a real PostgreSQL: every trial run once, by
    one worker, the total kept, a diverging trial pruned against trials in the database only."""
    import optuna

    from model_preparation.tools.search import storage_url

    project = search_project(tiny_project, tmp_path)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["search"].update(trials=4, study="shared")
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    url = postgres_url
    study = optuna.create_study(study_name="shared", storage=storage_url(url))
    lr = optuna.distributions.CategoricalDistribution([0.001, 10.0])
    for value in (1.1, 1.2):  # two finished trials, known only to the database
        study.add_trial(optuna.trial.create_trial(
            params={"learning_rate": 0.001}, distributions={"learning_rate": lr},
            value=value, intermediate_values={0: value + 0.2, 1: value}))  # fmt: skip
    for value in (10.0, 0.001):  # one for each worker
        study.enqueue_trial({"learning_rate": value})
    search = [sys.executable, "-m", "model_preparation.tools.search", "--storage", url]
    logs = [tmp_path / f"w{i}.log" for i in range(2)]
    workers = [subprocess.Popen([*search, "--out", str(tmp_path / f"w{i}")], cwd=project,
                                env=run_env(), stdout=log.open("w"), stderr=subprocess.STDOUT)
               for i, log in enumerate(logs)]  # fmt: skip
    codes = [w.wait(timeout=600) for w in workers]
    assert codes == [0, 0], [log.read_text()[-3000:] for log in logs]
    trials = optuna.load_study(study_name="shared", storage=storage_url(url)).trials
    ran = trials[2:]
    assert len(trials) == 4, [(t.number, t.state) for t in trials]
    assert all("learning_rate" in t.params for t in ran), [(t.number, t.state) for t in ran]
    states = {t.params["learning_rate"]: set() for t in ran}
    for t in ran:
        states[t.params["learning_rate"]].add(t.state.name)
    assert states == {10.0: {"PRUNED"}, 0.001: {"COMPLETE"}}
    assert len({t.user_attrs["worker"] for t in ran}) == 2, "both workers took trials"
    again = run([*search, "--trials", "5", "--out", str(tmp_path / "w2")], project).stdout
    assert "4 trials done, 1 to go" in again  # resumable, as the local study
    assert (tmp_path / "w2/report.md").exists()


def test_a_search_database_that_does_not_answer_is_one_line_and_exit_2(tiny_project, tmp_path):
    project = search_project(tiny_project, tmp_path)
    dead = "postgresql://test:secret@127.0.0.1:9/optuna"  # nothing listens on port 9
    result = run([sys.executable, "-m", "model_preparation.tools.search", "--storage", dead],
                 project, check=False)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: search storage postgresql://test:***@127.0.0.1:9")
    assert "secret" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
