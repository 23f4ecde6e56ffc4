"""The Docker path as a user runs it, on a real Docker engine: `docker compose up` on a fresh clone.

A copy of the checkout (what a clone holds, owned by an arbitrary uid) with tiny pipeline
parameters; `docker compose up -d --build` with the stand-in base images passed through the
compose file's own PYTHON_IMAGE / TRITON_IMAGE arguments. The model comes from the stack itself
(model-init: demo data + the pipeline), then Triton and the API start. Everything built is
removed at the end.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from local_stack.procs import free_port, http_status
from tests import docker_support, images
from tests.conftest import merge, run

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
OWNER = 4242  # neither root nor the images' own users: the checkout of "someone else"
# Small enough that the containerised pipeline takes a couple of minutes on 2 cores.
DOCKER_PARAMS = {
    "demo": {"images_per_class": 40, "min_side": 40, "max_side": 56},
    "prepare": {"image_size": 32},
    "train": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 16, "patience": 1},
    "export": {"parity_samples": 4},
    "quantize": {"calibration_images": 8, "min_agreement": 0.0},
    "publish": {"max_batch_size": 8},
    # a one-epoch model on a dozen gate images: let the gate pass it (tested in test_rollout)
    "lifecycle": {
        "gate": {"min_images": 1, "min_class_images": 1, "margin": 1.0, "class_margin": 1.0}
    },
}


@pytest.fixture(scope="module")
def docker_env(tmp_path_factory):
    """Environment for `docker` / `docker compose`: an engine (started if none answers)."""
    env = dict(os.environ)
    env["DOCKER_CONFIG"] = str(docker_support.compose_config_dir(tmp_path_factory.mktemp("dcfg")))
    engine = None
    if not docker_support.engine_answers(env):
        if shutil.which("dockerd") is None or os.geteuid() != 0:
            reason = "no Docker engine answers and none can be started (dockerd, root)"
            if os.environ.get("REQUIRE_DOCKER"):
                pytest.fail(reason)
            pytest.skip(reason)
        engine = docker_support.DockerEngine(tmp_path_factory.mktemp("dockerd")).start()
        env["DOCKER_HOST"] = engine.host
    try:
        env.update(docker_support.build_standins(env))
        yield env
    finally:
        docker_support.remove_standins(env)
        if engine is not None:
            engine.stop()


def fresh_checkout(dest: Path) -> Path:
    """What `git clone` of this checkout gives (tracked + new, unignored files), as a git repo."""
    files = run(["git", "ls-files", "-co", "--exclude-standard", "-z"], REPO).stdout
    for name in filter(None, files.split("\0")):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    run("git init -q && git add -A && git -c user.email=t@t -c user.name=t commit -qm clone", dest)
    return dest


def _set_params(checkout: Path, override: dict) -> None:
    path = checkout / "params.yaml"
    params = merge(yaml.safe_load(path.read_text()), override)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def _compose(stack, *args: str, timeout: float = 600, check: bool = True):
    env, checkout, project = stack["env"], stack["checkout"], stack["project"]
    try:
        result = subprocess.run(
            ["docker", "compose", "-p", project, *args],
            cwd=checkout, env=env, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"docker compose {' '.join(args)} took over {timeout:g} s; what "
                             f"every container said:\n{_containers_said(stack)}") from exc  # fmt: skip
    if check and result.returncode != 0:
        logs = subprocess.run(
            ["docker", "compose", "-p", project, "logs", "--tail", "60"],
            cwd=checkout, env=env, capture_output=True, text=True,
        )  # fmt: skip
        raise AssertionError(
            f"docker compose {' '.join(args)} failed:\n{result.stderr[-3000:]}\n{logs.stdout}"
        )
    return result


def _containers_said(stack) -> str:
    """Each of the project's containers (one-off `run` ones included): state and last lines."""
    env, project = stack["env"], stack["project"]
    ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={project}"],
                         env=env, capture_output=True, text=True, timeout=60).stdout.split()  # fmt: skip
    parts = []
    for cid in ids:
        state = subprocess.run(["docker", "inspect", "-f", "{{.Name}} {{.State.Status}}", cid],
                               env=env, capture_output=True, text=True, timeout=60).stdout  # fmt: skip
        logs = subprocess.run(["docker", "logs", "--tail", "30", cid], env=env,
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        parts.append(f"--- {state.strip()}\n{logs.stdout[-2000:]}{logs.stderr[-2000:]}")
    return "\n".join(parts)


@pytest.fixture(scope="module")
def stack(docker_env, tmp_path_factory):
    checkout = fresh_checkout(tmp_path_factory.mktemp("clone"))
    _set_params(checkout, DOCKER_PARAMS)
    run(["chown", "-R", f"{OWNER}:{OWNER}", str(checkout)], checkout)
    port = free_port()
    env = {**docker_env, "API_PORT": str(port), "CAPTURE_DIR": "/capture"}
    stack = {"env": env, "checkout": checkout, "project": f"imgcls-test-{port}", "port": port}
    try:
        _compose(stack, "up", "-d", "--build", timeout=1800)
        deadline = time.monotonic() + 120
        while http_status(f"http://127.0.0.1:{port}/readyz") != 200:
            assert time.monotonic() < deadline, _compose(stack, "logs", "--tail", "80").stdout
            time.sleep(1)
        yield stack
    finally:
        _compose(stack, "down", "-v", "--rmi", "all", "--remove-orphans", check=False)


def _readme_curl_line() -> str:
    """The curl line of README's Docker section, as printed there."""
    docker_section = (REPO / "README.md").read_text().split("### Docker", 1)[1]
    return re.search(r"^curl -F image=@\S+ http://localhost:5000/predict$", docker_section, re.M)[0]


def _predict_readme_image(stack) -> dict:
    line = _readme_curl_line().replace("localhost:5000", f"127.0.0.1:{stack['port']}")
    out = run(line + " -sS --fail-with-body", stack["checkout"])
    return json.loads(out.stdout)


def _answer(body: dict) -> dict:
    """What the model said (each answer has its own request id)."""
    return {k: v for k, v in body.items() if k != "request_id"}


def test_readme_curl_line_answers_on_a_fresh_clone(stack):
    body = _predict_readme_image(stack)
    assert body["model"]["name"] == "resnet50v2"
    assert body["label"] in {"circle", "square", "triangle"}
    assert abs(sum(p["probability"] for p in body["predictions"]) - 1) < 1e-4


def test_a_real_photo_and_bad_input(stack):
    url = f"http://127.0.0.1:{stack['port']}/predict"
    photo = images.photo_like_jpeg()
    assert _post(url, photo)[0] == 200
    status, body = _post(url, b"this is not an image")
    assert status == 400 and body["error"]["code"] == "not_an_image"


def _post(url: str, data: bytes) -> tuple[int, dict]:
    boundary = "imgclsboundary"
    payload = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="x.jpg"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    req = urllib.request.Request(
        url, data=payload, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_the_page_and_the_explorer_are_served_from_the_container(stack):
    base = f"http://127.0.0.1:{stack['port']}"
    for path in ("/", "/web/app.js", "/docs", "/docs/assets/swagger-ui-bundle.js"):
        with urllib.request.urlopen(base + path, timeout=10) as resp:
            assert resp.status == 200, path
            assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
    with urllib.request.urlopen(base + "/models", timeout=10) as resp:
        models = json.loads(resp.read())["models"]
    assert [(m["name"], m["ready"]) for m in models] == [
        ("resnet50v2", True),
        ("resnet50v2_int8", True),
        ("resnet50v2_bf16", True),  # on the image's OpenVINO backend
    ]
    _, fp32 = _post(f"{base}/predict", images.photo_like_jpeg())
    status, bf16 = _post(f"{base}/predict?model=resnet50v2_bf16", images.photo_like_jpeg())
    assert status == 200 and bf16["model"]["name"] == "resnet50v2_bf16"
    assert {p["label"] for p in bf16["predictions"]} == {p["label"] for p in fp32["predictions"]}


def test_model_init_said_what_it_did_and_files_belong_to_the_checkout_owner(stack):
    logs = _compose(stack, "logs", "model-init").stdout
    assert "no servable model in model_repository/" in logs
    assert "generating the seeded demo dataset" in logs
    assert re.search(r"≈ \d+ min on 2 cores", logs)  # how long it takes, said up front
    checkout = stack["checkout"]
    for path in ("data/raw/circle/circle_0000.jpg", "model_repository/resnet50v2/1/model.onnx",
                 "artifacts/model.onnx", "dvc.lock", ".dvc/tmp", "model.dvc"):  # fmt: skip
        assert (checkout / path).stat().st_uid == OWNER, path


def _inspect(stack, service: str) -> dict:
    cid = _compose(stack, "ps", "-aq", service).stdout.split()[0]
    out = docker_support.docker(stack["env"], "inspect", cid)
    return json.loads(out.stdout)[0]


def test_only_the_api_is_published_and_every_service_is_hardened(stack):
    for service in ("model-init", "triton", "api"):
        host = _inspect(stack, service)["HostConfig"]
        assert host["CapDrop"] == ["ALL"], service
        assert "no-new-privileges:true" in host["SecurityOpt"], service
        assert host["ReadonlyRootfs"] is True, service
        assert host["Memory"] > 0, service
    # the pipeline (export included) ran to the end inside a 4 GB container
    assert _inspect(stack, "model-init")["HostConfig"]["Memory"] == 4 << 30
    assert not _inspect(stack, "triton")["HostConfig"]["PortBindings"]
    assert list(_inspect(stack, "api")["HostConfig"]["PortBindings"]) == ["5000/tcp"]


def test_serving_containers_run_as_non_root(stack):
    for service in ("triton", "api"):
        uid = _compose(stack, "exec", "-T", service, "id", "-u").stdout.strip()
        assert uid.isdigit() and int(uid) != 0, service


def test_triton_control_endpoints_are_refused_inside_the_network(stack):
    code = (
        "import json, urllib.request as u\n"
        "for path, body in (('/v2/logging', {'log_verbose_level': 1}),"
        " ('/v2/trace/setting', {'trace_rate': '1'}),"
        " ('/v2/repository/models/resnet50v2/unload', {})):\n"
        "    r = u.Request('http://triton:8000' + path, json.dumps(body).encode(), method='POST')\n"
        "    try: print(u.urlopen(r).status)\n"
        "    except Exception as e: print(e.code)\n"
    )
    out = _compose(stack, "exec", "-T", "api", "python", "-c", code).stdout.split()
    assert out == ["403", "403", "403"]


def test_second_up_reuses_the_model(stack):
    _compose(stack, "up", "-d", timeout=300)
    logs = _compose(stack, "logs", "model-init").stdout
    assert logs.count("running the pipeline") == 1
    assert "has a complete model: reusing it" in logs


def test_the_train_profile_publishes_a_candidate_promoted_and_rolled_back_live(stack):
    """The train profile (`dvc repro` in the training image, as model-init ran it with the
    training) publishes version 2 as a candidate, shadowed on live traffic; modelctl promotes it
    (every answer then comes from version 2) and rolls it back, Triton untouched. What changes is
    the drift reference's quantile: DVC reruns that stage and publish, not the training (the
    correction test, which changes data/raw, comes after), and publish makes a new version of
    every variant."""
    before = _answer(_predict_readme_image(stack))
    assert before["model"]["version"] == "1"
    started = _inspect(stack, "triton")["State"]["StartedAt"]
    _set_params(stack["checkout"], {"reference": {"quantile": 0.98}})
    retrain = _compose(stack, "--profile", "train", "run", "--rm", "model-preparation", timeout=900)
    assert "resnet50v2 version 2 (new): candidate" in retrain.stdout, retrain.stdout[-3000:]
    assert "version 2 is the shadow candidate" in retrain.stdout
    ran = re.findall(r"^Running stage '(\w+)'", retrain.stdout, re.M)
    assert ran == ["reference", "publish"], retrain.stdout[-3000:]
    assert _predict_readme_image(stack)["model"]["version"] == "1"  # users: still version 1

    status = _compose(stack, "--profile", "ops", "run", "--rm", "modelctl", "status").stdout
    assert "candidate 2 shadows 100 % of requests" in status, status
    promoted = _compose(stack, "--profile", "ops", "run", "--rm", "modelctl", "promote").stdout
    assert "resnet50v2: version 2 serves all traffic (was 1" in promoted, promoted
    after = [_predict_readme_image(stack)["model"]["version"] for _ in range(5)]
    assert after == ["2"] * 5

    back = _compose(stack, "--profile", "ops", "run", "--rm", "modelctl", "rollback").stdout
    assert "resnet50v2: version 1 serves all traffic (was 2)" in back, back
    assert _answer(_predict_readme_image(stack)) == before  # the same model, the same answer
    assert _inspect(stack, "triton")["State"]["StartedAt"] == started
    assert (stack["checkout"] / "model_repository/resnet50v2/2/model.onnx").stat().st_uid == OWNER


def test_a_correction_reaches_data_raw_through_the_capture_volume(stack):
    """The API (uid 10001) stores the correction in the capture volume; `harvest` (the
    checkout's owner, in the API's group) files it and adds the image to data/raw. Last in the
    module: with data/raw changed, a `--profile train` run after it retrains from the start."""
    base = f"http://127.0.0.1:{stack['port']}"
    photo = images.photo_like_jpeg(seed=3)
    status, answer = _post(f"{base}/predict", photo)
    assert status == 200 and isinstance(answer["familiar"], bool)
    # CAPTURE_RATE 0.1: the image was likely not kept, so it is sent again (checked identical)
    body = json.dumps({"request_id": answer["request_id"], "label": "square",
                       "image": base64.b64encode(photo).decode()}).encode()  # fmt: skip
    deadline = time.monotonic() + 10
    while True:  # the record is written in the background, just after the answer
        req = urllib.request.Request(f"{base}/feedback", data=body,
                                     headers={"Content-Type": "application/json"})  # fmt: skip
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                assert resp.status == 201
                break
        except urllib.error.HTTPError as exc:
            assert exc.code == 404 and time.monotonic() < deadline, exc.read()
            time.sleep(0.2)
    listed = _compose(stack, "run", "--rm", "harvest").stdout
    assert f"{answer['label']} → square" in listed
    _compose(stack, "run", "--rm", "harvest", "import", "--all")
    added = list((stack["checkout"] / "data/raw/square").glob("fb-*.png"))
    assert len(added) == 1 and added[0].stat().st_uid == OWNER
    assert "no pending feedback" in _compose(stack, "run", "--rm", "harvest").stdout
