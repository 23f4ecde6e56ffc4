"""The real tritonserver + the real API under gunicorn, over HTTP (no mocks)."""

from __future__ import annotations

import base64
import io
import re
import shlex
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests

from imgcls.preprocessing import load_image
from model_preparation.onnx_utils import session
from tests import images

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]


def _sample_files(project: Path, per_class: int = 2) -> list[Path]:
    return [
        p
        for c in ("circle", "square", "triangle")
        for p in sorted((project / "data/raw" / c).glob(f"{c}_*.jpg"))[:per_class]
    ]


def _post(api, files=None, **kwargs) -> requests.Response:
    return requests.post(f"{api.url}/predict", files=files, timeout=30, **kwargs)


def test_api_predictions_equal_in_process_onnxruntime(api, tiny_project):
    sess = session(tiny_project / "model_repository/resnet50v2/1/model.onnx")
    labels = (tiny_project / "model_repository/resnet50v2/1/labels.txt").read_text().split()
    for path in _sample_files(tiny_project):
        resp = _post(api, files={"image": path.read_bytes()})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        expected = sess.run(None, {"image": load_image(path, 48)[None]})[0][0]
        got = {p["label"]: p["probability"] for p in body["predictions"]}
        assert body["label"] == labels[int(expected.argmax())]
        np.testing.assert_allclose([got[label] for label in labels], expected, atol=1e-4)
        assert body["model"] == {"name": "resnet50v2", "version": "1"}
        assert body["probability"] == max(got.values())


def test_the_bf16_variant_answers_like_fp32(api, tiny_project):
    """OpenVINO in bfloat16 (the Python stand-in for Triton's OpenVINO backend here): the same
    top-1 class as FP32 on the demo images, probabilities within bfloat16's precision."""
    for path in _sample_files(tiny_project):
        data = path.read_bytes()
        fp32 = _post(api, files={"image": data}).json()
        resp = _post(api, files={"image": data}, params={"model": "resnet50v2_bf16"})
        assert resp.status_code == 200, resp.text
        bf16 = resp.json()
        assert bf16["model"] == {"name": "resnet50v2_bf16", "version": "1"}
        assert bf16["label"] == fp32["label"]
        assert abs(bf16["probability"] - fp32["probability"]) < 0.05


def test_readme_curl_line_works_verbatim(api, tiny_project):
    readme = (REPO / "README.md").read_text()
    line = re.search(r"^\s*(curl -F image=@\S+ http://localhost:5000/predict)\s*$", readme, re.M)
    assert line, "README must show the curl line"
    cmd = line.group(1).replace("localhost:5000", f"127.0.0.1:{api.port}")
    out = subprocess.run(
        shlex.split(cmd), cwd=tiny_project, capture_output=True, text=True, timeout=30
    )
    body = __import__("json").loads(out.stdout)
    assert body["label"] in {"circle", "square", "triangle"} and 0 < body["probability"] <= 1


def test_top_k_limits_the_distribution(api, tiny_project):
    path = _sample_files(tiny_project, 1)[0]
    body = _post(api, files={"image": path.read_bytes()}, params={"top_k": 1}).json()
    assert len(body["predictions"]) == 1 and body["predictions"][0]["label"] == body["label"]
    assert _post(api, files={"image": path.read_bytes()}, params={"top_k": 0}).status_code == 400


def test_several_images_in_one_request_answer_in_order(api, tiny_project):
    paths = _sample_files(tiny_project, 1)
    files = [("image", (p.name, p.read_bytes())) for p in paths]
    batch = _post(api, files=files).json()["results"]
    singles = [_post(api, files={"image": p.read_bytes()}).json() for p in paths]
    assert [r["label"] for r in batch] == [s["label"] for s in singles]
    for r, s in zip(batch, singles, strict=True):
        assert abs(r["probability"] - s["probability"]) < 1e-5


@pytest.mark.parametrize(
    "data", images.readable_formats().values(), ids=images.readable_formats().keys()
)
def test_every_readable_format_is_classified(api, data):
    resp = _post(api, files={"image": ("x", data)})
    assert resp.status_code == 200, resp.text
    assert abs(sum(p["probability"] for p in resp.json()["predictions"]) - 1) < 1e-4


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"files": {"image": ("empty.jpg", b"")}}, 400, "empty_file"),
        ({"files": {"image": ("photo.jpg", images.TEXT_AS_JPG)}}, 400, "not_an_image"),
        ({"files": {"image": ("t.jpg", images.truncated_jpeg())}}, 400, "corrupt_image"),
        (
            {"files": {"image": ("bomb.png", images.decompression_bomb(20000))}},
            413,
            "image_too_large",
        ),
        ({"files": {"picture": ("x.jpg", images.jpeg())}}, 400, "missing_field"),
        (
            {"data": b"hello", "headers": {"Content-Type": "text/plain"}},
            415,
            "unsupported_media_type",
        ),
        ({"files": {"image": ("big.jpg", b"0" * (21 << 20))}}, 413, "payload_too_large"),
    ],
    ids=["empty", "text-as-jpg", "truncated", "bomb", "missing-field", "wrong-type", "oversized"],
)
def test_bad_uploads_get_a_json_error(api, kwargs, status, code):
    resp = _post(api, **kwargs)
    assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"].startswith("application/json")
    assert resp.json()["error"]["code"] == code


