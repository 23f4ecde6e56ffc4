"""``python -m imgcls_batch`` against the real Triton serving the tiny pipeline's model: every
file one row, labels equal to in-process ONNX Runtime on the served file, killed with SIGKILL and
resumed without a row twice, two shards covering the archive exactly once, an S3 bucket on a real
S3-compatible server (moto's), and the clear refusals."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from imgcls.preprocessing import load_image
from imgcls.runtimes import predict
from model_preparation.onnx_utils import session
from tests.conftest import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]
PER_CLASS = 40


@pytest.fixture(scope="module")
def archive(tiny_project, tmp_path_factory) -> Path:
    """120 demo images in class folders, one corrupt file, one empty file."""
    root = tmp_path_factory.mktemp("archive")
    for folder in sorted((tiny_project / "data/raw").iterdir()):
        for path in sorted(folder.glob("*.jpg"))[-PER_CLASS:]:  # held-out-ish: the last ones
            (root / folder.name).mkdir(exist_ok=True)
            shutil.copy2(path, root / folder.name / path.name)
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "empty.png").write_bytes(b"")
    return root


def classify(args: list, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "imgcls_batch", *map(str, args), "--quiet"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kwargs)
    if check:
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done


def rows(path: Path) -> dict[str, dict]:
    table = pq.read_table(path).to_pylist()
    assert len({r["path"] for r in table}) == len(table), "a path written twice"
    return {r["path"]: r for r in table}


def files(root: Path) -> set[str]:
    return {str(p) for p in root.rglob("*") if p.is_file()}


def test_every_file_gets_the_served_models_answer_or_an_error_code(triton, tiny_project, archive,
                                                                   tmp_path):  # fmt: skip
    out = tmp_path / "p.parquet"
    printed = classify([archive, "--out", out, "--triton-url", triton.url]).stdout
    assert f"classified {3 * PER_CLASS + 2} files (2 with an error)" in printed
    got = rows(out)
    assert set(got) == files(archive)
    assert got[str(archive / "broken.jpg")]["error"] == "not_an_image"
    assert got[str(archive / "empty.png")]["error"] == "empty_file"
    images = {p: r for p, r in got.items() if not r["error"]}
    (version,) = {r["version"] for r in images.values()}
    served = tiny_project / f"model_repository/resnet50v2/{version}"
    labels = (served / "labels.txt").read_text().split()
    paths = sorted(images)
    pixels = np.stack([load_image(p, 48) for p in paths])
    expected = predict(session(served / "model.onnx"), pixels)
    assert [images[p]["label"] for p in paths] == [labels[i] for i in expected.argmax(1)]
    np.testing.assert_allclose([images[p]["probability"] for p in paths], expected.max(1),
                               atol=1e-4)  # fmt: skip
    accuracy = np.mean([images[p]["label"] == Path(p).parent.name for p in paths])
    assert accuracy > 0.6, accuracy  # three classes: chance is 1/3
    assert all(r["model"] == "resnet50v2" and len(r["sha256"]) == 64 for r in images.values())
    assert all(r["drift"] is not None and r["unknown"] is not None for r in images.values())
    assert all(isinstance(r["familiar"], bool) and isinstance(r["known_class"], bool)
               for r in images.values())  # fmt: skip


def test_int8_is_a_flag_away(triton, archive, tmp_path):
    out = tmp_path / "p.csv"
    classify([archive / "circle", "--out", out, "--model", "resnet50v2_int8",
              "--triton-url", triton.url])  # fmt: skip
    lines = out.read_text().splitlines()
    assert len(lines) == PER_CLASS + 1 and "resnet50v2_int8" in lines[1]
    refused = classify([archive / "circle", "--out", out, "--triton-url", triton.url], check=False)
    assert refused.returncode == 2 and "holds rows of model resnet50v2_int8" in refused.stderr
    assert len(out.read_text().splitlines()) == PER_CLASS + 1  # the refusal wrote nothing


def test_killed_with_sigkill_and_run_again_it_resumes_without_a_row_twice(triton, archive,
                                                                          tmp_path):  # fmt: skip
    out = tmp_path / "p.parquet"
    parts = tmp_path / "p.parquet.parts"
    cmd = [sys.executable, "-m", "imgcls_batch", str(archive), "--out", str(out), "--quiet",
           "--triton-url", triton.url, "--flush-rows", "8", "--concurrency", "1",
           "--batch-size", "4"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: len(list(parts.glob("part-*.parquet"))) >= 3, timeout=120,
                   what="three part files")  # fmt: skip
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not out.exists()
    kept = sum(pq.read_table(p).num_rows for p in parts.glob("part-*.parquet"))
    assert 24 <= kept < len(files(archive))
    printed = classify([archive, "--out", out, "--triton-url", triton.url]).stdout
    assert f"classified {len(files(archive)) - kept} files" in printed  # only what was missing
    assert set(rows(out)) == files(archive) and not parts.exists()


def test_two_shards_in_parallel_cover_the_archive_exactly_once(triton, archive, tmp_path):
    whole = tmp_path / "whole.parquet"
    classify([archive, "--out", whole, "--triton-url", triton.url])
    procs = [subprocess.Popen([sys.executable, "-m", "imgcls_batch", str(archive), "--quiet",
                               "--out", str(tmp_path / f"s{i}.parquet"), "--shard", f"{i}/2",
                               "--triton-url", triton.url])
             for i in range(2)]  # fmt: skip
    assert [p.wait(timeout=600) for p in procs] == [0, 0]
    first, second = rows(tmp_path / "s0.parquet"), rows(tmp_path / "s1.parquet")
    assert first and second and not set(first) & set(second)
    assert set(first) | set(second) == files(archive)
    merged = {**first, **second}
    keys = ("label", "sha256", "error", "version")
    assert {p: [r[k] for k in keys] for p, r in merged.items()} == {
        p: [r[k] for k in keys] for p, r in rows(whole).items()}  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(archive):
    """A real S3-compatible server (moto's, in-process threads) holding the archive's circles."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
           "AWS_MAX_ATTEMPTS": "1"}  # fmt: skip
    try:
        client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                              aws_access_key_id="test", aws_secret_access_key="test")  # fmt: skip
        client.create_bucket(Bucket="archive")
        for path in sorted((archive / "circle").iterdir()):
            client.put_object(Bucket="archive", Key=f"2025/circle/{path.name}",
                              Body=path.read_bytes())  # fmt: skip
        yield {**os.environ, **env}
    finally:
        server.stop()


def test_an_s3_bucket_is_classified_like_a_folder(triton, archive, s3, tmp_path):
    out = tmp_path / "p.parquet"
    classify(["s3://archive/2025", "--out", out, "--triton-url", triton.url], env=s3)
    local = tmp_path / "local.parquet"
    classify([archive / "circle", "--out", local, "--triton-url", triton.url])
    remote = rows(out)
    assert len(remote) == PER_CLASS and all(
        p.startswith("s3://archive/2025/circle/") for p in remote
    )
    by_hash = {r["sha256"]: r["label"] for r in rows(local).values()}
    assert {r["sha256"]: r["label"] for r in remote.values()} == by_hash


def test_an_unreachable_bucket_is_one_line_and_exit_2(triton, s3, tmp_path):
    env = {**s3, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{_free_port()}"}  # nothing listens
    started = time.monotonic()
    done = classify(["s3://archive/2025", "--out", tmp_path / "p.parquet", "--triton-url",
                     triton.url], check=False, env=env)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: s3://archive/2025: cannot list it")
    assert len(done.stderr.strip().splitlines()) == 1 and time.monotonic() - started < 60
    assert list(tmp_path.iterdir()) == []
