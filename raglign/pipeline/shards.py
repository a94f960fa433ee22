"""Resumable, partitioned job output: one Parquet file per input shard, committed atomically.

A shard is a fixed row range of one input file (``shard_rows`` rows; by default two shards per
actor, :func:`default_shard_rows`, so that every actor of the pool gets work). Its output is
``OUTPUT/part-<shard>.parquet``, written with :func:`raglign.data.io.write_table_atomic`, and
then a small record ``OUTPUT/_shards/<shard>.json`` (rows written, rejects, counters, seconds),
also atomic. ``OUTPUT`` is a local directory or a storage prefix (``s3://…``,
:mod:`raglign.storage`). The record is the commit: a shard is finished iff its record exists,
so a job killed at any instant leaves either a finished shard or one that the next run
recomputes and overwrites — never a duplicate or a half-written file. On an object store,
where there is no rename, this holds because each of the two objects is uploaded whole under
its final key (an object becomes visible only once its upload completes) and the record is
uploaded only after the part: a part without a record is an unfinished shard, overwritten by
the re-run under the same key. ``_rejects.jsonl`` and ``_summary.json`` are rebuilt from the
records at the end of every run, so they too are exact after a resume.

``_manifest.json`` holds a hash of everything that determines the output (the job's config
minus runtime knobs, the input files and their row counts, the shard size). A run into a
directory whose manifest differs, or which holds Parquet files and no manifest, stops with a
:class:`ConfigError` before any work (:func:`raglign.data.io.claim_output`), instead of mixing
rows labelled two different ways. Until ``_summary.json`` is written the output is unfinished
and readers refuse it (:func:`raglign.data.io.parquet_files`). A resumed job keeps the shard
size its manifest records (:func:`choose_shard_rows`), whatever the number of actors is now.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from raglign import storage
from raglign.data.io import (SUMMARY, claim_output, open_parquet, parquet_files, recorded,
                             write_table_atomic)

SHARD_COL, INDEX_COL, REJECT_COL, COUNTS_COL = "_shard", "_index", "_reject", "_counts"
HELPER_COLUMNS = (SHARD_COL, INDEX_COL, REJECT_COL, COUNTS_COL)
# The largest default shard: the unit of resumption (work lost to a kill) and of output files.
MAX_SHARD_ROWS = 256


@dataclass(frozen=True)
class Shard:
    """Rows ``[start, stop)`` of one input file (a path or URI, opened where the shard is
    read: in the actor); ``name`` is unique within a job."""

    name: str
    path: str
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


def plan_shards(input_path: str | os.PathLike, shard_rows: int,
                limit: int | None = None) -> list[Shard]:
    """The job's shards in input order: each file cut into ``shard_rows``-row ranges, the
    first ``limit`` rows overall when given. Names come from the file's path relative to the
    input directory, so files with the same name in different sub-directories stay apart."""
    root = str(input_path)
    shards: list[Shard] = []
    remaining = limit
    for f in parquet_files(root):
        rel = storage.name(f) if f == root else storage.relative(f, root)
        stem = rel.removesuffix(".parquet").replace(os.sep, "__").replace("/", "__")
        n = open_parquet(f).metadata.num_rows
        if remaining is not None:
            n = min(n, remaining)
            remaining -= n
        for start in range(0, n, shard_rows):
            stop = min(n, start + shard_rows)
            shards.append(Shard(f"{stem}-{start:08d}-{stop:08d}", str(f), start, stop))
        if remaining == 0:
            break
    return shards


def count_rows(input_path: str | os.PathLike, limit: int | None = None) -> int:
    """Rows a job over ``input_path`` reads: all of them, or the first ``limit``."""
    n = sum(open_parquet(f).metadata.num_rows for f in parquet_files(input_path))
    return n if limit is None else min(n, limit)


def default_shard_rows(rows: int, actors: int, most: int = MAX_SHARD_ROWS) -> int:
    """Rows per shard (or per actor call) when the job does not say: two per actor, so that
    ``actors`` actors all get work (Ray Data hands one shard to one actor) and the last one to
    finish is short; at most ``most``."""
    return max(1, min(most, -(-rows // (2 * actors))))


def choose_shard_rows(store: ShardStore, requested: int | None, rows: int, actors: int) -> int:
    """The job's shard size: the one asked for; else the one an existing output in ``store``
    was planned with (its manifest fingerprints the plan, so a resumed job must keep it even
    when run with another number of actors); else :func:`default_shard_rows`."""
    return requested or store.recorded("shard_rows") or default_shard_rows(rows, actors)


def read_shard(shard: Shard) -> pa.Table:
    """The shard's rows, reading only the row groups that overlap it, with ``_shard`` and
    ``_index`` (row position within the shard) columns added."""
    pf = open_parquet(shard.path)
    groups, offset, first = [], 0, None
    for g in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        if offset + n > shard.start and offset < shard.stop:
            groups.append(g)
            first = offset if first is None else first
        offset += n
    table = pf.read_row_groups(groups).slice(shard.start - first, shard.rows)
    table = table.append_column(SHARD_COL, pa.array([shard.name] * table.num_rows, pa.string()))
    return table.append_column(INDEX_COL, pa.array(range(table.num_rows), pa.int64()))


class ShardStore:
    """The output directory (or prefix) of a sharded job: manifest check, commit, resume,
    summary."""

    def __init__(self, out_dir: str | os.PathLike, job: str):
        self.root = str(out_dir)
        self.job = job
        self.records_dir = storage.join(self.root, "_shards")

    def part_path(self, shard: Shard) -> str:
        return storage.join(self.root, f"part-{shard.name}.parquet")

    def record_path(self, shard: Shard) -> str:
        return storage.join(self.records_dir, f"{shard.name}.json")

    def recorded(self, key: str) -> Any:
        """``key`` of the fingerprint in this directory's manifest; None when there is none."""
        return recorded(self.root, key)

    def open(self, fingerprint: Mapping[str, Any]) -> None:
        """Write the manifest, or check that the existing one describes the same job."""
        claim_output(self.root, self.job, fingerprint)

    def finished(self) -> set[str]:
        """Names of the committed shards: one listing of the records (not a request per
        shard, which on an object store is a round trip each)."""
        return {storage.name(p).removesuffix(".json")
                for p in storage.list_files(self.records_dir, (".json",))}

    def commit(self, shard: Shard, table: pa.Table, rejects: list[dict], counts: Mapping[str, int],
               seconds: float) -> dict:
        """Write the shard's Parquet part (when it has rows), then its record (the commit)."""
        if table.num_rows:
            write_table_atomic(table, self.part_path(shard))
        record = {"shard": asdict(shard), "rows_in": shard.rows, "rows_out": table.num_rows,
                  "rejects": rejects, "counts": dict(counts), "seconds": seconds,
                  "finished_at": time.time()}
        storage.write_json(self.record_path(shard), record)
        return record

    def records(self) -> list[dict]:
        return [storage.read_json(p) for p in storage.list_files(self.records_dir, (".json",))]

    def finish(self, shards: list[Shard], extra: Mapping[str, Any]) -> dict:
        """Rebuild ``_rejects.jsonl`` and ``_summary.json`` (last: it marks the output
        finished) from the shard records."""
        names = {s.name for s in shards}
        recs = [r for r in self.records() if r["shard"]["name"] in names]
        rejects = [rej for r in recs for rej in r["rejects"]]
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejects)
        storage.write_text(storage.join(self.root, "_rejects.jsonl"), lines)
        counts: dict[str, int] = {}
        for r in recs:
            for k, v in r["counts"].items():
                counts[k] = counts.get(k, 0) + v
        reasons: dict[str, int] = {}
        for rej in rejects:
            reasons[rej["reason"]] = reasons.get(rej["reason"], 0) + 1
        summary = {
            "job": self.job,
            "shards": len(shards),
            "shards_finished": len(recs),
            "rows_in": sum(r["rows_in"] for r in recs),
            "rows_out": sum(r["rows_out"] for r in recs),
            "rows_rejected": len(rejects),
            "reject_reasons": reasons,
            "counts": counts,
            **extra,
        }
        storage.write_json(storage.join(self.root, SUMMARY), summary)
        return summary


