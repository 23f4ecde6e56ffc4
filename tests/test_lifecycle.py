"""Changing the served model under load, on the real Triton (EXPLICIT mode) and the real API.

16 clients send real images the whole time while a model with one class added is published,
canaried, refused by the gate, promoted, rolled back, and bad changes are attempted (a version
that does not exist, a share over 100 %, another input size, a corrupt ONNX file, a publish
killed half-way). Every answer is checked: its labels are exactly those of the version it names,
and its probabilities are what that version computes for that image in-process.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import requests

from imgcls.model_records import Lifecycle, Version
from imgcls.preprocessing import load_image
from imgcls.repository import ModelDir, md5sum
from model_preparation.onnx_utils import session
from model_preparation.publish import publish_model
from tests import stacks
from tests.load import Load
from tests.models import publish_params, tiny_onnx

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]
V1 = ("circle", "square", "triangle")
V2 = ("circle", "square", "star", "triangle")  # one class added


@pytest.fixture()
def stack(model_repository, tiny_project, tmp_path):
    with stacks.stack(model_repository, tiny_project / "artifacts/gate.npz", tmp_path,
                      {"canary_percent": 10, "shadow_percent": 100}) as running:  # fmt: skip
        yield running


def _disagreeing_images(project: Path, v1: Path, v2: Path, n: int = 6) -> list[Path]:
    """Demo images on which the two versions name different classes: the live agreement the
    gate sees is then known in advance (0), so its refusal is deterministic."""
    s1, s2 = session(v1), session(v2)
    picked = []
    for path in sorted((project / "data/raw").rglob("*_0*.jpg")):
        x = load_image(path, 48)[None]
        if V1[s1.run(None, {"image": x})[0].argmax()] != V2[s2.run(None, {"image": x})[0].argmax()]:
            picked.append(path)
        if len(picked) == n:
            return picked
    raise AssertionError("no demo images where the versions disagree")


def _slow_publish(repo: Path, model: Path) -> subprocess.Popen:
    """A publish that stops for a minute after copying the model file into its staging dir."""
    code = f"""
import shutil, time, sys
sys.path[:0] = {[str(REPO)]!r}
from pathlib import Path
from tests.models import publish_params
from model_preparation.publish import publish_model
real = shutil.copyfile
def slow(*a, **k):
    real(*a, **k)
    print("copied", flush=True)
    time.sleep(60)
shutil.copyfile = slow
publish_model("resnet50v2", Path({str(model)!r}), {list(V2)!r}, Path({str(repo)!r}),
              publish_params(max_batch_size=16), 0.97)