def test_array_inputs_match_the_file_path(api, tiny_project):
    path = _sample_files(tiny_project, 1)[0]
    expected = _post(api, files={"image": path.read_bytes()}).json()
    pixels = load_image(path, 48)  # already model-sized: the array path must give the same answer
    as_json = _post(api, json={"instances": [pixels.tolist()]}).json()["results"][0]
    buf = io.BytesIO()
    np.save(buf, pixels[None])
    as_npy = _post(api, data=buf.getvalue(), headers={"Content-Type": "application/x-npy"}).json()
    b64 = _post(
        api, json={"instances": [{"b64": base64.b64encode(path.read_bytes()).decode()}]}
    ).json()
    frame = {
        "columns": list(range(pixels.size)),
        "index": [0],
        "data": [pixels.reshape(-1).tolist()],
    }
    as_frame = _post(api, json=frame).json()["results"][0]
    for result in (as_json, as_npy["results"][0], b64["results"][0], as_frame):
        assert result["label"] == expected["label"]
        assert abs(result["probability"] - expected["probability"]) < 1e-4


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"instances": [[[1, 2], [3, 4]]]}, "invalid_shape"),
        ({"instances": [[[[1, 2]] * 4] * 4]}, "invalid_channels"),
        ({"instances": [[[[300, 0, 0]] * 4] * 4]}, "out_of_range"),
        ({"instances": [[[[-1, 0, 0]] * 4] * 4]}, "out_of_range"),
        ({"instances": [[[["a", "b", "c"]] * 4] * 4]}, "invalid_pixels"),
    ],
    ids=["rank", "channels", "over-255", "negative", "non-numeric"],
)
def test_bad_arrays_are_422(api, body, code):
    resp = _post(api, json=body)
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["code"] == code


def test_nan_in_npy_is_422(api):
    arr = np.zeros((8, 8, 3), np.float32)
    arr[0, 0, 0] = np.nan
    buf = io.BytesIO()
    np.save(buf, arr)
    resp = _post(api, data=buf.getvalue(), headers={"Content-Type": "application/x-npy"})
    assert resp.status_code == 422 and resp.json()["error"]["code"] == "invalid_pixels"


def _metric(text: str, name: str, model: str) -> float:
    pattern = rf'^{name}{{[^}}]*model="{model}"[^}}]*}} ([0-9.e+]+)$'
    return sum(float(v) for v in re.findall(pattern, text, re.M))


def test_concurrent_requests_are_batched_by_triton(api, triton, tiny_project):
    before = requests.get(triton.metrics_url, timeout=5).text
    data = _sample_files(tiny_project, 1)[0].read_bytes()
    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(lambda _: _post(api, files={"image": data}).status_code, range(64)))
    assert codes == [200] * 64
    after = requests.get(triton.metrics_url, timeout=5).text
    inferences = _metric(after, "nv_inference_count", "resnet50v2") - _metric(
        before, "nv_inference_count", "resnet50v2"
    )
    executions = _metric(after, "nv_inference_exec_count", "resnet50v2") - _metric(
        before, "nv_inference_exec_count", "resnet50v2"
    )
    # 64 images, plus at most one label probe per API worker if its model information expired
    # (model_info_ttl_s) during the burst
    assert 64 <= inferences <= 66, inferences
    assert executions < inferences, (executions, inferences)


@pytest.mark.parametrize("worker_class", ["gevent", "gthread"])
def test_concurrent_requests_each_get_their_own_answer(
    triton, tiny_project, tmp_path, worker_class
):
    """One worker, 16 clients, distinct images: the API's batching puts several requests in one
    Triton call, and every answer is still ONNX Runtime's for that request's own image."""
    from local_stack.api import ApiServer

    sess = session(tiny_project / "model_repository/resnet50v2/1/model.onnx")
    paths = _sample_files(tiny_project, 4)
    expected = {p: sess.run(None, {"image": load_image(p, 48)[None]})[0][0] for p in paths}
    labels = (tiny_project / "model_repository/resnet50v2/1/labels.txt").read_text().split()
    env = {"WEB_CONCURRENCY": "1", "API_WORKER_CLASS": worker_class}

    def check(path: Path) -> None:
        resp = _post(api, files={"image": path.read_bytes()})
        assert resp.status_code == 200, resp.text
        got = {p["label"]: p["probability"] for p in resp.json()["predictions"]}
        np.testing.assert_allclose([got[label] for label in labels], expected[path], atol=1e-4)

    with (
        ApiServer(triton.url, workdir=tmp_path / "api", env=env) as api,
        ThreadPoolExecutor(16) as pool,
    ):
        list(pool.map(check, [paths[i % len(paths)] for i in range(96)]))