class ShardCollector:
    """Reassembles a shard from labelled blocks arriving in any order and commits it once all
    its rows are in; rows marked ``_reject`` go to the shard's rejects instead of its part.
    ``on_commit(rows)`` is called after each commit (a progress bar's ``update``)."""

    def __init__(self, store: ShardStore, shards: list[Shard],
                 on_commit: Callable[[int], Any] = lambda rows: None):
        self.store, self.on_commit = store, on_commit
        self.shards = {s.name: s for s in shards}
        self.pending: dict[str, list[pa.Table]] = {s.name: [] for s in shards}
        self.seen = {s.name: 0 for s in shards}
        self.last = time.monotonic()

    def add(self, block: pa.Table) -> None:
        names = block.column(SHARD_COL).to_pylist()
        for name in dict.fromkeys(names):
            part = block.filter(pc.equal(block.column(SHARD_COL), name))
            self.pending[name].append(part)
            self.seen[name] += part.num_rows
            if self.seen[name] == self.shards[name].rows:
                self._commit(self.shards[name])

    def _commit(self, shard: Shard) -> None:
        table = pa.concat_tables(self.pending.pop(shard.name), promote_options="permissive")
        table = table.sort_by(INDEX_COL)
        reject_col = table.column(REJECT_COL).to_pylist()
        counts: dict[str, int] = {}
        for raw in table.column(COUNTS_COL).to_pylist():
            for k, v in json.loads(raw or "{}").items():
                counts[k] = counts.get(k, 0) + v
        ids = table.column("id").to_pylist()
        rejects = [{"id": ids[i], "reason": reason, "source": shard.path,
                    "record": shard.start + i + 1, "shard": shard.name}
                   for i, reason in enumerate(reject_col) if reason is not None]
        kept = table.filter(pc.is_null(table.column(REJECT_COL)))
        kept = kept.drop_columns([c for c in HELPER_COLUMNS if c in kept.column_names])
        now = time.monotonic()
        self.store.commit(shard, kept, rejects, counts, now - self.last)
        self.last = now
        self.on_commit(shard.rows)

    def finished(self) -> bool:
        return not self.pending

    def restart(self) -> list[Shard]:
        """After an execution that failed part-way: forget the blocks of every uncommitted shard
        (the shard is labelled again whole, so a kept partial block would count its rows twice)
        and return those shards, in plan order."""
        for name in self.pending:
            self.pending[name], self.seen[name] = [], 0
        return [self.shards[name] for name in self.pending]
