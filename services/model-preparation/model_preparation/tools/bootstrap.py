"""Get a servable model: the one path shared by ``make up`` / ``make model`` and Docker Compose.

    python -m model_preparation.tools.bootstrap               # (re)train and version: dvc repro + commit
    python -m model_preparation.tools.bootstrap --if-missing  # keep a model that is there, else get one
    python -m model_preparation.tools.bootstrap --data-only   # only make sure data/raw has images

``--if-missing`` is what serving needs before Triton starts: it reuses a complete model
repository, otherwise ``dvc pull``s from the configured DVC remote, and only when neither gives
one builds it: the seeded demo data when ``data/raw`` is empty, then the pipeline. The compose
stack's ``model-init`` service and ``make up`` both run it, so a fresh clone ends the same way
on both paths. Not a DVC stage: it drives ``dvc``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from imgcls.dvc import dvc
from imgcls.lifecycle import Controller, LifecycleParams
from imgcls.lifecycle.rollout import Rollout
from imgcls.params import load_settings
from imgcls.repository import ModelDir
from imgcls.triton_control import TritonControl, admin_key
from imgcls.variants import VARIANTS

from ..common import (
    MODEL_REPOSITORY,
    PUBLISH_REPORT,
    RAW_DATA,
    REPORTS,
    PipelineError,
    read_json,
    run_cli,
    write_json,
)

BUILD_REPORT = REPORTS / "build.json"  # how long the last build took here, and on what


def say(message: str) -> None:
    print(f"[model] {message}", flush=True)


def missing_models(repository: Path = MODEL_REPOSITORY) -> list[str]:
    """Models in the repository that Triton could not load: a config whose versions (every one
    it names, or any for a config without our lifecycle state) have no ``model.onnx``.

    An empty repository counts as one missing model.
    """
    configs = sorted(repository.glob("*/config.pbtxt"))
    if not configs:
        return [str(repository)]
    missing = []
    for cfg in configs:
        state = ModelDir(repository, cfg.parent.name).state()
        files = (
            [cfg.parent / str(v) / "model.onnx" for v in state.loaded]
            if state
            else list(cfg.parent.glob("[0-9]*/model.onnx"))
        )
        if not files or not all(f.is_file() for f in files):
            missing.append(cfg.parent.name)
    return missing


def has_images(raw: Path = RAW_DATA) -> bool:
    return raw.is_dir() and any(p.is_file() for p in raw.rglob("*") if not p.name.startswith("."))


def _run(cmd: list[str], env: dict[str, str] | None = None) -> None:
    """Run a step with its output on our console; a failure stops bootstrap with its exit code."""
    say("$ " + " ".join(cmd))
    result = subprocess.run(cmd, check=False, env=env)
    if result.returncode != 0:
        raise PipelineError(f"`{' '.join(cmd)}` failed with exit code {result.returncode}")


def _dvc(*args: str) -> None:
    cmd, env = dvc(*args)
    _run(cmd, env)


def _dvc_remote() -> str | None:
    cmd, env = dvc("remote", "list")
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    lines = [line.split()[0] for line in out.stdout.splitlines() if line.strip()]
    return lines[0] if out.returncode == 0 and lines else None


def pull(remote: str) -> bool:
    """``dvc pull`` the data and the served model; False (with the reason) if that fails."""
    say(f"DVC remote {remote!r} is configured: dvc pull (data.dvc, model.dvc)")
    cmd, env = dvc("pull", "data.dvc", "model.dvc")
    result = subprocess.run(cmd, check=False, env=env)
    if result.returncode != 0:
        say(f"dvc pull failed (exit {result.returncode}): building the model here instead")
        return False
    return not missing_models()


def ensure_data() -> None:
    if has_images():
        say(f"using the images in {RAW_DATA}/ (recorded in data.dvc: dvc add data)")
        _dvc("add", "-q", "data")  # harvested feedback, new images: the model names its data
        return
    say(f"{RAW_DATA}/ is empty: generating the seeded demo dataset (params.yaml 'demo')")
    _run([sys.executable, "-m", "model_preparation.tools.demo_data"])
    _dvc("add", "-q", "data")


def stages() -> list[str]:
    """The stages of dvc.yaml, in its order (the order `dvc repro` runs them here)."""
    import yaml

    return list(yaml.safe_load(Path("dvc.yaml").read_text(encoding="utf-8"))["stages"])


def build() -> None:
    """The pipeline, then record the served files in model.dvc (see README "versioning")."""
    ensure_data()
    say(f"running the pipeline: {' → '.join(stages())} ({_estimate()}; one line per epoch)")
    started = time.monotonic()
    _dvc("repro")
    _dvc("commit", "-q", "-f", "model.dvc")
    seconds = time.monotonic() - started
    say(f"pipeline done in {_minutes(seconds)}; {_accuracy_line()}")
    _record(seconds)
    _after_publish(read_json(PUBLISH_REPORT))


def _after_publish(receipt: dict) -> None:
    """Say which versions the pipeline published; start new ones as candidates (never straight
    to every user) on the Triton that serves, when one answers (params.yaml lifecycle)."""
    entries = [e for e in (receipt, *(receipt.get(v.key) for v in VARIANTS if v.switched)) if e]
    for e in entries:
        news = "new" if e["new"] else "unchanged"
        say(f"{e['model_name']} version {e['version']} ({news}): {e['role']}")
    new = [e for e in entries if e["new"] and e["role"] == "candidate"]
    if not new:
        return
    params = load_settings(LifecycleParams, "lifecycle")
    mode = params.on_publish
    if mode == "none":
        say("the new version serves nobody yet: `make canary` or `make shadow` starts it")
        return
    control = TritonControl(
        os.environ.get("TRITON_URL", "127.0.0.1:8000"),
        admin_key(),
        grpc_url=os.environ.get("TRITON_GRPC_URL"),
    )
    if not control.reachable():
        say(f"no Triton answers at {control.base}: the new version waits; after `make up`, "
            f"`make {mode}` starts it")  # fmt: skip
        return
    names = [e["model_name"] for e in new]
    ctl = Controller(MODEL_REPOSITORY, control, _api_urls(), params=params, say=say)
    if mode == "rollout":  # gate → shadow → canary → promote, or back (exit 3) / left (exit 4)
        Rollout(ctl).run(None, names)
        return
    ctl.start_candidate(mode, None, None, names)
    say("`make status` shows how it compares (the labelled gate: `python -m imgcls.lifecycle "
        "gate`); `make rollout` decides by itself, `make promote` or `make rollback` by hand")  # fmt: skip


def _api_urls() -> list[str]:
    return [os.environ.get("API_URL", "http://127.0.0.1:5000")]


def _accuracy_line() -> str:
    """Each variant's held-out accuracy, from the report of the stage that measured it."""
    measured = []
    for v in VARIANTS:
        try:
            measured.append(f"{read_json(REPORTS / v.report)[v.accuracy_key]:.4f} {v.label}")
        except (OSError, KeyError, ValueError):
            continue  # not built, or not asked for (quantize.bf16: false)
    if not measured:
        return "see `dvc metrics show`"
    return f"held-out accuracy {', '.join(measured)} (`dvc metrics show`: all)"


