"""Reading and writing canonical datasets: a directory (or storage prefix) of Parquet files
(``part-*.parquet``), at a local path or any URI :mod:`raglign.storage` resolves.

Writes are atomic (:func:`raglign.storage.write_bytes`: a rename locally, one complete upload on
an object store), so a killed job never leaves a half-written file that a re-run would mistake
for finished work.

A job that writes a dataset in several steps claims its directory first (:func:`claim_output`:
``_manifest.json``, naming the job and what determines its output) and writes ``_summary.json``
last. A directory holding a manifest and no summary is therefore an unfinished output, and
:func:`parquet_files` refuses to read it as a dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from raglign import storage
from raglign.data.schema import to_table
from raglign.errors import ConfigError, DataError, MissingInputError

MANIFEST, SUMMARY = "_manifest.json", "_summary.json"


def parquet_files(path: str | os.PathLike) -> list[str]:
    """The Parquet files of a dataset: ``path`` itself, or the sorted ``*.parquet`` under it
    (paths or URIs, as ``path`` is spelt). An unfinished job output is refused."""
    if storage.is_file(path):
        return [str(path)]
    files = storage.list_files(path, (".parquet",))
    if not files:
        reason = "contains no .parquet files" if storage.exists(path) else (
            "no such file or directory" if not storage.is_remote(path)
            else "no objects under this URI")
        raise MissingInputError(str(path), None, None, reason)
    unfinished(path)
    return files


def unfinished(path: str | os.PathLike) -> None:
    """Raise when ``path`` holds a job's manifest but not yet its summary (module docstring)."""
    manifest = storage.join(path, MANIFEST)
    if storage.is_file(manifest) and not storage.is_file(storage.join(path, SUMMARY)):
        job = storage.read_json(manifest).get("job", "?")
        raise DataError(str(path), None, None, f"an unfinished `raglign {job}` output (it has "
                        f"{MANIFEST} but no {SUMMARY} yet): finish it by re-running that job")


def open_parquet(path: str) -> pq.ParquetFile:
    """One Parquet file of a dataset, read through its filesystem (footer first, then only
    the row groups asked for)."""
    return pq.ParquetFile(storage.open_input(path))


def read_file(path: str) -> pa.Table:
    """All rows of one Parquet file."""
    return open_parquet(path).read()


def read_table(path: str | os.PathLike) -> pa.Table:
    """All rows of a dataset as one Arrow table (schemas unified across files)."""
    tables = [read_file(f) for f in parquet_files(path)]
    return pa.concat_tables(tables, promote_options="permissive")


def read_rows(path: str | os.PathLike, limit: int | None = None) -> list[dict[str, Any]]:
    """Rows of a dataset as dicts, in file order; ``limit`` stops early."""
    rows: list[dict[str, Any]] = []
    for f in parquet_files(path):
        rows.extend(read_file(f).to_pylist())
        if limit is not None and len(rows) >= limit:
            return rows[:limit]
    return rows


def write_table_atomic(table: pa.Table, path: str | os.PathLike) -> str:
    """Write one Parquet file atomically: serialised in memory, then one
    :func:`raglign.storage.write_bytes` (a file is at most one shard or ``rows_per_file`` rows,
    so it fits; streaming it instead could publish a partial object on an error)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return storage.write_bytes(path, sink.getvalue().to_pybytes())


def write_rows(rows: Iterable[Mapping[str, Any]] | pa.Table, out_dir: str | os.PathLike,
               rows_per_file: int = 50_000, prefix: str = "part") -> list[str]:
    """Write canonical rows as ``out_dir/{prefix}-00000.parquet`` …; returns the files written."""
    table = rows if isinstance(rows, pa.Table) else to_table(rows)
    storage.makedirs(out_dir)
    written = []
    n = max(table.num_rows, 1)
    for i, start in enumerate(range(0, n, rows_per_file)):
        written.append(write_table_atomic(table.slice(start, rows_per_file),
                                          storage.join(out_dir, f"{prefix}-{i:05d}.parquet")))
    return written


def config_hash(fingerprint: Mapping[str, Any]) -> str:
    blob = json.dumps(fingerprint, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _diff(old: Any, new: Any, path: str = "") -> list[str]:
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            out += _diff(old.get(k), new.get(k), f"{path}.{k}" if path else str(k))
        return out
    return [] if old == new else [f"{path}: {old!r} -> {new!r}"]


def recorded(out_dir: str | os.PathLike, key: str) -> Any:
    """``key`` of the fingerprint in ``out_dir``'s manifest; None when there is none."""
    path = storage.join(out_dir, MANIFEST)
    return storage.read_json(path)["fingerprint"].get(key) if storage.is_file(path) else None


def claim_output(out_dir: str | os.PathLike, job: str, fingerprint: Mapping[str, Any],
                 replaceable: bool = False, write: bool = True) -> None:
    """Check that ``out_dir`` can take this job's output, then write its manifest (unless
    ``write`` is false: a job that replaces an old output writes it when it swaps the files
    in). Called before any work starts, so a wrong output fails at once and names the URI.

    Refused: an unreachable or missing bucket (:func:`raglign.storage.check_output`); a
    directory whose manifest is another job's, or this job's with another configuration (the
    differences listed), unless ``replaceable`` (a job whose re-run replaces its old output,
    as ``data convert`` does); Parquet files with no manifest (rows some other tool wrote).
    The same configuration again is a resume.
    """
    storage.check_output(out_dir)
    manifest = {"job": job, "hash": config_hash(fingerprint), "fingerprint": fingerprint}
    path = storage.join(out_dir, MANIFEST)
    if storage.is_file(path):
        old = storage.read_json(path)
        if old.get("job") != job or (old.get("hash") != manifest["hash"] and not replaceable):
            changes = _diff(old.get("fingerprint", {}),
                            json.loads(json.dumps(fingerprint, default=str)))
            raise ConfigError(
                f"{out_dir} holds the output of a different {old.get('job', '?')} job "
                f"(manifest hash {old.get('hash')} vs {manifest['hash']}); use a new output "
                "directory or remove the old one. Differences:\n  " + "\n  ".join(changes))
        if old.get("hash") == manifest["hash"]:
            return
    elif storage.list_files(out_dir, (".parquet",)):
        raise ConfigError(f"{out_dir} already holds Parquet files that no raglign {job} job "
                          f"wrote (no {MANIFEST}); use a new output directory or remove them")
    if write:
        storage.makedirs(out_dir)
        storage.write_json(path, manifest)
