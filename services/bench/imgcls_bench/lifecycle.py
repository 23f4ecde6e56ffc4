"""A promote under load, measured: ``make bench`` runs it on the served size; alone:

    python -m imgcls_bench.lifecycle [--size 64] [--seconds 8] [--clients 16]

The bench's FP32 model serves as version 1 on the local stack (Triton in EXPLICIT mode, the API
under gunicorn); a second version (the same graph, other bytes) is published and canaried at
10 %; clients post the 640×480 test JPEG in a closed loop. Then: ``steady`` (p50/p99 over
``seconds`` with the canary on), the promote command, and ``during`` (requests sent between the
command's start and the moment all traffic was on the new version, at least the command's own
duration). Reports the command's duration, the time from its start until every request sent
was answered by the new version, and any error (the goal is none at all).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from imgcls.lifecycle import Controller
from imgcls.triton_control import TritonControl
from local_stack.api import ApiServer
from local_stack.procs import exit_on_sigterm
from local_stack.tritonserver import TritonServer

from .build import second_version
from .workload import IMAGE_SIZES, build_models, make_jpegs, served_size

# The bench measures the mechanics, not a model's quality: no gate.


@dataclass
class Answer:
    sent: float
    done: float
    status: int
    version: str


def _percentiles(answers: list[Answer]) -> dict:
    ms = [(a.done - a.sent) * 1000 for a in answers]
    if len(ms) < 2:
        return {"requests": len(ms)}
    q = statistics.quantiles(ms, n=100)
    return {"requests": len(ms), "p50_ms": round(q[49], 1), "p99_ms": round(q[98], 1)}


class _Clients:
    def __init__(self, url: str, jpeg: bytes, clients: int, limit_s: float) -> None:
        self.url, self.jpeg, self.limit = url, jpeg, limit_s
        self.answers: list[Answer] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run) for _ in range(clients)]

    def _run(self) -> None:
        deadline = time.monotonic() + self.limit
        with requests.Session() as http:
            while not self.stop.is_set() and time.monotonic() < deadline:
                sent = time.monotonic()
                try:
                    resp = http.post(self.url, files={"image": self.jpeg}, timeout=30)
                    version = resp.json().get("model", {}).get("version", "") if resp.ok else ""
                    status = resp.status_code
                except (requests.RequestException, ValueError):
                    status, version = -1, ""
                self.answers.append(Answer(sent, time.monotonic(), status, version))

    def __enter__(self) -> _Clients:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)


def promote_under_load(
    repository: Path, fp32: Path, jpeg: bytes, work: Path, seconds: float, clients: int = 16
) -> dict:
    """Steady state vs a promote, on a copy of ``repository``'s ``resnet50v2`` (version 1)."""
    from model_preparation.common import load_params, parse_settings
    from model_preparation.publish import PublishParams, publish_model

    repo = work / "lifecycle-repository"
    shutil.rmtree(repo, ignore_errors=True)
    shutil.copytree(repository / "resnet50v2", repo / "resnet50v2")
    params = parse_settings(PublishParams, load_params("publish"), "publish")
    with tempfile.TemporaryDirectory() as tmp:
        v2 = second_version(fp32, Path(tmp) / "v2.onnx")
        publish_model("resnet50v2", v2, ["circle", "square", "triangle"], repo, params)
    key = "bench-lifecycle"
    with (
        TritonServer(repo, workdir=work / "lifecycle-triton", admin_key=key) as triton,
        ApiServer(triton.url, workdir=work / "lifecycle-api") as api,
    ):
        control = TritonControl(triton.url, key, grpc_url=f"127.0.0.1:{triton.grpc_port}")
        ctl = Controller(repo, control, [api.url], say=_quiet)
        with _Clients(f"{api.url}/predict", jpeg, clients, limit_s=seconds * 4 + 120) as load:
            ctl.start_candidate("canary", 2, 10)
            _wait(lambda: any(a.version == "2" for a in load.answers), 30)
            steady_from = time.monotonic()
            time.sleep(seconds)
            started = time.monotonic()
            ctl.promote(2, force=True)  # the mechanics under load; the gate is not timed
            command_s = time.monotonic() - started
            time.sleep(3)  # the old version is gone once the command returns: watch the tail
    answers = load.answers
    old_after = [a.sent for a in answers if a.sent >= started and a.version != "2"]
    all_new_s = (max(old_after) - started) if old_after else 0.0
    window_end = started + max(all_new_s, command_s)
    steady = [a for a in answers if steady_from <= a.sent < started]
    during = [a for a in answers if started <= a.sent <= window_end]
    errors = [a.status for a in answers if a.status != 200]
    return {
        "clients": clients,
        "steady": _percentiles(steady),
        "during_promote": _percentiles(during),
        "promote_command_s": round(command_s, 2),
        "all_traffic_on_new_version_s": round(all_new_s, 2),
        "errors": len(errors),
        "status_503": errors.count(503),
        "answers": len(answers),
    }


def _quiet(_line: str) -> None:
    pass


def _wait(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the lifecycle scenario did not reach its next step")
        time.sleep(0.1)


def render(result: dict) -> str:
    s, d = result["steady"], result["during_promote"]
    return "\n".join(
        [
            f"### Promote under load ({result['clients']} clients, canary at 10 % before)",
            "",
            "| window | requests | p50 ms | p99 ms |",
            "| --- | ---: | ---: | ---: |",
            f"| steady state | {s['requests']} | {s.get('p50_ms', '–')} | {s.get('p99_ms', '–')} |",
            f"| during the promote | {d['requests']} | {d.get('p50_ms', '–')} | "
            f"{d.get('p99_ms', '–')} |",
            "",
            f"Promote command {result['promote_command_s']} s; every request sent "
            f"{result['all_traffic_on_new_version_s']} s after it started was answered by the "
            f"new version; errors: {result['errors']} (503: {result['status_503']}) of "
            f"{result['answers']} answers.",
            "",
        ]
    )


def main() -> None:
    exit_on_sigterm()  # a killed bench stops its servers too

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--size", type=int, default=None, help="default: the served size")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--work", default=".cache/bench")
    args = parser.parse_args()
    size, work = args.size or served_size(), Path(args.work).resolve()
    built = build_models(work, size)
    jpeg = make_jpegs({"640x480": IMAGE_SIZES["640x480"]})["640x480"]
    result = promote_under_load(Path(built["repository"]), Path(built["fp32"]), jpeg, work,
                                args.seconds, args.clients)  # fmt: skip
    print(render(result))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
