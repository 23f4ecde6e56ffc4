"""What a batch job classifies: the files under SRC, and which of them are this shard's.

SRC is a folder tree, a file list (``.txt``/``.list``: one path or URL a line, ``#`` comments),
or an object-store URL (``s3://bucket/prefix``, ``gs://…``, anything fsspec opens). Files are
listed in a stable order; a shard (``--shard i/N``) keeps those whose *content* hash falls in it,
so N processes with the same SRC cover every file exactly once, and the same image under two
names goes to the same shard. Each shard reads every file to hash it (reads are cheap beside
decoding and inference, which only the owner does).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import fsspec

LIST_SUFFIXES = (".txt", ".list")
_SHARD = re.compile(r"^(\d+)/(\d+)$")


class SourceError(Exception):
    """SRC cannot be listed (missing, unreachable, empty, a bad spec): one line for the user."""


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``i/N`` with ``0 <= i < N``."""
        match = _SHARD.match(text.strip())
        if not match:
            raise SourceError(f"--shard {text!r}: expected i/N, like 0/4")
        index, count = int(match[1]), int(match[2])
        if count < 1 or index >= count:
            raise SourceError(f"--shard {text!r}: needs N ≥ 1 and 0 ≤ i < N")
        return cls(index, count)

    def owns(self, sha256: str) -> bool:
        return int(sha256[:16], 16) % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass(frozen=True)
class Item:
    """One file to classify: its name as written to the output, its bytes and their hash."""

    path: str
    data: bytes | None
    sha256: str
    error: str = ""  # "unreadable_file": the row says so


def list_sources(src: str) -> list[str]:
    """Every file under ``src`` (sorted), as paths or URLs ``read`` opens."""
    if _is_url(src):
        return _list_url(src)
    path = Path(src)
    if not path.exists():
        raise SourceError(f"{src}: no such file or folder")
    if path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
        return _read_list(path)
    if path.is_file():
        return [str(path)]
    files = sorted(str(p) for p in path.rglob("*") if p.is_file() and not _hidden(p, path))
    if not files:
        raise SourceError(f"{src}: the folder has no files")
    return files


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _is_url(text: str) -> bool:
    return "://" in text


def _read_list(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    entries = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not entries:
        raise SourceError(f"{path}: the list names no file")
    return entries


def _list_url(src: str) -> list[str]:
    try:
        fs, root = fsspec.core.url_to_fs(src)
    except (ImportError, ValueError) as exc:  # e.g. gs:// without gcsfs installed
        raise SourceError(f"{src}: {exc}") from None
    try:
        found = fs.find(root) if fs.isdir(root) else ([root] if fs.exists(root) else [])
    except Exception as exc:  # botocore, aiohttp, …: an unreachable store has many shapes
        raise SourceError(f"{src}: cannot list it ({type(exc).__name__}: {exc})") from None
    if not found:
        raise SourceError(f"{src}: no such object or prefix, or nothing under it")
    protocol = src.split("://", 1)[0]
    return sorted(f"{protocol}://{name}" for name in found)


def read(path: str) -> Item:
    """The file's bytes and hash; a file that cannot be read becomes an item with an error."""
    try:
        if _is_url(path):
            with fsspec.open(path, "rb") as fh:
                data = fh.read()
        else:
            data = Path(path).read_bytes()
    except (OSError, ValueError):
        return Item(path, None, "", "unreadable_file")
    return Item(path, data, hashlib.sha256(data).hexdigest())


def shard_items(
    paths: Iterable[str], shard: Shard, on_skip: Callable[[], object] = lambda: None
) -> Iterator[Item]:
    """This shard's files among ``paths``, read one at a time (memory stays flat); ``on_skip``
    is called for each file of another shard. A file that cannot be read belongs to the shard of
    its path's hash: it still gets exactly one row."""
    for path in paths:
        item = read(path)
        key = item.sha256 or hashlib.sha256(path.encode()).hexdigest()
        if shard.owns(key):
            yield item
        else:
            on_skip()
