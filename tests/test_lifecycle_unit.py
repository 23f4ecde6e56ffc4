"""The lifecycle's logic, fast: the statistics on known tables, the labelled gate's rules on
synthetic answers, the live guards on synthetic metrics, the roll-out's decisions with a fake
clock, how answers are compared and Triton's failures classified, and the refusals that need no
server (tests/test_rollout.py and tests/test_lifecycle.py run it all on the real Triton and API
under load)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from imgcls.gateset import GateSet, split_of
from imgcls.gateway.client import compare_top1, failure_kind
from imgcls.lifecycle import (
    Controller,
    GateParams,
    GuardParams,
    LifecycleParams,
    RolloutParams,
    live,
)
from imgcls.lifecycle.gate import judge
from imgcls.lifecycle.rollout import Rollout
from imgcls.model_records import Lifecycle
from imgcls.params import Inconclusive, Refused, UserError
from imgcls.repository import ModelDir, RepositoryError
from imgcls.stats import Paired, binomial_tail, wilson, z_score
from imgcls.triton_control import TritonControl
from model_preparation.publish import publish_model
from tests.models import publish_params, tiny_onnx

GATE = GateParams(min_images=60, margin=0.02, confidence=0.95, class_margin=0.1,
                  min_class_images=20, new_class_min_accuracy=0.8)  # fmt: skip
GUARDS = GuardParams(max_error_rate=0.02, max_latency_ratio=2.0, max_unfamiliar_increase=0.1,
                     max_unknown_increase=0.1, min_agreement=0.6, min_requests=50)  # fmt: skip
ROLLOUT = RolloutParams(steps=(10.0, 50.0), min_step_s=10, max_step_s=60, poll_s=2)
PARAMS = LifecycleParams("shadow", 10, 100, GATE, GUARDS, ROLLOUT)
ABC = ("a", "b", "c")


# -- statistics on known tables ------------------------------------------------------------
def test_wilson_bounds_match_the_closed_form_and_known_values():
    low, high = wilson(0, 50, 0.95)  # one-sided 95 %: upper = z² / (n + z²)
    assert low == 0 and high == pytest.approx(1.6449**2 / (50 + 1.6449**2), rel=1e-4)
    low, high = wilson(933, 1000, 0.95)
    assert (round(low, 3), round(high, 3)) == (0.919, 0.945)
    assert wilson(0, 0) == (0.0, 1.0)  # nothing known
    assert z_score(0.975) == pytest.approx(1.96, abs=1e-3)
    assert z_score(0.9) == pytest.approx(1.2816, abs=1e-4)
    with pytest.raises(ValueError):
        wilson(5, 3)


def test_exact_mcnemar_is_the_binomial_tail():
    assert binomial_tail(8, 10) == pytest.approx((45 + 10 + 1) / 1024)
    assert binomial_tail(5, 5) == pytest.approx(1 / 32)
    assert binomial_tail(0, 0) == 1.0 and binomial_tail(3, 2) == 0.0
    assert Paired(200, 180, 172, worse=10, better=2).mcnemar_p() == pytest.approx(
        binomial_tail(10, 12)
    )
    assert binomial_tail(600, 1000) < 1e-9  # log-space: large n is fine


@pytest.mark.parametrize(
    ("table", "non_inferior"),
    [
        (Paired(300, 270, 270, worse=0, better=0), True),  # the same answers
        (Paired(300, 270, 276, worse=2, better=8), True),  # better
        (Paired(300, 270, 269, worse=3, better=2), True),  # one image worse: within the margin
        (Paired(300, 270, 255, worse=18, better=3), False),  # clearly worse
        (Paired(300, 270, 270, worse=25, better=25), False),  # equal on average, too uncertain
    ],
    ids=["same", "better", "one-worse", "worse", "uncertain"],
)
def test_the_paired_bootstrap_bound_decides_non_inferiority(table, non_inferior):
    assert table.non_inferior(margin=0.02, confidence=0.95) is non_inferior
    assert table.delta_lower_bound(0.95) <= table.delta  # a lower bound
    assert table.delta_lower_bound(0.95) == table.delta_lower_bound(0.95)  # seeded: replayable


def test_paired_answers_count_the_discordant_images():
    paired = Paired.from_answers(np.array([1, 1, 0, 0, 1], bool), np.array([1, 0, 1, 0, 0], bool))
    assert (paired.n, paired.worse, paired.better, paired.delta) == (5, 2, 1, -0.2)
    with pytest.raises(ValueError):
        Paired.from_answers(np.ones(3, bool), np.ones(4, bool))


# -- the gate set's split --------------------------------------------------------------------
def test_the_split_is_decided_by_content_and_never_moves(tmp_path):
    from model_preparation.prepare import PrepareParams, Sample, split

    params = PrepareParams(8, val_fraction=0.2, gate_fraction=0.1, feedback_gate_fraction=0.5,
                           shard_size=10)  # fmt: skip

    def files(prefix: str, n: int) -> list[Sample]:
        out = []
        for i in range(n):
            path = tmp_path / f"{prefix}{i}.png"
            path.write_bytes(f"{prefix} image {i}".encode())
            out.append(Sample(path, 0))
        return out

    first = files("x", 2000)
    before = {s.path: name for name, part in split(first, params).items() for s in part}
    grown = split(first + files("y", 500), params)  # data added: no image changes sides
    after = {s.path: name for name, part in grown.items() for s in part}
    assert all(after[p] == side for p, side in before.items())
    shares = {n: sum(v == n for v in before.values()) / len(before) for n in ("gate", "val")}
    assert shares == {"gate": pytest.approx(0.1, abs=0.025), "val": pytest.approx(0.2, abs=0.03)}
    corrections = files("fb-", 400)  # harvest's corrections: their own, larger gate share
    gate = len(split(corrections, params)["gate"]) / 400
    assert gate == pytest.approx(0.5, abs=0.08)
    assert split_of("0" * 64, 0.1, 0.2) == "gate" and split_of("f" * 64, 0.1, 0.2) == "train"


# -- the labelled gate's rules ---------------------------------------------------------------
def _gate(labels: list[str]) -> GateSet:
    n = len(labels)
    return GateSet(np.zeros((n, 2, 2, 3), np.uint8), tuple(labels),
                   tuple(f"{i:064x}" for i in range(n)), tuple(f"{x}/{i}.png" for i, x in
                                                               enumerate(labels)))  # fmt: skip


def _answers(truth: list[str], wrong: dict[str, int], wrong_as: str = "c") -> tuple[str, ...]:
    """The true labels, with the first ``wrong[class]`` images of each class answered wrongly."""
    seen: dict[str, int] = defaultdict(int)
    out = []
    for t in truth:
        seen[t] += 1
        out.append((wrong_as if t != wrong_as else "a") if seen[t] <= wrong.get(t, 0) else t)
    return tuple(out)


def test_a_clearly_worse_candidate_is_refused_with_the_evidence():
    truth = ["a"] * 100 + ["b"] * 100 + ["c"] * 100
    decision = judge(_gate(truth), tuple(truth), _answers(truth, {"a": 15, "b": 10}), ABC, ABC,
                     GATE)  # fmt: skip
    assert decision.decision == "refuse"
    assert any("lower bound" in r and "McNemar" in r for r in decision.reasons), decision.reasons
    known = decision.report["known"]
    assert (known["worse"], known["better"], known["images"]) == (25, 0, 300)
    assert known["serving_accuracy"]["value"] == 1.0 and known["delta"] == pytest.approx(-25 / 300)
    assert decision.report["per_class"]["a"]["delta"] == pytest.approx(-0.15)
    assert decision.report["confusion"]["candidate"]["a"] == {"a": 85, "c": 15}
    assert decision.report["changed_total"] == 25 and decision.report["changed"][0]["label"] == "a"


def test_a_candidate_with_a_class_added_and_no_worse_passes():
    truth = ["a"] * 100 + ["b"] * 100 + ["c"] * 100 + ["d"] * 40
    serving = tuple("a" if t == "d" else t for t in truth)  # it cannot know d
    candidate = _answers(truth, {"d": 3}, wrong_as="b")
    decision = judge(_gate(truth), serving, candidate, ABC, (*ABC, "d"), GATE)
    assert decision.decision == "pass", decision.reasons
    assert decision.report["known"]["images"] == 300 and decision.report["known"]["delta"] == 0
    assert decision.report["new_classes"]["d"]["candidate"]["value"] == pytest.approx(37 / 40)


def test_a_class_that_drops_is_refused_even_when_the_whole_is_no_worse():
    truth = ["a"] * 100 + ["b"] * 100 + ["c"] * 100
    serving = _answers(truth, {"b": 15}, wrong_as="c")  # serving misses 15 b
    candidate = _answers(truth, {"a": 15}, wrong_as="c")  # the candidate misses 15 a instead
    wide = GateParams(60, 0.2, 0.95, 0.1, 20, 0.8)  # overall: within a wide margin
    decision = judge(_gate(truth), serving, candidate, ABC, ABC, wide)
    assert decision.decision == "refuse" and len(decision.reasons) == 1, decision.reasons
    assert "class a drops -0.150" in decision.reasons[0]


@pytest.mark.parametrize(
    ("counts", "wrong_d", "decision", "reason"),
    [
        ({"a": 10, "b": 10, "c": 10}, 0, "inconclusive", "only 30 gate images"),
        ({"a": 100, "b": 100, "c": 100, "d": 5}, 0, "inconclusive", "only 5 gate images of the new class d"),
        ({"a": 100, "b": 100, "c": 100, "d": 40}, 20, "refuse", "new class d: accuracy 0.500"),
    ],
    ids=["too-few-images", "new-class-too-few", "new-class-unlearnt"],
)  # fmt: skip
def test_new_classes_and_small_gate_sets(counts, wrong_d, decision, reason):
    truth = [c for c, n in counts.items() for _ in range(n)]
    serving = tuple("a" if t == "d" else t for t in truth)
    candidate = _answers(truth, {"d": wrong_d}, wrong_as="b")
    labels = (*ABC, "d") if "d" in counts else ABC
    result = judge(_gate(truth), serving, candidate, ABC, labels, GATE)
    assert result.decision == decision and any(reason in r for r in result.reasons), result.reasons


def test_a_candidate_whose_labels_contradict_the_gate_set_is_refused():
    truth = ["a"] * 100 + ["b"] * 100 + ["c"] * 100
    result = judge(_gate(truth), tuple(truth), tuple(truth), ABC, ("a", "b"), GATE)
    assert result.decision == "refuse" and "cannot answer c" in result.reasons[0]


def test_a_gate_set_of_other_classes_is_an_error_not_a_decision():
    with pytest.raises(UserError, match="share none with the serving version"):
        judge(_gate(["x"] * 200), ("x",) * 200, ("x",) * 200, ABC, ("x",), GATE)


@pytest.mark.parametrize(
    "content", [None, b"not an npz", "empty"], ids=["missing", "junk", "empty"]
)
def test_a_missing_broken_or_empty_gate_set_is_a_clear_error(tmp_path, content):
    path = tmp_path / "gate.npz"
    if content == "empty":
        GateSet.empty(8).save(path)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError, match="gate set"):
        GateSet.load(path)


# -- the live guards -------------------------------------------------------------------------
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, float("inf"))


class Traffic:
    """Cumulative API metrics, as ``live.read`` returns them, grown call by call."""

    def __init__(self) -> None:
        self.series: dict = defaultdict(float)

    def _add(self, name: str, value: float = 1.0, **labels: str) -> None:
        self.series[(name, tuple(sorted(labels.items())))] += value

    def calls(self, version: str, role: str, n: int, seconds: float = 0.02, errors: int = 0,
              unfamiliar: int = 0, unknown: int | None = 0, model: str = "m") -> None:  # fmt: skip
        labels = {"model": model, "version": version, "role": role}
        self._add("api_model_requests_total", n, **labels)
        self._add("api_model_errors_total", errors, **labels, kind="error")
        self._add("api_model_images_total", n, **labels)
        self._add("api_model_unfamiliar_total", unfamiliar, **labels)
        if unknown is not None:  # None: a version without the unknown-class output
            self._add("api_model_unknown_total", unknown, **labels)
        for le in BUCKETS:
            self._add("api_model_request_duration_seconds_bucket", n if seconds <= le else 0,
                      **labels, le="+Inf" if le == float("inf") else repr(le))  # fmt: skip

    def compared(self, agree: int, disagree: int, serving="1", candidate="2", model="m") -> None:
        for outcome, n in (("agree", agree), ("disagree", disagree)):
            self._add("api_candidate_comparisons_total", n, model=model, serving=serving,
                      candidate=candidate, outcome=outcome)  # fmt: skip

    def read(self, _urls=()) -> dict:
        return dict(self.series)


def _health(**candidate) -> live.StepHealth:
    t = Traffic()
    t.calls("1", "serving", 500)
    t.calls("2", "canary", 60, **candidate)
    t.compared(57, 3)
    return live.health(t.read(), "m", 1, 2, GUARDS)


def test_a_healthy_candidate_passes_every_guard():
    h = _health()
    assert h.judged and not h.failed, h.line()


@pytest.mark.parametrize(
    ("candidate", "guard"),
    [
        ({"errors": 5}, "errors"),
        ({"seconds": 0.4}, "p99"),
        ({"unfamiliar": 20}, "unfamiliar"),
        ({"unknown": 20}, "unknown"),
    ],
    ids=["errors", "slow", "unfamiliar", "unknown"],
)
def test_a_failing_candidate_fails_its_guard(candidate, guard):
    h = _health(**candidate)
    assert [g.name for g in h.failed] == [guard], h.line()


def test_the_unknown_guard_is_not_measured_where_a_version_has_no_such_output():
    def unknown(serving: int | None, candidate: int | None, n: int = 60) -> live.Guard:
        t = Traffic()
        t.calls("1", "serving", 500, unknown=serving)
        t.calls("2", "canary", n, unknown=candidate)
        return next(g for g in live.health(t.read(), "m", 1, 2, GUARDS).guards
                    if g.name == "unknown")  # fmt: skip

    assert unknown(25, 3).ok is True  # 0.05 vs 0.05: no rise
    assert unknown(25, 12).ok is False  # 0.20 vs 0.05: +0.15 past +0.1
    older = unknown(None, 12)  # the serving version predates the output: nothing to compare
    assert older.ok is True and "not measured" in older.value
    assert unknown(25, 3, n=10).ok is None  # too few calls: waiting


def test_latency_is_judged_on_canary_answers_not_on_background_shadow_calls():
    def p99(role: str) -> live.Guard:
        t = Traffic()
        t.calls("1", "serving", 500)
        t.calls("2", role, 60, seconds=0.4)  # 20 times the serving version's
        return next(g for g in live.health(t.read(), "m", 1, 2, GUARDS).guards
                    if g.name == "p99")  # fmt: skip

    assert p99("canary").ok is False
    shadow = p99("shadow")
    assert shadow.ok is True and "background" in shadow.value, shadow


def test_agreement_catches_a_broken_candidate_but_not_a_correct_disagreement():
    def agreement(agree: int, total: int):
        t = Traffic()
        t.calls("1", "serving", 500)
        t.calls("2", "shadow", total)
        t.compared(agree, total - agree)
        return next(g for g in live.health(t.read(), "m", 1, 2, GUARDS).guards
                    if g.name == "agreement")  # fmt: skip

    assert agreement(1021, 1096).ok is True  # the README's 0.933: a correct candidate
    assert agreement(20, 60).ok is False  # a third: wrong labels or preprocessing
    assert agreement(20, 30).ok is None  # too few to judge: waiting


def test_metrics_are_parsed_summed_and_differenced_per_window():
    text = (
        '# HELP api_model_requests_total x\n'
        'api_model_requests_total{model="m",role="canary",version="2"} 30.0\n'
        'api_model_requests_total{model="m",role="serving",version="1"} 300.0\n'
        'api_other_total{model="m"} 5.0\n'
    )  # fmt: skip
    now = live.parse(text)
    assert len(now) == 2  # only the watched series
    before = {k: v / 2 for k, v in now.items()}
    window = live.delta(now, before)
    assert sorted(window.values()) == [15.0, 150.0]
    reset = live.delta({k: 1.0 for k in now}, now)  # a restarted replica counts from zero
    assert set(reset.values()) == {1.0}


def test_every_address_of_an_api_host_is_a_replica(monkeypatch):
    import socket

    def addresses(host, port, type=0):
        return [(socket.AF_INET, type, 6, "", (ip, port)) for ip in ("10.0.0.5", "10.0.0.6")]

    monkeypatch.setattr(socket, "getaddrinfo", addresses)
    assert live.endpoints(["http://api-headless:5000", "api-headless:5000"]) == [
        "http://10.0.0.5:5000/metrics", "http://10.0.0.6:5000/metrics"]  # fmt: skip


def test_the_latency_quantile_interpolates_within_a_bucket():
    t = Traffic()
    t.calls("1", "serving", 100, seconds=0.04)
    assert 0.025 < live.quantile(t.read(), 0.99, version="1") <= 0.05


# -- the roll-out's decisions (no server: Triton unreachable, metrics simulated) ----------------
def _repo(tmp_path: Path, candidate_weights=None) -> Path:
    repo = tmp_path / "repo"
    publish_model("m", tiny_onnx(tmp_path / "a.onnx"), list(ABC), repo, publish_params(), 0.97)
    candidate = tiny_onnx(tmp_path / "b.onnx", scale=2.0, weights=candidate_weights)
    publish_model("m", candidate, list(ABC), repo, publish_params(), 0.97)
    return repo


def _gate_set(tmp_path: Path, per_class: int = 40) -> Path:
    """Images whose dominant channel is their class (what ``tiny_onnx`` answers)."""
    rng = np.random.default_rng(0)
    images, labels = [], []
    for k, label in enumerate(ABC):
        for _ in range(per_class):
            img = rng.integers(20, 60, (8, 8, 3)).astype(np.uint8)
            img[..., k] = 200
            images.append(img)
            labels.append(label)
    n = len(labels)
    path = tmp_path / "gate.npz"
    GateSet(np.stack(images), tuple(labels), tuple(f"{i:064x}" for i in range(n)),
            tuple(f"{x}/{i}" for i, x in enumerate(labels))).save(path)  # fmt: skip
    return path


def _controller(repo: Path, lines: list[str], gate_set: Path | None = None) -> Controller:
    # nothing answers on this port: no Triton, no API
    return Controller(repo, TritonControl("127.0.0.1:9", "k", timeout=1), ["http://127.0.0.1:9"],
                      PARAMS, say=lines.append, gate_set=gate_set or Path("nowhere.npz"))  # fmt: skip


class Clock:
    def __init__(self, traffic: Traffic, per_poll) -> None:
        self.now, self.traffic, self.per_poll = 0.0, traffic, per_poll

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.per_poll(self.traffic, self.now)


class LoadingTriton:
    """Stands in for Triton's control API in the roll-out's *unit* tests: every load succeeds
    and readies what the config names (test_rollout.py runs the real one)."""

    base = "http://triton.invalid"

    def __init__(self, repo: Path) -> None:
        self.repo = repo

    def reachable(self) -> bool:
        return True

    def load(self, model: str) -> None:
        pass

    def ready_versions(self, model: str) -> set[int]:
        return set(ModelDir(self.repo, model).state().loaded)


def _rollout(repo, gate_set, lines, per_poll, monkeypatch) -> Traffic:
    traffic = Traffic()
    monkeypatch.setattr(live, "read", traffic.read)
    clock = Clock(traffic, per_poll)
    ctl = Controller(repo, LoadingTriton(repo), ["http://api.invalid"], PARAMS, say=lines.append,
                     gate_set=gate_set)  # fmt: skip
    Rollout(ctl, clock=clock, sleep=clock.sleep).run()
    return traffic


def _healthy(t: Traffic, now: float) -> None:
    t.calls("1", "serving", 40)
    t.calls("2", "canary", 10)
    t.compared(10, 0)


def test_a_rollout_that_passes_every_step_promotes(tmp_path, monkeypatch):
    repo, lines = _repo(tmp_path), []
    _rollout(repo, _gate_set(tmp_path), lines, _healthy, monkeypatch)
    model = ModelDir(repo, "m")
    assert model.state() == Lifecycle(serving=2, previous=1)
    steps = [e["step"] for e in model.history() if e["event"] == "rollout"]
    assert steps == ["gate", "shadow", "shadow passed", "canary", "canary passed", "canary",
                     "canary passed", "promoted"]  # fmt: skip
    assert json.loads((repo / "m/2/gate.json").read_text())["decision"] == "pass"


def test_a_candidate_the_gate_refuses_is_dropped_and_never_serves(tmp_path, monkeypatch):
    repo, lines = _repo(tmp_path, candidate_weights=[[0, 1, 0], [1, 0, 0], [0, 0, 1]]), []
    ModelDir(repo, "m").write_config(Lifecycle(1, 2, "shadow", 100))  # as on_publish left it
    with pytest.raises(Refused, match="labelled gate refused"):
        _rollout(repo, _gate_set(tmp_path), lines, _healthy, monkeypatch)
    model = ModelDir(repo, "m")
    assert model.state() == Lifecycle(serving=1)
    assert not [e for e in model.history() if e["event"] in ("canary", "promote")]
    report = json.loads((repo / "m/2/gate.json").read_text())
    assert report["decision"] == "refuse" and report["per_class"]["a"]["candidate"] == 0.0


def test_a_guard_that_fails_during_canary_rolls_back_with_the_reason(tmp_path, monkeypatch):
    repo, lines = _repo(tmp_path), []

    def slow_in_canary(t: Traffic, now: float) -> None:
        t.calls("1", "serving", 40)
        t.calls("2", "canary", 10, seconds=0.3 if now > 14 else 0.02)  # after the shadow step
        t.compared(10, 0)

    with pytest.raises(Refused, match=r"rolled back: canary 10 %: m: .*p99"):
        _rollout(repo, _gate_set(tmp_path), lines, slow_in_canary, monkeypatch)
    model = ModelDir(repo, "m")
    assert model.state() == Lifecycle(serving=1)
    last = model.history()[-1]
    assert last["event"] == "rollout" and last["step"] == "rolled back" and "p99" in last["detail"]


def test_too_little_traffic_leaves_the_candidate_in_place_inconclusive(tmp_path, monkeypatch):
    repo, lines = _repo(tmp_path), []

    def trickle(t: Traffic, now: float) -> None:
        t.calls("1", "serving", 2)
        t.calls("2", "canary", 0)

    with pytest.raises(Inconclusive, match="too little traffic to judge the shadow"):
        _rollout(repo, _gate_set(tmp_path), lines, trickle, monkeypatch)
    assert ModelDir(repo, "m").state() == Lifecycle(1, 2, "shadow", 100)  # left, with the reason


def test_a_gate_with_too_few_images_changes_nothing(tmp_path, monkeypatch):
    repo, lines = _repo(tmp_path), []
    with pytest.raises(Inconclusive, match="only 30 gate images"):
        _rollout(repo, _gate_set(tmp_path, per_class=10), lines, _healthy, monkeypatch)
    assert ModelDir(repo, "m").state() == Lifecycle(serving=1)


def test_nothing_to_roll_out_is_a_no_op(tmp_path, monkeypatch):
    repo, lines = _repo(tmp_path), []
    ModelDir(repo, "m").write_config(Lifecycle(serving=2, previous=1))
    _rollout(repo, _gate_set(tmp_path), lines, _healthy, monkeypatch)
    assert "nothing to roll out" in lines[-1]


# -- promote, rollback and the commands' refusals ------------------------------------------------
def test_promote_runs_the_labelled_gate_and_a_refusal_changes_nothing(tmp_path):
    repo = _repo(tmp_path, candidate_weights=[[0, 1, 0], [1, 0, 0], [0, 0, 1]])
    model = ModelDir(repo, "m")
    model.write_config(Lifecycle(1, 2, "canary", 10))
    config = model.config_path.read_text()
    with pytest.raises(Refused, match="promotion refused, nothing changed"):
        _controller(repo, [], _gate_set(tmp_path)).promote(None, force=False)
    assert model.config_path.read_text() == config
    _controller(repo, [], _gate_set(tmp_path)).promote(None, force=True)  # the manual override
    assert model.state() == Lifecycle(serving=2, previous=1)


def test_promote_without_a_gate_set_is_refused_and_a_second_promote_is_a_no_op(tmp_path):
    repo, lines = _repo(tmp_path), []
    ModelDir(repo, "m").write_config(Lifecycle(1, 2, "canary", 10))
    with pytest.raises(Refused, match="no labelled evidence: no gate set"):
        _controller(repo, lines).promote(None, force=False)
    _controller(repo, lines, _gate_set(tmp_path)).promote(None, force=False)
    _controller(repo, lines, _gate_set(tmp_path)).promote(2, force=False)
    assert lines[-1] == "m: version 2 already serves: nothing to do"


def test_offline_changes_are_written_for_the_next_start_and_said_so(tmp_path):
    repo, lines = _repo(tmp_path), []
    _controller(repo, lines).start_candidate("shadow", None, 50)
    assert ModelDir(repo, "m").state() == Lifecycle(1, 2, "shadow", 50)
    assert any("Triton is not reachable" in line for line in lines), lines
    _controller(repo, lines).rollback(None)
    assert ModelDir(repo, "m").state() == Lifecycle(1)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: c.start_candidate("canary", 2, 100.5), "within 0–100"),
        (lambda c: c.start_candidate("canary", 1, 10), "version 1 already serves"),
        (lambda c: c.start_candidate("canary", 9, 10), "has no version 9"),
        (lambda c: c.promote(None, force=False), "has no candidate"),
        (lambda c: c.rollback(None), "nothing to roll back to"),
        (lambda c: c.status(["nope"]), "no model nope"),
    ],
    ids=["share", "serving", "missing", "no-candidate", "no-previous", "unknown-model"],
)
def test_bad_commands_are_refused_clearly(tmp_path, call, message):
    repo = _repo(tmp_path)
    config = ModelDir(repo, "m").config_path.read_text()
    with pytest.raises(RepositoryError, match=message):
        call(_controller(repo, []))
    assert ModelDir(repo, "m").config_path.read_text() == config


def test_the_cli_exit_codes_are_distinct_and_once_makes_a_rerun_a_no_op(tmp_path, capsys):
    import subprocess
    import sys

    repo = _repo(tmp_path, candidate_weights=[[0, 1, 0], [1, 0, 0], [0, 0, 1]])
    gate_set = _gate_set(tmp_path)

    def cli(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "imgcls.lifecycle", "--repository", str(repo),
               "--triton-url", "127.0.0.1:9", "--api-url", "http://127.0.0.1:9",
               "--gate-set", str(gate_set), *args]  # fmt: skip
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)

    assert cli("bogus").returncode == 2
    refused = cli("gate")
    assert refused.returncode == 3 and refused.stderr.startswith("refused:"), refused.stderr
    (tmp_path / "few").mkdir()
    gate_set = _gate_set(tmp_path / "few", per_class=5)
    assert cli("gate").returncode == 4
    first = cli("--once", "k1", "shadow", "--percent", "20")
    assert first.returncode == 0, first.stderr
    again = cli("--once", "k1", "rollback")
    assert again.returncode == 0 and "was done already: nothing to do" in again.stdout
    assert ModelDir(repo, "m").state() == Lifecycle(1, 2, "shadow", 20)


# -- answers, failures, settings ------------------------------------------------------------------
def test_answers_are_compared_by_label_name_and_new_classes_count_apart():
    serving = ("circle", "square", "triangle")
    candidate = ("circle", "square", "star", "triangle")  # a class added, the order shifted
    s = np.eye(3)[[0, 1, 2, 2]]
    c = np.eye(4)[[0, 3, 3, 2]]  # circle=circle, triangle≠square, triangle=triangle, star
    outcomes = compare_top1(serving, candidate, s, c)
    assert outcomes == {"agree": 2, "disagree": 1, "new_label": 1}


@pytest.mark.parametrize(
    ("status", "text", "kind"),
    [
        (404, "Request for unknown model: 'm' version 2 is not found", "unavailable"),
        (503, "Request for unknown model: 'm' version 1 is not at ready state", "unavailable"),
        (400, "unexpected shape for input 'image' ... not found in the model", "error"),
        (504, "deadline exceeded", "timeout"),
        (500, "model is not ready", "error"),  # the status decides, not the words
        (None, "failed to connect: model unavailable", "unavailable"),  # no status: the words
        (None, "request timeout", "timeout"),
        (None, "something else", "error"),
    ],
)
def test_triton_failures_are_classified_by_status_first(status, text, kind):
    assert failure_kind(status, text) == kind


def test_a_drift_output_the_config_dropped_makes_the_api_route_again():
    """A version without a drift reference loaded beside one with it: the config stops declaring
    the output, and a request still asking for it is routed again (retried), not a 502."""
    from tritonclient.utils import InferenceServerException

    from imgcls.gateway.client import TritonGateway, VersionGone
    from imgcls_api.settings import Settings

    gateway = TritonGateway(Settings())
    exc = InferenceServerException("unexpected inference output 'drift' for model 'resnet50v2'",
                                   status="400")  # fmt: skip
    assert isinstance(gateway._translate(exc, "resnet50v2", ""), VersionGone)
    other = InferenceServerException("unexpected inference output 'logits'", status="400")
    assert gateway._translate(other, "resnet50v2", "").status == 502


@pytest.mark.parametrize(
    ("section", "field", "value"),
    [
        (None, "on_publish", "always"),
        (None, "canary_percent", 120.0),
        ("gate", "margin", 1.5),
        ("gate", "min_images", 0),
        ("guards", "max_latency_ratio", 0.5),
        ("rollout", "steps", (50.0, 10.0)),
    ],
)
def test_lifecycle_settings_are_checked(section, field, value):
    from dataclasses import asdict

    raw = asdict(PARAMS)
    target = raw if section is None else raw[section]
    target[field] = value
    with pytest.raises(UserError, match=field):
        LifecycleParams(raw["on_publish"], raw["canary_percent"], raw["shadow_percent"],
                        GateParams(**raw["gate"]), GuardParams(**raw["guards"]),
                        RolloutParams(**raw["rollout"]))  # fmt: skip