def _estimate() -> str:
    """How long this takes, from the last build recorded in the checkout (no figure in code)."""
    try:
        last = read_json(BUILD_REPORT)
        return (f"≈ {max(1, round(last['seconds'] / 60))} min on {last['cpus']} cores the last "
                f"time, {last['images']} images, {last['date']}")  # fmt: skip
    except (OSError, KeyError, ValueError):
        return "no build recorded here yet to say how long"


def _record(seconds: float) -> None:
    images = sum(1 for p in RAW_DATA.rglob("*") if p.is_file() and not p.name.startswith("."))
    write_json(BUILD_REPORT, {"seconds": round(seconds), "cpus": len(os.sched_getaffinity(0)),
                              "images": images, "date": time.strftime("%Y-%m-%d")})  # fmt: skip


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} m {int(seconds % 60):02d} s"


def ensure_model(repository: Path = MODEL_REPOSITORY) -> None:
    missing = missing_models(repository)
    if not missing:
        say(f"{repository}/ has a complete model: reusing it (no training)")
        return
    say(f"no servable model in {repository}/ (missing: {', '.join(missing)})")
    if repository.resolve() != MODEL_REPOSITORY.resolve():
        raise PipelineError(f"the pipeline publishes into {MODEL_REPOSITORY}/, not {repository}/")
    remote = _dvc_remote()
    if remote and pull(remote):
        say("model pulled from the DVC remote")
        return
    if not remote:
        say("no DVC remote configured (`dvc remote list` is empty): building the model here")
    build()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--if-missing", action="store_true", help="keep a complete model")
    mode.add_argument("--data-only", action="store_true", help="only make sure data/raw is filled")
    parser.add_argument(
        "--repository", type=Path, default=MODEL_REPOSITORY, help="the model repository to check"
    )
    args = parser.parse_args()
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    if args.data_only:
        ensure_data()
    elif args.if_missing:
        ensure_model(args.repository)
    else:
        build()


if __name__ == "__main__":
    run_cli(main)
