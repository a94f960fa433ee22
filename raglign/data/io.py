"""Reading and writing canonical datasets: a directory of Parquet files (``part-*.parquet``).

Writes go to a temporary name and are renamed into place, so a killed job never leaves a
half-written file that a re-run would mistake for finished work.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from raglign.data.schema import to_table
from raglign.errors import MissingInputError


def parquet_files(path: str | os.PathLike) -> list[Path]:
    """The Parquet files of a dataset: ``path`` itself, or the sorted ``*.parquet`` under it."""
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise MissingInputError(str(p), None, None, "no such file or directory")
    files = sorted(f for f in p.rglob("*.parquet") if not f.name.startswith((".", "_")))
    if not files:
        raise MissingInputError(str(p), None, None, "contains no .parquet files")
    return files


def read_table(path: str | os.PathLike) -> pa.Table:
    """All rows of a dataset as one Arrow table (schemas unified across files)."""
    tables = [pq.read_table(f) for f in parquet_files(path)]
    return pa.concat_tables(tables, promote_options="permissive")


def read_rows(path: str | os.PathLike, limit: int | None = None) -> list[dict[str, Any]]:
    """Rows of a dataset as dicts, in file order; ``limit`` stops early."""
    rows: list[dict[str, Any]] = []
    for f in parquet_files(path):
        rows.extend(pq.read_table(f).to_pylist())
        if limit is not None and len(rows) >= limit:
            return rows[:limit]
    return rows


def write_table_atomic(table: pa.Table, path: str | os.PathLike) -> Path:
    """Write one Parquet file via a temporary name and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


def write_rows(rows: Iterable[Mapping[str, Any]] | pa.Table, out_dir: str | os.PathLike,
               rows_per_file: int = 50_000, prefix: str = "part") -> list[Path]:
    """Write canonical rows as ``out_dir/{prefix}-00000.parquet`` …; returns the files written."""
    table = rows if isinstance(rows, pa.Table) else to_table(rows)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    n = max(table.num_rows, 1)
    for i, start in enumerate(range(0, n, rows_per_file)):
        written.append(write_table_atomic(table.slice(start, rows_per_file),
                                          out / f"{prefix}-{i:05d}.parquet"))
    return written
