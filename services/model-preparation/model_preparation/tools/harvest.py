"""Turn reviewed feedback from the capture store (``CAPTURE_DIR``) into training images.

    python -m model_preparation.tools.harvest list   [--store DIR]
    python -m model_preparation.tools.harvest import [--store DIR] [--data data/raw] --all | ID...
    python -m model_preparation.tools.harvest reject [--store DIR] ID...
    python -m model_preparation.tools.harvest label  [--store DIR] ID LABEL [--new-class]

``list`` shows first the inputs the answering version said are of no class it knows, then those a
candidate and the serving version disagreed on while it was shadowed or canaried (both in
``tolabel/``, kept by the API when capture is on; ``label`` gives one its class, making it a
correction), then the pending corrections (what the model said, what the user
said). ``import`` copies
each one's image, the pixels the model saw, into ``data/raw/<label>/fb-<digest>.png`` and moves the
entry to ``feedback/imported/``; ``reject`` moves entries to ``feedback/rejected/``. Then
``dvc add data`` (or ``make model``) versions the data and retrains: the new model goes live
through the usual candidate → canary → promote path.

A label comes from a user, so it is treated as untrusted even though the API checked it against
the answering version's labels: it must name an existing class folder (``--new-class`` allows a
new one), one plain path component (no separators, NUL, dot names), under the data folder. An
image already in the data (same bytes anywhere, or same pixels under that name) is not added
twice, a file is never overwritten, and the same pixels corrected to two labels are left pending
for a person to decide.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from imgcls.gateset import FEEDBACK_PREFIX
from imgcls.labels import is_plain_class_name
from imgcls.params import UserError, run_cli
from imgcls.preprocessing import pixels_sha256

from ..common import RAW_DATA


@dataclass(frozen=True)
class Entry:
    """One pending correction: ``feedback/<id>.json`` beside ``feedback/<id>.png``."""

    id: str
    record: dict
    image: Path

    @property
    def label(self) -> str:
        return str(self.record.get("label", ""))


def pending(store: Path, folder_name: str = "feedback") -> list[Entry]:
    """The entries waiting in ``feedback/`` (corrections), or ``tolabel/`` (inputs the serving
    version and a candidate disagreed on, waiting for a person's label)."""
    if not (store / "feedback").is_dir():
        raise UserError(f"{store} is not a capture store (no feedback/ in it): set CAPTURE_DIR "
                        "to the API's capture directory or pass --store")  # fmt: skip
    folder = store / folder_name
    entries = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            record = json.loads(path.read_text("utf-8"))
        except (OSError, ValueError) as exc:
            print(f"skipped {path.name}: unreadable ({exc})", file=sys.stderr)
            continue
        entries.append(Entry(path.stem, record, folder / f"{path.stem}.png"))
    return entries


def safe_label(label: str, data: Path) -> Path:
    """``data/<label>``, or UserError when the label is not one plain folder name under it."""
    if not is_plain_class_name(label) or (data / label).resolve().parent != data.resolve():
        raise UserError(f"label {label!r} is not a plain class name")
    return (data / label).resolve()


def _digests(data: Path) -> set[str]:
    """SHA-256 of every file already in the data."""
    found = set()
    for path in data.rglob("*"):
        if path.is_file() and not path.name.startswith("."):
            found.add(hashlib.sha256(path.read_bytes()).hexdigest())
    return found


def _load(entry: Entry) -> tuple[bytes, str]:
    """The image's bytes and its pixels' digest, checked against the record."""
    try:
        data = entry.image.read_bytes()
        with Image.open(entry.image) as img:
            pixels = np.asarray(img.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{entry.id}: its image is missing or unreadable ({exc})") from None
    digest = pixels_sha256(pixels)
    if entry.record.get("sha256") and entry.record["sha256"] != digest:
        raise UserError(f"{entry.id}: its image is not the one that was answered")
    return data, digest


def _write_new(path: Path, data: bytes) -> bool:
    """Write ``path`` whole, never over an existing file; False when it exists."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    try:
        os.link(tmp, path)  # fails if path exists: no overwrite, even by a concurrent import
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    return True


def _move(entry: Entry, to: str, **extra) -> None:
    folder = entry.image.parent / to
    folder.mkdir(exist_ok=True)
    record = {**entry.record, **extra}
    (folder / f"{entry.id}.json").write_text(json.dumps(record, indent=1) + "\n", "utf-8")
    if entry.image.exists():
        os.replace(entry.image, folder / entry.image.name)
    (entry.image.parent / f"{entry.id}.json").unlink()


def harvest(store: Path, data: Path, ids: list[str] | None, new_class: bool = False) -> dict:
    """Import the chosen entries (all when ``ids`` is None); what happened to each."""
    entries = pending(store)
    chosen = entries if ids is None else [e for e in entries if e.id in ids]
    missing = sorted(set(ids or ()) - {e.id for e in entries})
    report: dict[str, list] = {"imported": [], "duplicate": [], "refused": [], "missing": missing}
    digests = _digests(data) if data.is_dir() else set()
    labels_of: dict[str, set[str]] = {}
    loaded = {}
    for entry in chosen:
        try:
            loaded[entry.id] = _load(entry)
        except UserError as exc:
            report["refused"].append({"id": entry.id, "reason": str(exc)})
            continue
        labels_of.setdefault(loaded[entry.id][1], set()).add(entry.label)
    for entry in chosen:
        if entry.id not in loaded:
            continue
        data_bytes, digest = loaded[entry.id]
        try:
            outcome = _import_one(entry, data, data_bytes, digest, digests, labels_of, new_class)
        except UserError as exc:
            report["refused"].append({"id": entry.id, "reason": str(exc)})
            continue
        report[outcome[0]].append({"id": entry.id, "label": entry.label, "path": outcome[1]})
    return report


def _import_one(entry, data, data_bytes, digest, digests, labels_of, new_class):
    if len(labels_of[digest]) > 1:
        raise UserError(f"the same image was corrected to {sorted(labels_of[digest])}: "
                        "reject all but one")  # fmt: skip
    folder = safe_label(entry.label, data)
    if not folder.is_dir():
        if not new_class:
            known = sorted(p.name for p in data.iterdir() if p.is_dir()) if data.is_dir() else []
            raise UserError(f"label {entry.label!r} is not a class in {data} ({', '.join(known)}); "
                            "--new-class adds it")  # fmt: skip
        folder.mkdir(parents=True)
    path = folder / f"{FEEDBACK_PREFIX}{digest[:16]}.png"  # its own gate share (imgcls.gateset)
    file_digest = hashlib.sha256(data_bytes).hexdigest()
    if file_digest in digests or not _write_new(path, data_bytes):
        _move(entry, "imported", harvested_to=None, duplicate=True)
        return "duplicate", str(path)
    digests.add(file_digest)
    _move(entry, "imported", harvested_to=str(path))
    return "imported", str(path)


def reject(store: Path, ids: list[str]) -> list[str]:
    entries = {e.id: e for e in (*pending(store), *pending(store, "tolabel"))}
    unknown = [i for i in ids if i not in entries]
    if unknown:
        raise UserError(f"no pending feedback {', '.join(unknown)} (see: harvest list)")
    for i in ids:
        _move(entries[i], "rejected")
    return ids


def label(store: Path, entry_id: str, name: str, data: Path, new_class: bool = False) -> str:
    """Give a to-label input its class: it becomes a correction in ``feedback/``, and ``import``
    adds it to the data like any other. The label is checked as ``import`` checks it (a plain
    class name; one of the two versions' classes or an existing class folder, else only with
    ``new_class``). Returns the correction's id."""
    entries = {e.id: e for e in pending(store, "tolabel")}
    if entry_id not in entries:
        raise UserError(f"no input to label {entry_id!r} (see: harvest list)")
    entry = entries[entry_id]
    folder = safe_label(name, data)
    known = set(entry.record.get("labels", ())) | ({folder.name} if folder.is_dir() else set())
    if name not in known and not new_class:
        raise UserError(f"label {name!r} is none of {', '.join(sorted(known))}; --new-class "
                        "adds a class")  # fmt: skip
    record = entry.record
    correction = {"request_id": None, "index": 0, "label": name,
                  "predicted": record["serving"]["label"], "model": record.get("model"),
                  "version": record["serving"]["version"], "at": record.get("at"),
                  "image": f"{entry.id}.png", "sha256": record.get("digest"),
                  "source": record.get("kind", "disagreement"),
                  "candidate": record.get("candidate")}  # fmt: skip
    target = store / "feedback"
    if entry.image.exists():
        os.replace(entry.image, target / f"{entry.id}.png")
    (target / f"{entry.id}.json").write_text(json.dumps(correction, indent=1) + "\n", "utf-8")
    (entry.image.parent / f"{entry.id}.json").unlink()
    return entry.id


def _store(arg: str | None) -> Path:
    value = arg or os.environ.get("CAPTURE_DIR", "")
    if not value:
        raise UserError("which capture store? set CAPTURE_DIR or pass --store DIR")
    return Path(value)


def _list(store: Path) -> None:
    _list_to_label(store)
    entries = pending(store)
    if not entries:
        print(f"no pending feedback in {store}")
        return
    print(f"{'id':<36} {'at':<20} {'model':<24} predicted → label")
    for e in entries:
        r = e.record
        model = f"{r.get('model', '?')} v{r.get('version', '?')}"
        print(f"{e.id:<36} {r.get('at', ''):<20} {model:<24} {r.get('predicted')} → {e.label}")
    print(f"{len(entries)} pending: harvest import --all | ID..., or harvest reject ID...")


def _list_to_label(store: Path) -> None:
    """First: the inputs the answering version said are of no class it knows (a new class
    showing up: name it, with ``--new-class`` if it is new); then those the serving version and
    a candidate disagreed on (the labels that decide between them), each with the two answers."""
    entries = pending(store, "tolabel")
    unknown = [e for e in entries if e.record.get("kind") == "unknown"]
    entries = [e for e in entries if e.record.get("kind") != "unknown"]
    if unknown:
        print("to label (of no class the model knows: name it; a new class needs --new-class):")
        print(f"{'id':<32} {'at':<20} {'model':<20} answered (nearest class) · score")
        for e in unknown:
            r, s = e.record, e.record.get("serving", {})
            print(f"{e.id:<32} {r.get('at', ''):<20} {r.get('model', '?'):<20} "
                  f"v{s.get('version')} {s.get('label')} · {r.get('unknown_score')}")  # fmt: skip
        print()
    if not entries:
        if unknown:
            print(f"{len(unknown)} to label: harvest label ID LABEL [--new-class] (or harvest "
                  f"reject ID); the image is {store}/tolabel/ID.png")  # fmt: skip
            print()
        return
    print("to label (the serving version and the candidate disagreed):")
    print(f"{'id':<32} {'at':<20} {'model':<20} serving says · candidate says")
    for e in entries:
        r = e.record
        s, c = r.get("serving", {}), r.get("candidate", {})
        print(f"{e.id:<32} {r.get('at', ''):<20} {r.get('model', '?'):<20} "
              f"v{s.get('version')} {s.get('label')} · v{c.get('version')} {c.get('label')}")  # fmt: skip
    print(f"{len(entries) + len(unknown)} to label: harvest label ID LABEL [--new-class] (or "
          f"harvest reject ID); the image is {store}/tolabel/ID.png")  # fmt: skip
    print()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="harvest", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["list", "import", "reject", "label"])
    parser.add_argument("ids", nargs="*", help="feedback ids (see: list); label: ID LABEL")
    parser.add_argument("--store", help="the capture store (default: $CAPTURE_DIR)")
    parser.add_argument("--data", default=str(RAW_DATA), help="the training data folder")
    parser.add_argument("--all", action="store_true", help="import every pending entry")
    parser.add_argument("--new-class", action="store_true", help="a label may add a class")
    args = parser.parse_args(argv)
    store = _store(args.store)
    if args.command == "list":
        _list(store)
    elif args.command == "label":
        if len(args.ids) != 2:
            raise UserError("label what? harvest label ID LABEL (see: harvest list)")
        done = label(store, args.ids[0], args.ids[1], Path(args.data), args.new_class)
        print(f"labelled {done} {args.ids[1]}: `harvest import {done}` adds it to the data")
    elif args.command == "reject":
        if not args.ids:
            raise UserError("reject which? give feedback ids (see: harvest list)")
        print(f"rejected {len(reject(store, args.ids))}")
    else:
        if bool(args.ids) == args.all:
            raise UserError("import what? give feedback ids, or --all")
        report = harvest(store, Path(args.data), None if args.all else args.ids, args.new_class)
        _print(report)


def _shown(path: str) -> str:
    """A path as the user typed the data folder: relative to here when it is under here."""
    try:
        return str(Path(path).relative_to(Path.cwd().resolve()))
    except ValueError:
        return path


def _print(report: dict) -> None:
    for item in report["imported"]:
        print(f"imported {item['id']} → {_shown(item['path'])}")
    for item in report["duplicate"]:
        print(f"duplicate {item['id']} (already in the data)")
    for item in report["refused"]:
        print(f"refused {item['id']}: {item['reason']}", file=sys.stderr)
    for item in report["missing"]:
        print(f"no pending feedback {item}", file=sys.stderr)
    print(f"{len(report['imported'])} imported, {len(report['duplicate'])} duplicate, "
          f"{len(report['refused'])} refused")  # fmt: skip
    if report["imported"]:
        print("next: `make model` versions the data (dvc) and trains a candidate")


if __name__ == "__main__":
    run_cli(main)
