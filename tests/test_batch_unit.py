"""The batch job's logic without Triton: sources and shards, the resumable output, the pool that
turns files into rows (the in-memory gateway stands in for Triton; tests/test_batch.py runs the
CLI against the real one)."""

from __future__ import annotations

import hashlib
import json
import threading

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from imgcls.gateway.errors import ApiError
from imgcls_batch.__main__ import main
from imgcls_batch.classify import Job, JobFailed, classify, rows_for
from imgcls_batch.output import Output, OutputError
from imgcls_batch.sources import Item, Shard, SourceError, list_sources, read, shard_items
from tests.images import encode, jpeg

MODEL = "resnet50v2"


def _item(data: bytes, path: str = "a.jpg") -> Item:
    return Item(path, data, hashlib.sha256(data).hexdigest())


def _colour(rgb) -> bytes:
    return encode(Image.new("RGB", (20, 20), rgb), "PNG")


def _row(path: str, model: str = MODEL, version: str = "1") -> dict:
    return {"path": path, "sha256": "0" * 64, "label": "circle", "probability": 0.9,
            "topk": "[]", "drift": None, "model": model, "version": version, "error": None}  # fmt: skip


# -- shards --------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["3/2", "a/b", "1/0", "-1/2", "1", "0/2/3", ""])
def test_a_bad_shard_spec_is_refused(text):
    with pytest.raises(SourceError, match="--shard"):
        Shard.parse(text)


def test_shards_cover_every_hash_exactly_once():
    hashes = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(3000)]
    shards = [Shard.parse(f"{i}/3") for i in range(3)]
    owners = [[s for s in shards if s.owns(h)] for h in hashes]
    assert all(len(o) == 1 for o in owners)
    sizes = [sum(1 for o in owners if o[0] == s) for s in shards]
    assert min(sizes) > 900, sizes  # and evenly


def test_the_same_content_goes_to_one_shard_whatever_its_name(tmp_path):
    for name in ("x.jpg", "copy-of-x.jpg"):
        (tmp_path / name).write_bytes(jpeg())
    paths = list_sources(str(tmp_path))
    mine = [[i.path for i in shard_items(paths, Shard.parse(f"{k}/2"))] for k in range(2)]
    assert sorted(len(m) for m in mine) == [0, 2]


