"""The output table, written so that a run killed at any moment resumes without a row twice.

Rows go to ``<out>.parts/`` as numbered Parquet files, each written to a temporary name and
renamed into place: a part is either whole or absent. A new run reads the finished output and
every part first, and skips their paths. At the end the rows (finished output + parts, one per
path) become ``<out>`` (``.parquet`` or ``.csv``) by one more rename, and the parts go.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("sha256", pa.string()),  # of the file's bytes ("" when it could not be read)
        ("label", pa.string()),  # null when error
        ("probability", pa.float64()),
        ("topk", pa.string()),  # JSON: [{"label": …, "probability": …}, …], best first
        ("drift", pa.float64()),  # the served graph's drift score, where it has one
        ("familiar", pa.bool_()),  # drift at most the version's threshold (null: no score)
        ("unknown", pa.float64()),  # the unknown-class score, where the graph has one
        ("known_class", pa.bool_()),  # unknown at most the version's threshold (null: no score)
        ("model", pa.string()),
        ("version", pa.string()),
        ("error", pa.string()),  # null, or a code: load_image's (not_an_image…), unreadable_file
    ]
)
FORMATS = (".parquet", ".csv")


class OutputError(Exception):
    """The output cannot be used as asked: one line for the user, nothing written."""


def _read(path: Path) -> pa.Table:
    if path.suffix == ".csv":
        options = pacsv.ConvertOptions(column_types=SCHEMA, strings_can_be_null=True)
        return pacsv.read_csv(path, convert_options=options)
    return pq.read_table(path, schema=SCHEMA)


def _write(table: pa.Table, path: Path) -> None:
    """``table`` at ``path``, complete or not at all."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if path.suffix == ".csv":
        pacsv.write_csv(table, tmp)
    else:
        pq.write_table(table, tmp)
    os.replace(tmp, path)


class Output:
    """The rows of one output file: those already written, and those this run adds. Only their
    paths stay in memory; the rows are on disk, read once more by ``finish``."""

    def __init__(self, path: Path, model: str, overwrite: bool = False) -> None:
        if path.suffix not in FORMATS:
            raise OutputError(f"--out {path}: name a .parquet or .csv file")
        if not path.parent.is_dir():
            raise OutputError(f"--out {path}: the folder {path.parent} does not exist")
        self.path, self.model = path, model
        self.parts = path.with_name(path.name + ".parts")
        if overwrite:
            path.unlink(missing_ok=True)
            shutil.rmtree(self.parts, ignore_errors=True)
        models: set[str] = set()
        self.done: set[str] = set()  # the paths with a row: all this run keeps in memory
        self._versions: set[str] = set()
        for table in self._existing():
            models |= set(table.column("model").drop_null().to_pylist())
            self._versions |= set(table.column("version").drop_null().to_pylist())
            self.done.update(table.column("path").to_pylist())
        if models - {model}:
            others = ", ".join(sorted(models - {model}))
            raise OutputError(f"--out {path} holds rows of model {others}, not {model}: "
                              "pass --overwrite or another --out")  # fmt: skip
        self._next = 1 + max((int(p.stem.split("-")[1]) for p in self._part_files()), default=0)

    def _part_files(self) -> list[Path]:
        return sorted(self.parts.glob("part-*.parquet")) if self.parts.is_dir() else []

    def _existing(self) -> list[pa.Table]:
        """The finished output and every part, read from disk."""
        tables = []
        for path in ([self.path] if self.path.exists() else []) + self._part_files():
            try:
                tables.append(_read(path))
            except (pa.ArrowInvalid, OSError) as exc:
                raise OutputError(f"--out {path}: not a table this tool wrote ({exc}); pass "
                                  "--overwrite or another --out") from None  # fmt: skip
        return tables

    def versions(self) -> set[str]:
        """The model versions of the rows written before this run."""
        return set(self._versions)

    def append(self, rows: list[dict]) -> None:
        """One part file for ``rows`` (their paths are then done)."""
        rows = [r for r in rows if r["path"] not in self.done]
        if not rows:
            return
        self.parts.mkdir(exist_ok=True)
        table = pa.Table.from_pylist(rows, schema=SCHEMA)
        _write(table, self.parts / f"part-{self._next:06d}.parquet")
        self._next += 1
        self.done.update(r["path"] for r in rows)

    def finish(self) -> int:
        """Everything as one file at ``--out`` (one row per path, sorted by path); the rows."""
        tables = self._existing()
        if not tables:
            table = SCHEMA.empty_table()
        else:
            table = pa.concat_tables(tables)
            # one row per path: the first written (parts never repeat a path, but a file another
            # tool appended to might)
            keep = pc.equal(pc.index_in(table.column("path"), table.column("path")),
                            pa.array(range(len(table))))  # fmt: skip
            table = table.filter(keep).sort_by("path")
        _write(table, self.path)
        shutil.rmtree(self.parts, ignore_errors=True)
        return len(table)
