"""`make rollout` decides on evidence, on the real Triton and API, under 16 clients whose every
answer must be 200 with the labels of the version it names:

- (a) a clearly worse candidate (the suite's label-shuffled model) is refused by the labelled gate
  and never answers a user;
- (b) a candidate with a class added, fine-tuned from the serving version, is promoted through
  shadow and canary steps by itself, although its live agreement is below the old gate's 0.95 —
  after the roll-out was SIGKILLed at each step, each time leaving a consistent state that
  `status` describes;
- (c) a candidate that passes the gate but is much slower is rolled back during canary;
- the API or Triton gone mid-step: rolled back, saying why.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from imgcls.model_records import Lifecycle
from imgcls.preprocessing import load_image
from imgcls.repository import ModelDir
from model_preparation.onnx_utils import session
from model_preparation.publish import publish_model
from tests import stacks
from tests.load import Load
from tests.models import publish_params, slowed

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SIZE = 48
OLD_MIN_AGREEMENT = 0.95  # the gate before this one promoted on live agreement above it
# The rules as params.yaml has them, with holds short enough for a test, and margins for the
# suite's small models and 189-image gate set (params.yaml's 0.02 is for the 300 of the demo data
# and more). The grown candidate must pass on any CPU: trained in bfloat16 (AMX) its lower bound
# was -0.027, in float32 (what `auto` trains in on a CPU without bfloat16 units) -0.058, with its
# triangles 0.98 -> 0.84 (stars taken for triangles; 2026-12-04). The shuffled control the gate
# must refuse is near chance on every class.
LIFECYCLE = {
    "shadow_percent": 100,
    "gate": {"min_images": 100, "margin": 0.08, "class_margin": 0.2, "min_class_images": 20,
             "new_class_min_accuracy": 0.7},
    "guards": {"min_requests": 40, "max_latency_ratio": 3.0},
    "rollout": {"steps": [10, 50], "min_step_s": 4, "max_step_s": 90, "poll_s": 0.5},
}  # fmt: skip


def _answers_are_right(load: Load, repo: Path) -> None:
    """Every answer 200, its labels those of the version it names."""
    wrong = [(round(a.sent - load.answers[0].sent, 2), a.status, a.body) for a in load.answers
             if a.status != 200]  # fmt: skip
    assert not wrong, (wrong[:5], ModelDir(repo, "resnet50v2").history()[-12:])
    labels = {v: tuple(ModelDir(repo, "resnet50v2").version(v).labels)
              for v in ModelDir(repo, "resnet50v2").versions()}  # fmt: skip
    for a in load.answers:
        version = int(a.body["model"]["version"])
        got = sorted(p["label"] for p in a.body["predictions"])
        assert got == sorted(labels[version]), (version, got)


def _images(project: Path, classes=("circle", "square", "triangle"), per_class: int = 10):
    return [p for c in classes for p in sorted((project / "data/raw" / c).glob(f"{c}_*.jpg"))
            [:per_class]]  # fmt: skip


def _events(repo: Path) -> list[str]:
    return [e["step"] for e in ModelDir(repo, "resnet50v2").history() if e["event"] == "rollout"]


def test_a_clearly_worse_candidate_is_refused_by_the_gate_and_never_answers(
    model_repository, tiny_project, shuffled_control, tmp_path
):
    labels = (shuffled_control.parents[1] / "artifacts/prepared/labels.txt").read_text().split()
    gate_set = tiny_project / "artifacts/gate.npz"
    with stacks.stack(model_repository, gate_set, tmp_path, LIFECYCLE) as stack:
        publish_model("resnet50v2", shuffled_control, labels, stack.repo,
                      publish_params(max_batch_size=16), 0.3)  # fmt: skip
        with Load(f"{stack.api.url}/predict", [p.read_bytes() for p in _images(tiny_project)]):
            result = stack.cli("rollout")
            time.sleep(1)
        # the candidate was never loaded: Triton has version 1 only
        loaded = requests.get(
            f"http://{stack.triton.url}/v2/models/resnet50v2/versions/2/ready", timeout=10
        )
    assert result.returncode == 3, (result.stdout, result.stderr)
    assert "refused: the labelled gate refused the candidate: resnet50v2:" in result.stderr
    report = json.loads((stack.repo / "resnet50v2/2/gate.json").read_text())
    assert report["decision"] == "refuse" and report["known"]["delta"] < -0.3, report["known"]
    assert ModelDir(stack.repo, "resnet50v2").state() == Lifecycle(serving=1)
    assert _events(stack.repo) == ["gate", "refused"]
    assert loaded.status_code != 200
    print(f"\n(a) refused: {report['known']['candidate_accuracy']['value']:.3f} vs "
          f"{report['known']['serving_accuracy']['value']:.3f} on {report['known']['images']} "
          f"gate images, McNemar p {report['known']['mcnemar_p']:.2g}")  # fmt: skip


def _mixed_load(grown: Path, repo: Path) -> list[Path]:
    """Known-class images with a few on which version 2 answers otherwise than version 1 (so live
    agreement is below the old gate's bar), and images of the new class."""
    v1, v2 = (session(repo / f"resnet50v2/{v}/model.onnx") for v in (1, 2))
    labels = {1: ModelDir(repo, "resnet50v2").version(1).labels,
              2: ModelDir(repo, "resnet50v2").version(2).labels}  # fmt: skip
    agree, disagree = [], []
    for path in _images(grown, per_class=40):
        x = load_image(path, SIZE)[None]
        a = labels[1][v1.run(None, {"image": x})[0].argmax()]
        b = labels[2][v2.run(None, {"image": x})[0].argmax()]
        (agree if a == b else disagree).append(path)
    assert disagree, "versions 1 and 2 agree on every known-class image tried"
    return agree[:24] + disagree[:4] + _images(grown, ("star",), per_class=6)


def _count(metrics: str, outcome: str) -> float:
    return sum(float(v) for v in re.findall(
        rf'^api_candidate_comparisons_total{{candidate="2",model="resnet50v2",outcome="{outcome}"'
        rf',serving="1"}} (\S+)$', metrics, re.M))  # fmt: skip


def _copy_candidate(repo: Path, served: Path) -> None:
    """Version 2 of the FP32 model: ``served`` (a served graph) with version 1's record."""
    model = ModelDir(repo, "resnet50v2")
    with model.lock():
        model.add_version(served, model.version(1))
        model.log("publish", version=2)


def _slow_candidate(repo: Path, tmp_path: Path) -> None:
    """Version 1's served graph made much slower (the same answers)."""
    _copy_candidate(repo, slowed(repo / "resnet50v2/1/model.onnx", tmp_path / "slow.onnx"))


def test_a_slow_candidate_is_rolled_back_during_canary(model_repository, tiny_project, tmp_path):
    no_shadow = {**LIFECYCLE, "shadow_percent": 0}  # straight to canary: the step under test
    gate_set = tiny_project / "artifacts/gate.npz"
    with stacks.stack(model_repository, gate_set, tmp_path, no_shadow) as stack:
        _slow_candidate(stack.repo, tmp_path)
        with Load(f"{stack.api.url}/predict", [p.read_bytes() for p in _images(tiny_project)]) \
                as load:  # fmt: skip
            result = stack.cli("rollout")
            back = time.monotonic()
            time.sleep(2)
    assert result.returncode == 3, (result.stdout, result.stderr)
    assert re.search(r"rolled back: canary \d+ %: resnet50v2: .*p99 .*\(FAILED\)", result.stderr)
    assert ModelDir(stack.repo, "resnet50v2").state() == Lifecycle(serving=1)
    _answers_are_right(load, stack.repo)
    versions = [a.body["model"]["version"] for a in load.answers]
    assert "2" in versions  # it did answer users, during the canary…
    assert {a.body["model"]["version"] for a in load.answers if a.sent > back} == {"1"}  # …no more
    assert _events(stack.repo)[-1] == "rolled back"
    print("\n(c) " + result.stderr.strip().splitlines()[-1][:300])


def _wait_for_step(repo: Path, proc, step: str, nth: int, timeout: float = 120) -> None:
    """Until this run has logged ``step`` ``nth`` times (the history keeps earlier runs')."""
    target = _events(repo).count(step) + nth
    deadline = time.monotonic() + timeout
    while _events(repo).count(step) < target:
        assert proc.poll() is None, "rollout ended early:\n" + "\n".join(proc.communicate())
        assert time.monotonic() < deadline, f"no {step!r} step within {timeout} s"
        time.sleep(0.05)


def test_a_class_added_is_promoted_by_itself_even_after_being_killed_at_each_step(
    grown_project, tmp_path
):
    """(b), and SIGKILL at every step: each kill leaves the serving version serving and the
    candidate a candidate or gone, `status` says so, and the next `rollout` goes through the
    gate, shadow and both canary steps to promotion by itself — for every variant — although live
    agreement is below the old gate's bar (the README's 0.933 case)."""
    repo = grown_project / "model_repository"
    with stacks.stack(repo, grown_project / "artifacts/gate.npz", tmp_path, LIFECYCLE) as stack:
        images = _mixed_load(grown_project, stack.repo)
        with Load(f"{stack.api.url}/predict", [p.read_bytes() for p in images], limit=600) as load:
            # the gate, the shadow step, the canary at 10 %, the canary at 50 %
            for step, nth in (("gate", 1), ("shadow", 1), ("canary", 1), ("canary", 2)):
                proc = stack.start("rollout", "--model", "resnet50v2")  # the FP32 model's steps
                _wait_for_step(stack.repo, proc, step, nth)
                stacks.kill(proc)
                state = ModelDir(stack.repo, "resnet50v2").state()
                assert state.serving == 1 and state.candidate in (None, 2), (step, state)
                status = stack.cli("status")
                assert status.returncode == 0, status.stderr
                assert "interrupted" in status.stdout and "make rollout" in status.stdout
            started = len(_events(stack.repo))
            result = stack.cli("rollout")
            promoted = time.monotonic()
            time.sleep(2)
        metrics = requests.get(f"{stack.api.url}/metrics", timeout=10).text
    assert result.returncode == 0, (result.stdout, result.stderr)
    for name in ("resnet50v2", "resnet50v2_int8", "resnet50v2_bf16"):
        assert ModelDir(stack.repo, name).state() == Lifecycle(serving=2, previous=1), name
    assert _events(stack.repo)[started:] == ["gate", "shadow", "shadow passed", "canary",
                                             "canary passed", "canary", "canary passed",
                                             "promoted"]  # fmt: skip
    _answers_are_right(load, stack.repo)
    assert {a.body["model"]["version"] for a in load.answers if a.sent > promoted} == {"2"}
    agree = _count(metrics, "agree")
    compared = agree + _count(metrics, "disagree")
    assert compared and agree / compared < OLD_MIN_AGREEMENT, (agree, compared)
    report = json.loads((stack.repo / "resnet50v2/2/gate.json").read_text())
    assert report["decision"] == "pass" and report["new_classes"]["star"]["images"] >= 20
    print(f"\n(b) promoted with live agreement {agree / compared:.3f} ({compared:.0f} compared); "
          f"gate: {report['known']['candidate_accuracy']['value']:.3f} vs "
          f"{report['known']['serving_accuracy']['value']:.3f}, star "
          f"{report['new_classes']['star']['candidate']['value']:.3f}")  # fmt: skip


@pytest.mark.parametrize("gone", ["api", "triton"])
def test_the_api_or_triton_gone_mid_rollout_rolls_back_and_says_why(grown_project, tmp_path, gone):
    repo = grown_project / "model_repository"
    with stacks.stack(repo, grown_project / "artifacts/gate.npz", tmp_path, LIFECYCLE) as stack:
        images = [p.read_bytes() for p in _mixed_load(grown_project, stack.repo)]
        with Load(f"{stack.api.url}/predict", images, limit=120):
            proc = stack.start("rollout", "--model", "resnet50v2")  # one variant is enough here
            _wait_for_step(stack.repo, proc, "canary", 1)
            (stack.api if gone == "api" else stack.triton).stop()
            out, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, (out, err)
    assert "rolled back: canary 10 %" in err, err
    reason = {"api": "metrics are not reachable", "triton": "Triton is not reachable"}[gone]
    assert reason in err, err
    state = ModelDir(stack.repo, "resnet50v2").state()
    assert state.serving == 1 and state.candidate is None


def test_a_gate_set_that_does_not_fit_changes_nothing(model_repository, tmp_path):
    from imgcls.gateset import GateSet

    other = tmp_path / "other.npz"
    GateSet(np.zeros((150, SIZE, SIZE, 3), np.uint8), ("cat",) * 150,
            tuple(f"{i:064x}" for i in range(150)), ("x",) * 150).save(other)  # fmt: skip
    repo = tmp_path / "copy"
    shutil.copytree(model_repository, repo)
    with stacks.stack(repo, other, tmp_path / "s", LIFECYCLE) as stack:
        _copy_candidate(stack.repo, stack.repo / "resnet50v2/1/model.onnx")
        result = stack.cli("rollout")
    assert result.returncode == 2 and "share none with the serving version" in result.stderr
    assert ModelDir(stack.repo, "resnet50v2").state() == Lifecycle(serving=1)