"""
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


def test_publish_canary_promote_rollback_under_load_every_answer_right(
    stack, tiny_project, tmp_path, capsys
):
    v1_file = stack.repo / "resnet50v2/1/model.onnx"
    v2_file = tiny_onnx(tmp_path / "v2.onnx", classes=4, size=48)
    images = _disagreeing_images(tiny_project, v1_file, v2_file)
    pixels = [load_image(p, 48)[None] for p in images]
    expected = {
        "1": (V1, [session(v1_file).run(None, {"image": x})[0][0] for x in pixels]),
        "2": (V2, [session(v2_file).run(None, {"image": x})[0][0] for x in pixels]),
    }
    config = (stack.repo / "resnet50v2/config.pbtxt").read_text()
    timeline: dict[str, float] = {}

    with Load(f"{stack.api.url}/predict", [p.read_bytes() for p in images]) as load:
        time.sleep(2)
        receipt = publish_model("resnet50v2", v2_file, list(V2), stack.repo,
                                publish_params(max_batch_size=16), accuracy=0.97)  # fmt: skip
        assert (receipt["version"], receipt["role"]) == (2, "candidate")

        # bad commands: a clear line, exit 2, nothing changed
        for args, message in [
            (("canary", "--percent", "150"), "within 0–100"),
            (("canary", "7", "--model", "resnet50v2"), "has no version 7"),
            (("promote", "9", "--model", "resnet50v2"), "has no version 9"),
            (("promote",), "has no candidate"),
        ]:
            out = stack.cli(*args)
            assert out.returncode == 2, (args, out.stdout, out.stderr)
            assert message in out.stderr and "Traceback" not in out.stderr, out.stderr
        assert (stack.repo / "resnet50v2/config.pbtxt").read_text() == config

        timeline["canary"] = time.monotonic()
        out = stack.cli("canary", "--percent", "30")
        assert out.returncode == 0, out.stderr
        assert "resnet50v2_int8: no version newer than 1" in out.stdout  # only FP32 has a v2
        load.wait_for(lambda: load.versions_since(timeline["canary"])["2"] >= 40, what="canary")
        status = stack.cli("status")
        assert "candidate 2 answers 30 % of requests" in status.stdout, status.stdout

        # the labelled gate: this v2 answers by colour, not shape: far worse on the gate set
        refused = stack.cli("promote", "--model", "resnet50v2")
        assert refused.returncode == 3, refused.stdout
        assert "promotion refused, nothing changed" in refused.stderr
        assert "resnet50v2 v2: gate refuse: accuracy -0." in refused.stderr, refused.stderr
        assert ModelDir(stack.repo, "resnet50v2").state().serving == 1

        timeline["promote"] = time.monotonic()
        forced = stack.cli("promote", "--model", "resnet50v2", "--force")
        assert forced.returncode == 0, forced.stderr
        assert "version 2 serves all traffic" in forced.stdout
        timeline["promoted"] = time.monotonic()
        load.wait_for(lambda: set(load.versions_since(timeline["promoted"])) == {"2"}, what="v2")
        time.sleep(2)

        timeline["rollback"] = time.monotonic()
        back = stack.cli("rollback", "--model", "resnet50v2")
        assert back.returncode == 0 and "version 1 serves all traffic (was 2)" in back.stdout
        timeline["rolled back"] = time.monotonic()
        time.sleep(2)

        # a publish killed half-way: the served model answers on; the next publish works
        v3 = tiny_onnx(tmp_path / "v3.onnx", classes=4, size=48, scale=2.0)
        proc = _slow_publish(stack.repo, v3)
        try:
            assert proc.stdout.readline().strip() == "copied"
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        killed = time.monotonic()
        time.sleep(1)
        assert ModelDir(stack.repo, "resnet50v2").versions() == [1, 2]
        again = publish_model("resnet50v2", v3, list(V2), stack.repo,
                              publish_params(max_batch_size=16), 0.97)  # fmt: skip
        assert again["version"] == 3

        # a corrupt model file (as if copied by hand) and another input size: refused, and
        # Triton keeps serving what it served
        bad = _handmade_version(stack.repo, 4, b"\x08\x07 not an onnx graph", dims=(48, 48, 3))
        corrupt = stack.cli("canary", str(bad), "--model", "resnet50v2")
        assert corrupt.returncode == 2 and "Triton could not load resnet50v2" in corrupt.stderr
        assert "previous state is back" in corrupt.stderr
        other = _handmade_version(stack.repo, 5, v2_file.read_bytes(), dims=(32, 32, 3))
        wrong = stack.cli("canary", str(other), "--model", "resnet50v2")
        assert wrong.returncode == 2 and "takes 'image' UINT8 [32, 32, 3]" in wrong.stderr
        assert ModelDir(stack.repo, "resnet50v2").state() == Lifecycle(serving=1)
        time.sleep(2)
        ended = time.monotonic()

    answers = load.answers
    statuses = Counter(a.status for a in answers)
    assert set(statuses) == {200}, statuses  # no 5xx, and no 503 either
    for a in answers:
        version = a.body["model"]["version"]
        labels, probs = expected[version]
        got = {p["label"]: p["probability"] for p in a.body["predictions"]}
        assert tuple(sorted(got)) == tuple(sorted(labels)), (version, got)
        np.testing.assert_allclose([got[x] for x in labels], probs[a.image], atol=1e-4)
    after_promote = [a for a in answers if timeline["promoted"] < a.sent < timeline["rollback"]]
    assert {a.body["model"]["version"] for a in after_promote} == {"2"}
    after_rollback = [a for a in answers if a.sent > timeline["rolled back"]]
    assert {a.body["model"]["version"] for a in after_rollback} == {"1"}
    assert any(a.sent > killed for a in answers) and answers[-1].done > ended - 5

    metrics = requests.get(f"{stack.api.url}/metrics", timeout=10).text
    for role, version in (("serving", "1"), ("canary", "2"), ("reference", "1"), ("serving", "2")):
        assert re.search(
            rf'^api_model_requests_total{{.*model="resnet50v2",role="{role}",version="{version}"}}',
            metrics, re.M,
        ), (role, version)  # fmt: skip
    assert re.search(
        r'^api_candidate_agreement{candidate="2",model="resnet50v2",serving="1"} 0\.0$',
        metrics,
        re.M,
    )
    history = [e["event"] for e in ModelDir(stack.repo, "resnet50v2").history()]
    assert history[-5:] == ["publish", "canary", "promote", "rollback", "publish"], history
    with capsys.disabled():
        last_v1 = max(a.done for a in answers if a.body["model"]["version"] == "1"
                      and timeline["promote"] < a.sent < timeline["rollback"])  # fmt: skip
        print(
            f"\nlifecycle under 16 clients: {len(answers)} answers, all 200; promote command "
            f"{timeline['promoted'] - timeline['promote']:.2f} s, last v1 answer "
            f"{last_v1 - timeline['promote']:.2f} s after it started; rollback command "
            f"{timeline['rolled back'] - timeline['rollback']:.2f} s"
        )


def _handmade_version(repo: Path, number: int, data: bytes, dims: tuple[int, ...]) -> int:
    """A version directory written by hand, not by publish (what a careless copy leaves)."""
    model = ModelDir(repo, "resnet50v2")
    folder = repo / "resnet50v2" / str(number)
    folder.mkdir()
    (folder / "model.onnx").write_bytes(data)
    serving = model.serving_config()
    meta = Version(number, V2, serving.input.__class__(serving.input.name, "TYPE_UINT8", dims),
                   serving.output, md5sum(folder / "model.onnx"), len(data), 0.99)  # fmt: skip
    (folder / "version.json").write_text(json.dumps(meta.to_json()))
    (folder / "labels.txt").write_text("".join(f"{x}\n" for x in V2))
    return number
