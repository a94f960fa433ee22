"""A labelling execution that loses a node part-way is run again over the shards not yet
committed: committed shards are not redone and a half-received shard's rows are not counted
twice; an error of the labelling code itself is not retried."""

from __future__ import annotations

import pyarrow as pa
import pytest
from ray.exceptions import ActorUnavailableError

from raglign.pipeline.label import job
from raglign.pipeline.shards import (COUNTS_COL, INDEX_COL, REJECT_COL, SHARD_COL, Shard,
                                     ShardCollector)


class Store:
    """Records commits as (shard name, ids)."""

    def __init__(self):
        self.commits = []

    def commit(self, shard, kept, rejects, counts, seconds):
        self.commits.append((shard.name, kept.column("id").to_pylist()))


def _block(shard: str, rows: list[int]) -> pa.Table:
    return pa.table({SHARD_COL: [shard] * len(rows), INDEX_COL: rows,
                     "id": [f"{shard}{i}" for i in rows], REJECT_COL: pa.nulls(len(rows), pa.string()),
                     COUNTS_COL: ["{}"] * len(rows)})


class Run:
    """A stand-in for the Ray Data execution: yields the given blocks, then raises."""

    def __init__(self, blocks, error=None):
        self.blocks, self.error = blocks, error

    def iter_batches(self, **kw):
        yield from self.blocks
        if self.error is not None:
            raise self.error


SHARDS = [Shard("a", "in.parquet", 0, 2), Shard("b", "in.parquet", 2, 4)]


def _collector(store):
    return ShardCollector(store, list(SHARDS))


def test_a_lost_node_relabels_only_the_uncommitted_shards(monkeypatch):
    store, calls, lines = Store(), [], []
    lost = ActorUnavailableError("node 127.0.0.2 gone", None)
    runs = [Run([_block("a", [0, 1]), _block("b", [0])], lost),  # a committed, b half in
            Run([_block("b", [0, 1])])]
    monkeypatch.setattr(job, "map_shards",
                        lambda cfg, todo, worker: (calls.append([s.name for s in todo]),
                                                   runs[len(calls) - 1])[1])
    collector = _collector(store)
    job._label_shards_ray(None, list(SHARDS), collector, lines.append)
    assert calls == [["a", "b"], ["b"]]
    assert store.commits == [("a", ["a0", "a1"]), ("b", ["b0", "b1"])]  # b's rows once
    assert collector.finished()
    assert len(lines) == 1 and "ActorUnavailableError" in lines[0] and "1 unfinished" in lines[0]


def test_code_errors_are_not_retried_and_retries_are_bounded(monkeypatch):
    calls = []
    monkeypatch.setattr(job, "map_shards", lambda cfg, todo, worker: (
        calls.append(1), Run([], ValueError("a bug in a signal")))[1])
    with pytest.raises(ValueError, match="a bug"):
        job._label_shards_ray(None, list(SHARDS), _collector(Store()), print)
    assert len(calls) == 1

    calls.clear()
    monkeypatch.setattr(job, "map_shards", lambda cfg, todo, worker: (
        calls.append(1), Run([], ActorUnavailableError("gone", None)))[1])
    with pytest.raises(ActorUnavailableError):
        job._label_shards_ray(None, list(SHARDS), _collector(Store()), lambda line: None)
    assert len(calls) == job.NODE_LOSS_RETRIES + 1
