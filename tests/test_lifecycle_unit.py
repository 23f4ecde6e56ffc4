"""The lifecycle's pure logic, fast: the promotion gate, how answers are compared, how Triton's
failures are classified, and the refusals that need no server (tests/test_lifecycle.py runs the
whole thing against the real Triton and API under load)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from imgcls.lifecycle import Controller, LifecycleParams, live_comparisons
from imgcls.params import UserError
from imgcls.repository import Lifecycle, ModelDir, RepositoryError
from imgcls.triton_control import TritonControl
from imgcls_api.triton import classify, compare_top1
from model_preparation.publish import publish_model
from tests.models import publish_params, tiny_onnx

GATE = LifecycleParams("shadow", 10, 100, min_accuracy=0.9, max_accuracy_drop=0.02,
                       min_agreement=0.95, min_comparisons=50)  # fmt: skip


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
    assert classify(status, text) == kind


def test_a_drift_output_the_config_dropped_makes_the_api_route_again():
    """A version without a drift reference loaded beside one with it: the config stops declaring
    the output, and a request still asking for it is routed again (retried), not a 502."""
    from tritonclient.utils import InferenceServerException

    from imgcls_api.settings import Settings
    from imgcls_api.triton import TritonGateway, VersionGone

    gateway = TritonGateway(Settings())
    exc = InferenceServerException("unexpected inference output 'drift' for model 'resnet50v2'",
                                   status="400")  # fmt: skip
    assert isinstance(gateway._translate(exc, "resnet50v2", ""), VersionGone)
    other = InferenceServerException("unexpected inference output 'logits'", status="400")
    assert gateway._translate(other, "resnet50v2", "").status == 502


def _repo(tmp_path: Path, candidate_accuracy: float) -> Path:
    repo = tmp_path / "repo"
    publish_model(
        "m", tiny_onnx(tmp_path / "a.onnx"), ["a", "b", "c"], repo, publish_params(), 0.97
    )
    publish_model("m", tiny_onnx(tmp_path / "b.onnx", scale=2.0), ["a", "b", "c"], repo,
                  publish_params(), candidate_accuracy)  # fmt: skip
    return repo


def _controller(repo: Path, lines: list[str]) -> Controller:
    # nothing answers on this port: no Triton, no API
    return Controller(repo, TritonControl("127.0.0.1:9", "k", timeout=1), ["http://127.0.0.1:9"],
                      GATE, say=lines.append)  # fmt: skip


@pytest.mark.parametrize(
    ("accuracy", "state", "reasons"),
    [
        (0.556, Lifecycle(1, 2, "canary", 10), ["0.5560 < min_accuracy 0.9",
                                                "more than max_accuracy_drop 0.02 below",
                                                "live agreement unknown"]),
        (0.97, Lifecycle(1), ["has not run as a candidate"]),
        (0.97, Lifecycle(1, 2, "shadow", 100), ["live agreement unknown"]),
    ],
    ids=["worse-model", "never-a-candidate", "no-live-data"],
)  # fmt: skip
def test_the_gate_names_every_reason_to_refuse(tmp_path, accuracy, state, reasons):
    repo = _repo(tmp_path, accuracy)
    refusals = _controller(repo, [])._gate(ModelDir(repo, "m"), state, 2)
    for reason in reasons:
        assert any(reason in r for r in refusals), refusals
    assert len(refusals) == len(reasons), refusals


def test_a_refused_promotion_changes_nothing(tmp_path):
    repo = _repo(tmp_path, 0.556)
    model = ModelDir(repo, "m")
    model.write_config(Lifecycle(1, 2, "canary", 10))
    config = model.config_path.read_text()
    with pytest.raises(RepositoryError, match="promotion refused, nothing changed"):
        _controller(repo, []).promote(None, force=False)
    assert model.config_path.read_text() == config


def test_offline_changes_are_written_for_the_next_start_and_said_so(tmp_path):
    repo, lines = _repo(tmp_path, 0.97), []
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
    repo = _repo(tmp_path, 0.97)
    config = ModelDir(repo, "m").config_path.read_text()
    with pytest.raises(RepositoryError, match=message):
        call(_controller(repo, []))
    assert ModelDir(repo, "m").config_path.read_text() == config


def test_live_comparisons_sum_the_replicas(tmp_path, monkeypatch):
    text = (
        'api_candidate_comparisons_total{candidate="2",model="m",outcome="agree",serving="1"} 30.0\n'
        'api_candidate_comparisons_total{candidate="2",model="m",outcome="disagree",serving="1"} 2.0\n'
        'api_candidate_comparisons_total{candidate="2",model="n",outcome="agree",serving="1"} 9.0\n'
    )

    class Response:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self):
            return text.encode()

    monkeypatch.setattr("urllib.request.urlopen", lambda url, timeout: Response())
    live = live_comparisons(["http://a", "http://b"], "m", 1, 2)
    assert (live.agree, live.disagree, live.compared) == (60, 4, 64)
    assert live.agreement == pytest.approx(60 / 64)


@pytest.mark.parametrize(("field", "value"), [("on_publish", "always"), ("canary_percent", 120.0)])
def test_lifecycle_settings_are_checked(field, value):
    raw = {**GATE.__dict__, field: value}
    with pytest.raises(UserError, match=field):
        LifecycleParams(**raw)
