"""harvest: reviewed feedback becomes training images, and nothing a user sent can write outside
the data folder, overwrite a file or add an image twice."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgcls.params import UserError
from imgcls.preprocessing import pixels_sha256
from model_preparation.tools import harvest as hv


def _store(tmp_path: Path) -> Path:
    store = tmp_path / "capture"
    (store / "feedback").mkdir(parents=True)
    return store


def _data(tmp_path: Path, classes=("circle", "square")) -> Path:
    data = tmp_path / "raw"
    for c in classes:
        (data / c).mkdir(parents=True)
        Image.new("RGB", (8, 8), (1, 2, 3)).save(data / c / "0.png")
    return data


def _entry(store: Path, name: str, label: str, value: int, predicted: str = "square",
           sha: str | None = "auto") -> Path:  # fmt: skip
    pixels = np.full((8, 8, 3), value, np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    (store / "feedback" / f"{name}.png").write_bytes(buf.getvalue())
    record = {"request_id": name, "index": 0, "label": label, "predicted": predicted,
              "model": "m", "version": "1", "at": "2026-12-01T00:00:00Z",
              "sha256": pixels_sha256(pixels) if sha == "auto" else sha}  # fmt: skip
    (store / "feedback" / f"{name}.json").write_text(json.dumps(record))
    return store / "feedback" / f"{name}.png"


def test_import_adds_the_image_under_its_label_and_files_the_entry(tmp_path):
    store, data = _store(tmp_path), _data(tmp_path)
    _entry(store, "a-0", "circle", 50)
    report = hv.harvest(store, data, None)
    (item,) = report["imported"]
    added = Path(item["path"])
    assert added.parent == (data / "circle").resolve() and added.name.startswith("fb-")
    assert (np.asarray(Image.open(added)) == 50).all()
    assert not list((store / "feedback").glob("*.json"))  # no longer pending
    moved = json.loads((store / "feedback" / "imported" / "a-0.json").read_text())
    assert moved["harvested_to"] == str(added)


def test_the_same_image_is_not_added_twice(tmp_path):
    store, data = _store(tmp_path), _data(tmp_path)
    _entry(store, "a-0", "circle", 50)
    hv.harvest(store, data, None)
    _entry(store, "b-0", "circle", 50)  # the same pixels corrected again
    report = hv.harvest(store, data, None)
    assert [d["id"] for d in report["duplicate"]] == ["b-0"] and not report["imported"]
    assert len(list((data / "circle").glob("fb-*.png"))) == 1


def test_an_existing_file_is_never_overwritten(tmp_path):
    store, data = _store(tmp_path), _data(tmp_path)
    png = _entry(store, "a-0", "circle", 50)
    digest = pixels_sha256(np.asarray(Image.open(png)))
    squatter = data / "circle" / f"fb-{digest[:16]}.png"
    squatter.write_bytes(b"not this image")
    report = hv.harvest(store, data, None)
    assert report["duplicate"] and squatter.read_bytes() == b"not this image"


@pytest.mark.parametrize("label", ["../evil", "..", ".", "a/b", "a\\b", "a\0b", ".hidden", "",
                                   "x" * 256, "line\nbreak"])  # fmt: skip
def test_labels_cannot_escape_the_data_folder(tmp_path, label):
    store, data = _store(tmp_path), _data(tmp_path)
    _entry(store, "a-0", label, 50)
    report = hv.harvest(store, data, None)
    assert [r["id"] for r in report["refused"]] == ["a-0"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["capture", "raw"]
    assert sorted(p.name for p in data.iterdir()) == ["circle", "square"]
    assert (store / "feedback" / "a-0.json").exists()  # still pending: a person decides


def test_a_new_class_needs_to_be_asked_for(tmp_path):
    store, data = _store(tmp_path), _data(tmp_path)
    _entry(store, "a-0", "triangle", 50)
    refused = hv.harvest(store, data, None)["refused"]
    assert "is not a class" in refused[0]["reason"] and "circle, square" in refused[0]["reason"]
    assert hv.harvest(store, data, None, new_class=True)["imported"]
    assert list((data / "triangle").glob("fb-*.png"))


def test_conflicting_corrections_stay_pending(tmp_path):
    store, data = _store(tmp_path), _data(tmp_path)
    _entry(store, "a-0", "circle", 50)
    _entry(store, "b-0", "square", 50)
    report = hv.harvest(store, data, None)
    assert sorted(r["id"] for r in report["refused"]) == ["a-0", "b-0"]
    hv.reject(store, ["b-0"])
    assert [i["id"] for i in hv.harvest(store, data, None)["imported"]] == ["a-0"]
    assert (store / "feedback" / "rejected" / "b-0.json").exists()


def test_a_tampered_image_is_refused(tmp_path):
    store, data = _store(tmp_path), _data(tmp_path)
    _entry(store, "a-0", "circle", 50, sha="0" * 64)
    assert "not the one that was answered" in hv.harvest(store, data, None)["refused"][0]["reason"]


def test_import_some_by_id_and_say_which_are_unknown(tmp_path):
    store, data = _store(tmp_path), _data(tmp_path)
    _entry(store, "a-0", "circle", 50)
    _entry(store, "b-0", "square", 60)
    report = hv.harvest(store, data, ["b-0", "zz"])
    assert [i["id"] for i in report["imported"]] == ["b-0"] and report["missing"] == ["zz"]
    assert (store / "feedback" / "a-0.json").exists()


def test_cli_errors_are_one_clear_line(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("CAPTURE_DIR", raising=False)
    with pytest.raises(UserError, match="CAPTURE_DIR"):
        hv.main(["list"])
    with pytest.raises(UserError, match="not a capture store"):
        hv.main(["list", "--store", str(tmp_path)])
    store = _store(tmp_path)
    with pytest.raises(UserError, match="--all"):
        hv.main(["import", "--store", str(store)])
    with pytest.raises(UserError, match="no pending feedback nope"):
        hv.main(["reject", "nope", "--store", str(store)])
    _entry(store, "a-0", "circle", 50)
    hv.main(["list", "--store", str(store)])
    out = capsys.readouterr().out
    assert "a-0" in out and "square → circle" in out and "1 pending" in out


def _disagreed_on(store: Path, value: int) -> str:
    """An input the API kept because the serving version and a candidate disagreed on it (the
    capture store's own writer)."""
    from imgcls_api.capture import CaptureStore, Disagreement
    from tests.conftest import wait_until

    capture = CaptureStore(store, rate=0.0, max_mb=10)
    pixels = np.full((8, 8, 3), value, np.uint8)
    capture.to_label(Disagreement("m", ("circle", "square", "star"), "1", "circle", "2", "star",
                                  pixels))  # fmt: skip
    capture.to_label(Disagreement("m", ("circle", "square", "star"), "1", "circle", "2", "star",
                                  pixels))  # the same image again: one entry  # fmt: skip
    wait_until(capture.idle, what="the capture store")
    (entry,) = [p.stem for p in (store / "tolabel").glob("*.json")]
    return entry


def test_disagreements_are_listed_first_and_a_label_makes_them_a_correction(tmp_path, capsys):
    store, data = _store(tmp_path), _data(tmp_path, ("circle", "square"))
    _entry(store, "a-0", "circle", 50)
    entry = _disagreed_on(store, 90)
    hv.main(["list", "--store", str(store)])
    listed = capsys.readouterr().out
    assert listed.index("to label") < listed.index("a-0")  # the deciding labels come first
    assert f"{entry}" in listed and "v1 circle · v2 star" in listed
    with pytest.raises(UserError, match="--new-class"):  # not a class of either version
        hv.label(store, entry, "cat", data)
    with pytest.raises(UserError, match="not a plain class name"):
        hv.label(store, entry, "../x", data)
    with pytest.raises(UserError, match="no input to label"):
        hv.label(store, "nope", "circle", data)
    assert hv.label(store, entry, "star", data) == entry
    assert not list((store / "tolabel").glob("*.json"))
    report = hv.harvest(store, data, [entry], new_class=True)  # star: a class the data lacks
    (item,) = report["imported"]
    assert Path(item["path"]).parent.name == "star" and Path(item["path"]).name.startswith("fb-")
    assert (np.asarray(Image.open(item["path"])) == 90).all()
    moved = json.loads((store / "feedback/imported" / f"{entry}.json").read_text())
    assert moved["source"] == "disagreement" and moved["candidate"]["label"] == "star"


def test_a_disagreement_can_be_rejected_like_a_correction(tmp_path):
    store = _store(tmp_path)
    entry = _disagreed_on(store, 120)
    assert hv.reject(store, [entry]) == [entry]
    assert (store / "tolabel/rejected" / f"{entry}.json").is_file()
    assert not hv.pending(store, "tolabel")


def test_inputs_of_no_known_class_are_listed_before_disagreements_and_named_as_new(
    tmp_path, capsys
):
    from imgcls_api.capture import CaptureStore, UnknownInput
    from tests.conftest import wait_until

    store, data = _store(tmp_path), _data(tmp_path, ("circle", "square"))
    disagreement = _disagreed_on(store, 90)
    capture = CaptureStore(store, rate=0.0, max_mb=10)
    pixels = np.full((8, 8, 3), 33, np.uint8)
    capture.unknown_to_label(UnknownInput("m", ("circle", "square"), "1", "square", 17.5, pixels))
    wait_until(capture.idle, what="the capture store")
    (unknown,) = [p.stem for p in (store / "tolabel").glob("*.json") if p.stem != disagreement]
    hv.main(["list", "--store", str(store)])
    listed = capsys.readouterr().out
    assert listed.index(unknown) < listed.index(disagreement)  # a new class showing up: first
    assert "of no class the model knows" in listed and "v1 square · 17.5" in listed
    assert "2 to label" in listed
    with pytest.raises(UserError, match="--new-class"):
        hv.label(store, unknown, "hexagon", data)
    assert hv.label(store, unknown, "hexagon", data, new_class=True) == unknown
    report = hv.harvest(store, data, [unknown], new_class=True)
    (item,) = report["imported"]
    assert Path(item["path"]).parent.name == "hexagon"
    moved = json.loads((store / "feedback/imported" / f"{unknown}.json").read_text())
    assert moved["source"] == "unknown" and moved["predicted"] == "square"
