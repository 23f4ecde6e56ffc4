"""The served paths of ``make bench``: who answers the load generator, started and stopped here.

Triton-backed paths share one ``tritonserver`` (the bench's model repository); the peers that
need none (BentoML, Ray Serve) run with Triton stopped, so they get the whole machine.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
import requests
import tritonclient.http as httpclient

from local_stack.api import ApiServer
from local_stack.procs import ManagedProcess, free_port
from local_stack.tritonserver import TritonServer

from .measure import Row, closed_loop, open_loop, tree_cpu_seconds

BENCH_ENV = Path(".cache/bench-venv")
_SRC = Path(__file__).resolve().parents[2]


def _log(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


@dataclass(frozen=True)
class SizeContext:
    """What every served path of one image size shares."""

    work: Path  # the bench's scratch folder (servers' logs, the peers' homes)
    size: int  # the model's image side
    jpeg: bytes  # the 640×480 test photo every client posts
    fp32: Path  # the FP32 ONNX file the peers serve


# Which of the run's concurrencies a scenario measures (indices into the ascending list).
ALL_CELLS: tuple[int, ...] | None = None
TOP_TWO = (-2, -1)
LOWEST_AND_THIRD = (0, 2)


@dataclass(frozen=True)
class Scenario:
    """One group of table rows: who answers, for which model, at which of the concurrencies."""

    label: str
    front: str  # "triton" (client → Triton), "api" (→ API → Triton), "front" (the API with no
    # model: answers from memory), "baseline", "bento", "ray"
    model: str = "resnet50v2"
    cells: tuple[int, ...] | None = ALL_CELLS  # indices into the run's concurrencies
    env: dict[str, str] = field(default_factory=dict)  # the API's environment
    replicas: int = 1  # Ray Serve only
    threads: int = 0  # BentoML / Ray Serve: ONNX Runtime threads per replica (0 = every core)
    single_thread_instances: bool = True  # Triton's instances run one ONNX Runtime thread each

    @property
    def decodes(self) -> bool:
        """Whether this path decodes the JPEG itself (Triton direct gets ready tensors)."""
        return self.front != "triton"

    @property
    def infers(self) -> bool:
        """Whether a model runs behind this path (the API front alone answers from memory)."""
        return self.front != "front"

    runtime: str = "onnxruntime"  # BentoML / Ray Serve: one of imgcls.runtimes.RUNTIMES

    @property
    def precision(self) -> str:
        if self.model.endswith("_int8"):
            return "int8"
        return "bf16" if self.model.endswith("_bf16") or "bf16" in self.runtime else "fp32"


OUTPUTS_OFF_ROW = "API end to end, no drift or unknown-class output"
CAPTURE_ROW = "API end to end, capture on"
SHADOW_ROW = "API end to end, a candidate in shadow at 100 %"
CAPTURE_HERE = "<run>"  # a CAPTURE_DIR of its own in the run's scratch folder
SCENARIOS = (
    Scenario("triton direct (batching on)", "triton"),
    Scenario("triton direct (batching off)", "triton", "resnet50v2_nobatch"),
    Scenario("API end to end (multipart JPEG)", "api"),
    # The same graph without the drift and unknown-class outputs every served model carries.
    Scenario(OUTPUTS_OFF_ROW, "api", "resnet50v2_plain"),
    # Capture on (as `make up` runs it): every answer on record and CAPTURE_RATE of the images.
    Scenario(CAPTURE_ROW, "api", env={"CAPTURE_DIR": CAPTURE_HERE}),
    # A roll-out's shadow step: every request also answered by the candidate (the same graph,
    # version 2) in the background and compared (imgcls_bench.build.shadowed).
    Scenario(SHADOW_ROW, "api", "resnet50v2_shadow"),
    Scenario("API end to end INT8", "api", "resnet50v2_int8", cells=TOP_TWO),
    Scenario("API end to end BF16 (OpenVINO)", "api", "resnet50v2_bf16", cells=TOP_TWO),
    # The front's share of the overhead, measured: same app and gunicorn config, no model.
    Scenario("API front alone (no model: answers from memory)", "front", cells=TOP_TWO),
    Scenario(
        "API, its batching off (BATCH_SLOTS=0)", "api", cells=TOP_TWO, env={"BATCH_SLOTS": "0"}
    ),
    # What the API was before its batching and gevent workers: the same code, configured back.
    Scenario(
        "API as before (gthread, BATCH_SLOTS=0)",
        "api",
        env={"BATCH_SLOTS": "0", "API_WORKER_CLASS": "gthread", "WEB_CONCURRENCY": "2"},
    ),
    Scenario("API, 2 instances × 1 thread", "api", "resnet50v2_2x1", cells=TOP_TWO),
    Scenario(
        "API, 1 instance × all cores",
        "api",
        "resnet50v2_1x2",
        cells=LOWEST_AND_THIRD,
        single_thread_instances=False,
    ),
    Scenario("peer: Flask threaded=False + JSON tensors", "baseline", cells=LOWEST_AND_THIRD),
    # The peers without Triton, each in its best layout of the previous runs plus the default.
    Scenario("peer: BentoML (adaptive batching)", "bento"),
    Scenario("peer: BentoML (adaptive batching, 1 thread)", "bento", cells=TOP_TWO, threads=1),
    Scenario("peer: Ray Serve (1 replica)", "ray", cells=TOP_TWO),
    Scenario("peer: Ray Serve (2 replicas × 1 thread)", "ray", replicas=2, threads=1),
    # Like with like: the peers on the fast runtime the API's BF16 row uses.
    Scenario("peer: BentoML, OpenVINO BF16", "bento", cells=TOP_TWO, runtime="openvino-bf16"),
    Scenario(
        "peer: Ray Serve (2 × 1 thread), OpenVINO BF16",
        "ray",
        cells=TOP_TWO,
        replicas=2,
        threads=1,
        runtime="openvino-bf16",
    ),
)
PEERS_WITHOUT_TRITON = frozenset({"bento", "ray"})


def cells(which: tuple[int, ...] | None, conc: list[int]) -> list[int]:
    """The concurrencies a scenario measures; indices past a short list are skipped."""
    if which is None:
        return list(conc)
    return sorted({conc[i] for i in which if -len(conc) <= i < len(conc)})


def triton_worker(url: str, model: str, size: int):
    def make():
        client = httpclient.InferenceServerClient(url)
        x = np.random.default_rng(1).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
        tensor = httpclient.InferInput("image", list(x.shape), "UINT8")
        tensor.set_data_from_numpy(x, binary_data=True)
        out = [httpclient.InferRequestedOutput("probabilities", binary_data=True)]
        return lambda _i: (client.infer(model, [tensor], outputs=out), 1)[1]

    return make


def http_worker(url: str, data: bytes):
    def make():
        http = requests.Session()

        def send(_i: int) -> int:
            resp = http.post(url, files={"image": ("x.jpg", data, "image/jpeg")}, timeout=60)
            return 1 if resp.status_code == 200 else -1

        return send

    return make


def triton_counters(triton: TritonServer, model: str) -> Callable[[], dict[str, float]]:
    """Triton's image and execution counts of ``model``: their ratio is the batch ONNX Runtime
    actually ran (what decides its cost per image)."""
    pattern = re.compile(
        r'^(nv_inference_count|nv_inference_exec_count)\{model="' + re.escape(model) + r'",'
        r'version="[^"]*"\} (\S+)$', re.MULTILINE)  # fmt: skip

    def read() -> dict[str, float]:
        text = requests.get(triton.metrics_url, timeout=5).text
        return {name: float(value) for name, value in pattern.findall(text)}

    return read


def cpu_by_part(triton: TritonServer, api: ManagedProcess | None) -> Callable[[], dict[str, float]]:
    """CPU seconds so far of tritonserver itself, of its backend stub processes (the local
    Python backend: ONNX Runtime plus the shim's own work) and of the API's process tree."""
    server = psutil.Process(triton.proc.pid)

    def read() -> dict[str, float]:
        stubs = server.children(recursive=True)
        out = {"cpu_triton_s": _cpu(server), "cpu_backend_s": sum(_cpu(p) for p in stubs)}
        if api is not None:
            out["cpu_api_s"] = tree_cpu_seconds([api.proc.pid])
        return out

    return read


def _cpu(process: psutil.Process) -> float:
    try:
        times = process.cpu_times()
    except psutil.NoSuchProcess:
        return 0.0
    return times.user + times.system


def _both(*reads: Callable[[], dict[str, float]]) -> Callable[[], dict[str, float]]:
    return lambda: {k: v for read in reads for k, v in read().items()}


def _pids(*procs: ManagedProcess | None) -> list[int]:
    return [p.proc.pid for p in procs if p is not None and p.proc is not None]


def _start_peer(cmd: list[str], port: int, workdir: Path, env: dict | None, probe_jpeg: bytes,
                timeout: float = 120) -> ManagedProcess:  # fmt: skip
    peer = ManagedProcess(workdir, env)
    peer.name = cmd[2] if len(cmd) > 2 else "peer"
    peer.spawn(cmd)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not peer.running:
            raise RuntimeError(f"{peer.name} exited: see {peer.log_path}")
        if _answers(port, probe_jpeg):
            return peer
        time.sleep(0.5)
    peer.stop()
    raise TimeoutError(f"{peer.name} not ready on :{port}")


def _answers(port: int, jpeg: bytes) -> bool:
    try:
        r = requests.post(f"http://127.0.0.1:{port}/predict",
                          files={"image": ("x.jpg", jpeg, "image/jpeg")}, timeout=30)  # fmt: skip
        return r.status_code == 200
    except requests.RequestException:
        return False


@contextlib.contextmanager
def _triton_front(s: Scenario, triton: TritonServer, ctx: SizeContext) -> Iterator[tuple]:
    counters = _both(triton_counters(triton, s.model), cpu_by_part(triton, None))
    yield triton_worker(triton.url, s.model, ctx.size), _pids(triton), counters


@contextlib.contextmanager
def _api_front(s: Scenario, triton: TritonServer, ctx: SizeContext) -> Iterator[tuple]:
    env = {"MODEL_NAME": s.model, "CAPTURE_DIR": "", **s.env}  # capture off unless the row says
    if env["CAPTURE_DIR"] == CAPTURE_HERE:
        env["CAPTURE_DIR"] = str(ctx.work / f"capture-{ctx.size}")
    with ApiServer(triton.url, workdir=ctx.work / f"api-{s.model}", env=env) as api:
        counters = _both(triton_counters(triton, s.model), cpu_by_part(triton, api))
        yield http_worker(f"{api.url}/predict", ctx.jpeg), _pids(triton, api), counters


@contextlib.contextmanager
def _memory_front(s: Scenario, _triton, ctx: SizeContext) -> Iterator[tuple]:
    env = {"MODEL_NAME": s.model, "BENCH_FRONT_SIZE": str(ctx.size)}
    with ApiServer("127.0.0.1:9", workdir=ctx.work / "api-front", env=env,
                   app="imgcls_bench.front_only:create()") as api:  # fmt: skip
        yield http_worker(f"{api.url}/predict", ctx.jpeg), _pids(api), None


@contextlib.contextmanager
def _peer_front(s: Scenario, triton: TritonServer | None, ctx: SizeContext) -> Iterator[tuple]:
    port = free_port()
    peer = _start_peer(_peer_command(s, port, triton, ctx), port, ctx.work / f"{s.front}-{s.replicas}",
                       _peer_env(s, ctx), ctx.jpeg, timeout=240 if s.front == "ray" else 120)  # fmt: skip
    counters = triton_counters(triton, s.model) if triton is not None else None
    try:
        yield (
            http_worker(f"http://127.0.0.1:{port}/predict", ctx.jpeg),
            _pids(triton, peer),
            counters,
        )
    finally:
        peer.stop(grace=30)


FRONTS = {"triton": _triton_front, "api": _api_front, "front": _memory_front,
          "baseline": _peer_front, "bento": _peer_front, "ray": _peer_front}  # fmt: skip


def front(s: Scenario, triton: TritonServer | None, ctx: SizeContext):
    """Start what answers scenario ``s``; yield (worker factory, server pids, counters); stop it."""
    return FRONTS[s.front](s, triton, ctx)


def _peer_command(s: Scenario, port: int, triton: TritonServer | None,
                  ctx: SizeContext) -> list[str]:  # fmt: skip
    size, python = str(ctx.size), str(BENCH_ENV / "bin" / "python")
    if s.front == "baseline":
        return [sys.executable, "-m", "imgcls_bench.baseline", "--port", str(port),
                "--triton-url", triton.url, "--size", size]  # fmt: skip
    if s.front == "bento":
        return [python, "-m", "bentoml", "serve", "imgcls_bench.bento_peer:Classifier",
                "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    return [python, "-m", "imgcls_bench.ray_peer", "--port", str(port), "--model", str(ctx.fp32),
            "--size", size, "--replicas", str(s.replicas), "--threads", str(s.threads),
            "--runtime", s.runtime]  # fmt: skip


def _peer_env(s: Scenario, ctx: SizeContext) -> dict | None:
    if s.front not in PEERS_WITHOUT_TRITON:
        return None
    env = {"PYTHONPATH": f"{_SRC / 'common'}{os.pathsep}{_SRC / 'bench'}"}
    if s.front == "ray":
        return {**env, "RAY_USAGE_STATS_ENABLED": "0"}
    return {**env, "BENTO_MODEL": str(ctx.fp32), "BENTO_SIZE": str(ctx.size),
            "BENTO_THREADS": str(s.threads), "BENTO_RUNTIME": s.runtime,
            "BENTOML_DO_NOT_TRACK": "true",
            "BENTOML_HOME": str(ctx.work / "bentoml-home")}  # fmt: skip


def peers_available() -> bool:
    """The optional bench environment exists and imports BentoML and Ray Serve (the Makefile
    marks it so only then: a half-installed venv would fail every peer's start)."""
    return (BENCH_ENV / ".installed").exists()


def serving_rows(repo: Path, conc: list[int], secs: float, ctx: SizeContext,
                 peers: bool) -> list[tuple[Scenario, Row]]:  # fmt: skip
    """Every scenario: the Triton-backed ones with one Triton, then the peers that need none."""
    rows: list[tuple[Scenario, Row]] = []

    def measure(s: Scenario, triton: TritonServer | None) -> None:
        with front(s, triton, ctx) as (worker, pids, counters):
            for c in cells(s.cells, conc):
                _log(f"{ctx.size}² {s.label} c={c}")
                rows.append((s, closed_loop(s.label, worker, c, secs, server_pids=pids,
                                            counters=counters)))  # fmt: skip

    with TritonServer(repo, workdir=ctx.work / "triton") as triton:
        for s in (s for s in SCENARIOS if s.front not in PEERS_WITHOUT_TRITON):
            measure(s, triton)
    if not peers:
        _log(f"BentoML and Ray Serve peers skipped (no {BENCH_ENV}; `make bench` creates it)")
        return rows
    for s in (s for s in SCENARIOS if s.front in PEERS_WITHOUT_TRITON):
        try:
            measure(s, None)
        except (RuntimeError, TimeoutError) as exc:  # one peer failing must not lose the run
            _log(f"{s.label} skipped: {exc}")
    return rows


# Open loop: the API's balanced batching against the layout it replaced, under arrivals that do
# not wait for answers (the README's known limit: balanced batching was tuned in a closed loop).
OPEN_LOOP_LAYOUTS = {
    "API (1 gevent worker, 2 balanced calls)": {},
    "API (2 workers × 1 call, the layout before balancing)": {"WEB_CONCURRENCY": "2",
                                                             "BATCH_SLOTS": "1"},
}  # fmt: skip


def open_loop_rows(repo: Path, ctx: SizeContext, capacity: float, fractions: list[float],
                   secs: float) -> list[Row]:  # fmt: skip
    """Each layout at ``fractions`` of ``capacity`` (the API's closed-loop img/s in this run)."""
    rows: list[Row] = []
    with TritonServer(repo, workdir=ctx.work / "triton-open") as triton:
        for label, env in OPEN_LOOP_LAYOUTS.items():
            workdir = ctx.work / f"api-open-{len(rows)}"
            with ApiServer(triton.url, workdir=workdir, env=env) as api:
                for fraction in fractions:
                    rate = capacity * fraction
                    _log(f"{ctx.size}² open loop {label} at {rate:.0f}/s")
                    rows.append(open_loop(label, http_worker(f"{api.url}/predict", ctx.jpeg),
                                          rate, secs, server_pids=_pids(triton, api)))  # fmt: skip
    return rows