# -- sources -------------------------------------------------------------------------------------
def test_a_folder_is_listed_recursively_and_sorted_without_hidden_files(tmp_path):
    for name in ("b/2.jpg", "a/1.jpg", "c.png", ".hidden/x.jpg", "a/.DS_Store"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert list_sources(str(tmp_path)) == [
        str(tmp_path / n) for n in ("a/1.jpg", "b/2.jpg", "c.png")
    ]


def test_a_file_list_names_paths_and_urls(tmp_path):
    listing = tmp_path / "files.txt"
    listing.write_text("# archive\n/data/a.jpg\n\n  s3://bucket/b.jpg  \n")
    assert list_sources(str(listing)) == ["/data/a.jpg", "s3://bucket/b.jpg"]


@pytest.mark.parametrize("case", ["missing", "empty_folder", "empty_list", "unknown_scheme"])
def test_a_source_that_names_nothing_is_one_clear_error(tmp_path, case):
    src = {"missing": str(tmp_path / "nope"), "empty_folder": str(tmp_path),
           "empty_list": str(tmp_path / "l.txt"), "unknown_scheme": "nosuch://bucket/x"}[case]  # fmt: skip
    (tmp_path / "l.txt").write_text("# nothing\n") if case == "empty_list" else None
    with pytest.raises(SourceError, match=r"(no such|no files|names no|nosuch)"):
        list_sources(src)


def test_an_fsspec_url_is_listed_and_read():
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe({"/archive/x/1.jpg": jpeg(), "/archive/2.jpg": b"not an image"})
    paths = list_sources("memory://archive")
    assert paths == ["memory:///archive/2.jpg", "memory:///archive/x/1.jpg"]
    assert read(paths[1]).data == jpeg()
    assert read("memory:///archive/gone.jpg").error == "unreadable_file"


# -- the output ----------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_rows_written_in_parts_resume_and_end_in_one_file(tmp_path, suffix):
    out = tmp_path / f"p{suffix}"
    first = Output(out, MODEL)
    first.append([_row("b"), _row("a")])  # a killed run leaves its parts…
    second = Output(out, MODEL)  # …the next run starts from them
    assert second.done == {"a", "b"}
    second.append([_row("a"), _row("c")])  # "a" again: never written twice
    assert second.finish() == 3
    assert not (tmp_path / f"p{suffix}.parts").exists()
    third = Output(out, MODEL)  # a finished file is resumed too: new files only
    third.append([_row("d")])
    assert third.finish() == 4
    table = pq.read_table(out) if suffix == ".parquet" else None
    paths = table.column("path").to_pylist() if table else [
        line.split(",")[0].strip('"') for line in out.read_text().splitlines()[1:]]  # fmt: skip
    assert paths == ["a", "b", "c", "d"]


def test_a_half_written_part_is_not_read(tmp_path):
    out = tmp_path / "p.parquet"
    Output(out, MODEL).append([_row("a")])
    (tmp_path / "p.parquet.parts" / ".part-000002.parquet.tmp-1").write_bytes(b"PAR1 cut")
    assert Output(out, MODEL).done == {"a"}


def test_another_models_rows_are_refused_unless_overwritten(tmp_path):
    out = tmp_path / "p.parquet"
    Output(out, MODEL).append([_row("a")])
    with pytest.raises(OutputError, match="rows of model resnet50v2, not resnet50v2_int8"):
        Output(out, "resnet50v2_int8")
    assert Output(out, MODEL).done == {"a"}  # the refusal changed nothing
    assert Output(out, "resnet50v2_int8", overwrite=True).done == set()


@pytest.mark.parametrize("name", ["p.json", "nodir/p.parquet"])
def test_an_output_name_that_cannot_be_written_is_refused(tmp_path, name):
    with pytest.raises(OutputError, match="--out"):
        Output(tmp_path / name, MODEL)


def test_a_file_that_is_not_a_table_is_refused(tmp_path):
    out = tmp_path / "p.parquet"
    out.write_text("hello")
    with pytest.raises(OutputError, match="not a table"):
        Output(out, MODEL)


# -- files to rows -------------------------------------------------------------------------------
def test_each_file_becomes_one_row_and_bad_ones_carry_a_code(gateway):
    info = gateway.route(MODEL).serving
    items = [_item(_colour((250, 0, 0)), "red.png"), _item(b"GIF89a broken", "bad.gif"),
             Item("gone.jpg", None, "", "unreadable_file"), _item(_colour((0, 0, 250)), "blue.png")]  # fmt: skip
    rows = {r["path"]: r for r in rows_for(items, gateway, info, Job("x", MODEL, top_k=2))}
    assert rows["red.png"]["label"] == "circle" and rows["blue.png"]["label"] == "triangle"
    assert rows["bad.gif"]["error"] == "not_an_image" and rows["bad.gif"]["label"] is None
    assert rows["gone.jpg"]["error"] == "unreadable_file"
    top = json.loads(rows["red.png"]["topk"])
    assert len(top) == 2 and top[0]["label"] == "circle"
    assert top[0]["probability"] == pytest.approx(rows["red.png"]["probability"], abs=1e-6)
    assert rows["red.png"]["version"] == "1" and rows["red.png"]["drift"] is not None
    red = rows["red.png"]  # the stand-in's scores: drift 0.83 (familiar), unknown −1.9 (known)
    assert red["familiar"] is True and red["known_class"] is True
    assert red["unknown"] == pytest.approx(2.0 - 250 / 64, abs=1e-4)
    assert rows["bad.gif"]["unknown"] is None and rows["bad.gif"]["known_class"] is None
    assert [len(b) for b in gateway.batches] == [2]  # only the decodable images were sent


def test_the_pool_sends_full_batches_and_delivers_every_row_once(gateway):
    info = gateway.route(MODEL).serving  # max_batch_size 4
    rng = np.random.default_rng(0)
    items = [_item(_colour(tuple(int(c) for c in rng.integers(0, 255, 3))), f"{i}.png")
             for i in range(50)]  # fmt: skip
    delivered, threads = [], set()

    def on_rows(rows):
        threads.add(threading.current_thread().name)
        delivered.extend(rows)

    classify(iter(items), Job("x", MODEL, concurrency=3), gateway, info, on_rows)
    assert sorted(r["path"] for r in delivered) == sorted(i.path for i in items)
    assert max(len(b) for b in gateway.batches) == 4 and sum(map(len, gateway.batches)) == 50
    assert threads == {threading.current_thread().name}  # rows reach the caller's thread only


def test_triton_going_away_mid_job_fails_it_after_retries(gateway, monkeypatch):
    monkeypatch.setattr("imgcls_batch.classify.time.sleep", lambda s: None)
    info = gateway.route(MODEL).serving
    gateway.error = ApiError(503, "triton_unavailable", "Triton is unreachable")
    with pytest.raises(JobFailed, match="unreachable"):
        classify(iter([_item(_colour((1, 2, 3)))]), Job("x", MODEL), gateway, info, print)


# -- the command line ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{tmp}/missing"], "no such file or folder"),
        (["{tmp}", "--shard", "3/2"], "--shard"),
        (["{tmp}", "--shard", "a/b"], "--shard"),
        (["{tmp}", "--triton-url", "127.0.0.1:9", "--timeout", "2"], "Triton at 127.0.0.1:9"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2_with_nothing_written(
    tmp_path, capsys, args, message
):
    (tmp_path / "a.jpg").write_bytes(jpeg())
    out = tmp_path / "out" / "p.parquet"
    out.parent.mkdir()
    argv = [a.format(tmp=tmp_path) for a in args] + ["--out", str(out), "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert list(out.parent.iterdir()) == []