def test_readyz_is_503_until_triton_has_the_model_then_200(model_repository, tmp_path):
    from local_stack.api import ApiServer
    from local_stack.procs import free_port
    from local_stack.tritonserver import TritonServer

    port = free_port()
    api = ApiServer(f"127.0.0.1:{port}", workdir=tmp_path / "api", env={"CONNECT_TIMEOUT_S": "0.5"})
    try:
        api.start(wait_ready=False)
        assert requests.get(f"{api.url}/readyz", timeout=5).status_code == 503
        with TritonServer(model_repository, http_port=port, workdir=tmp_path / "triton"):
            deadline = time.monotonic() + 10
            while requests.get(f"{api.url}/readyz", timeout=5).status_code != 200:
                assert time.monotonic() < deadline, "API never became ready"
                time.sleep(0.2)
            assert requests.get(f"{api.url}/readyz", timeout=5).json()["labels"] == [
                "circle",
                "square",
                "triangle",
            ]
    finally:
        api.stop()


def test_overload_is_shed_with_429_and_retry_after(triton, tiny_project, tmp_path):
    from local_stack.api import ApiServer

    env = {"WEB_CONCURRENCY": "1", "MAX_IN_FLIGHT": "2"}
    data = _sample_files(tiny_project, 1)[0].read_bytes()
    with ApiServer(triton.url, workdir=tmp_path / "api", env=env) as api:
        with ThreadPoolExecutor(16) as pool:
            responses = list(pool.map(lambda _: _post(api, files={"image": data}), range(48)))
        codes = {r.status_code for r in responses}
        assert codes == {200, 429}, codes
        shed = next(r for r in responses if r.status_code == 429)
        assert shed.headers["Retry-After"] and shed.json()["error"]["code"] == "overloaded"
        assert _post(api, files={"image": data}).status_code == 200  # recovers at once


def _stub_threads(model_dir: Path) -> list[int]:
    """Thread counts of the Python-backend stubs serving ``model_dir`` (one per instance)."""
    counts = []
    for pid in subprocess.run(["pgrep", "-f", "triton_python_backend_stub"], capture_output=True,
                              text=True).stdout.split():  # fmt: skip
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if len(argv) > 1 and Path(argv[1].decode()).is_relative_to(model_dir):
                counts.append(len(list(Path(f"/proc/{pid}/task").iterdir())))
        except OSError:
            continue  # a stub of another test's server that just exited
    return counts


def test_config_thread_layout_reaches_onnxruntime(tmp_path):
    """``instance_count`` and ``intra_op_thread_count`` from config.pbtxt are honoured: two stubs,
    and the three-thread model's stubs hold the two extra ONNX Runtime pool threads."""
    from local_stack.tritonserver import TritonServer
    from model_preparation.publish import publish
    from tests.models import publish_params, tiny_onnx

    tiny_onnx(tmp_path / "model.onnx")  # the FP32 artifact's name (imgcls.variants)
    labels, repo = tmp_path / "labels.txt", tmp_path / "repo"
    labels.write_text("a\nb\nc\n")
    for name, threads in (("one", 1), ("three", 3)):
        layout = publish_params(model_name=name, instance_count=2, intra_op_threads=threads,
                                int8=False, bf16=False)  # fmt: skip
        publish(tmp_path, labels, repo, layout)
    with TritonServer(repo, workdir=tmp_path / "triton"):
        one, three = _stub_threads(repo / "one"), _stub_threads(repo / "three")
    assert len(one) == 2 and len(three) == 2, (one, three)
    assert [t - 2 for t in three] == one, (one, three)


def test_the_model_meets_tritons_example_image_client(triton, tiny_project):
    """What triton-inference-server/client's image_client.py checks before it classifies: one
    input of 3 dims past the batch with an NHWC/NCHW format, a vector output; then it asks for
    the top classes through the classification extension. (image_client also insists on exactly
    one output: the drift and unknown-class outputs are more, ``publish.drift: false`` drops
    them.)"""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(triton.url)
    meta = client.get_model_metadata("resnet50v2")
    config = client.get_model_config("resnet50v2")
    (inp,) = meta["inputs"]
    out, drift, unknown = meta["outputs"]
    assert (out["name"], drift["name"], unknown["name"]) == ("probabilities", "drift", "unknown")
    assert config["max_batch_size"] > 0 and len(inp["shape"]) == 4
    assert config["input"][0]["format"] == "FORMAT_NHWC"
    assert sum(d > 1 for d in out["shape"][1:]) <= 1  # image_client: "expecting a vector"
    _, h, w, c = inp["shape"]
    assert c == 3
    image = load_image(_sample_files(tiny_project, 1)[0], (h, w))[None]
    tensor = httpclient.InferInput(inp["name"], list(image.shape), inp["datatype"])
    tensor.set_data_from_numpy(image)
    top = httpclient.InferRequestedOutput(out["name"], class_count=3)
    result = client.infer("resnet50v2", [tensor], outputs=[top]).as_numpy(out["name"])
    assert result.shape == (1, 3)
    labels = [entry.decode().split(":", 2)[2] for entry in result[0]]  # "score:index:label"
    assert sorted(labels) == ["circle", "square", "triangle"]
