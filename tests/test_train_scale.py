"""Training that streams from the shards: the cache is a speed knob, not a result knob, and the
same stage trains across two worker processes (MultiWorkerMirroredStrategy over loopback)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import VENV_BIN, run

pytestmark = pytest.mark.slow

# A few steps of the real model on the tiny project's shards.
SHORT = {"epochs": 2, "steps_per_epoch": 3, "batch_size": 16, "patience": 2}


def short_run(tiny_project: Path, dest: Path, **train) -> Path:
    """A directory with the tiny project's prepared shards and a short ``train`` section."""
    dest.mkdir(parents=True)
    shutil.copytree(tiny_project / "artifacts/prepared", dest / "artifacts/prepared")
    params = yaml.safe_load((tiny_project / "params.yaml").read_text())
    params["train"].update(SHORT, **train)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return dest


def history(project: Path) -> dict[str, str]:
    plots = project / "artifacts/dvclive/plots/metrics"
    return {str(p.relative_to(plots)): p.read_text() for p in sorted(plots.rglob("*.tsv"))}


def test_cache_modes_train_the_same_model_and_leave_nothing_behind(tiny_project, tmp_path):
    runs = {}
    for mode in ("none", "file"):
        project = short_run(tiny_project, tmp_path / mode, cache=mode)
        out = run([sys.executable, "-m", "model_preparation.train"], project).stdout
        assert f"cache={mode}" in out
        assert (project / "artifacts/model.keras").is_file()
        assert not list((project / "artifacts").glob(".train-cache-*")), "cache not removed"
        runs[mode] = history(project)
    assert set(runs["none"]) == {
        "train/loss.tsv",
        "train/accuracy.tsv",
        "eval/loss.tsv",
        "eval/accuracy.tsv",
    }
    # same seed → the same losses to the last digit, whether decoded images were kept or not
    assert runs["file"] == runs["none"]


def test_a_bad_cache_mode_is_named(tiny_project, tmp_path):
    project = short_run(tiny_project, tmp_path / "bad", cache="ram")
    result = run([sys.executable, "-m", "model_preparation.train"], project, check=False)
    assert result.returncode == 2
    assert "train.cache 'ram': choose one of none, file, memory" in result.stderr


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def epoch_lines(text: str) -> list[str]:
    """The per-epoch metrics, without the timing that differs between processes."""
    return [line.rsplit(" ", 3)[0] for line in text.splitlines() if line.startswith("epoch ")]


def test_two_worker_processes_train_one_model(tiny_project, tmp_path):
    project = short_run(tiny_project, tmp_path / "multi")
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}")
    env.update(TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    procs = []
    for index in range(2):
        config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "model_preparation.train"],
                cwd=project,
                env={**env, "TF_CONFIG": json.dumps(config)},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    try:
        outputs = [p.communicate(timeout=600)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for index, (proc, out) in enumerate(zip(procs, outputs, strict=True)):
        assert proc.returncode == 0, f"worker {index} failed; the other worker's end:\n" + (
            f"{outputs[1 - index][-2500:]}\n--- worker {index}:\n{out[-2500:]}"
        )
        assert f"2 replicas on 2 workers (MultiWorkerMirroredStrategy, worker {index})" in out
    # gradients and metrics are all-reduced: both workers see the same global numbers
    lines = [epoch_lines(out) for out in outputs]
    assert len(lines[0]) == SHORT["epochs"] and lines[0] == lines[1], outputs
    # the chief alone writes the stage's outputs: the single-process contract
    assert "saved to artifacts/model.keras" in outputs[0]
    assert "saved to" not in outputs[1]
    assert sorted(p.name for p in (project / "artifacts").iterdir()) == [
        "dvclive",
        "init.json",
        "model.keras",
        "prepared",
    ]
    metrics = json.loads((project / "artifacts/dvclive/metrics.json").read_text())
    assert set(metrics) == {"train", "eval", "step"}
    check = (
        "import keras, numpy as np;"
        "m = keras.models.load_model('artifacts/model.keras');"
        "x = np.random.default_rng(0).integers(0, 256, (4,) + m.input_shape[1:], dtype='uint8');"
        "p = m.predict(x, verbose=0);"
        "print(m.input.dtype, m.inputs[0].name, p.shape, float(np.abs(p.sum(1) - 1).max()))"
    )
    out = run([sys.executable, "-c", check], project).stdout.split()
    assert out[:2] == ["uint8", "image"] and out[2:4] == ["(4,", "3)"], out
    assert float(out[4]) < 1e-5


@pytest.mark.parametrize(
    ("setting", "flags", "policy"),
    [
        ("auto", "fpu avx512f avx512_bf16 avx512_vnni", "mixed_bfloat16"),
        ("auto", "fpu amx_bf16 amx_tile", "mixed_bfloat16"),
        ("auto", "fpu avx2 avx512f", "float32"),  # bfloat16 would be emulated, slower
        ("float32", "fpu avx512_bf16", "float32"),
        ("mixed_float16", "fpu", "mixed_float16"),
    ],
)
def test_auto_precision_follows_the_cpu(tmp_path, setting, flags, policy):
    from model_preparation.train import precision_policy

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor : 0\nflags : {flags}\n")
    assert precision_policy(setting, cpuinfo) == policy
