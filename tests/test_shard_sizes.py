"""Shard sizes follow the job: ``--actors N`` gets at least two shards per actor by default, an
explicit ``shard_rows`` wins, and a resumed job keeps the plan its manifest records."""

from __future__ import annotations

import pytest

from raglign.data.io import write_rows
from raglign.data.schema import candidate, make_row
from raglign.errors import ConfigError
from raglign.pipeline.shards import (MAX_SHARD_ROWS, ShardStore, choose_shard_rows, count_rows,
                                     default_shard_rows, plan_shards)


@pytest.fixture
def rows67(tmp_path):
    """67 questions: the demo's training split."""
    rows = [make_row(f"q{i}", f"Question {i}?", ["Paris"],
                     [candidate(f"q{i}-d0", "T", "Paris.", 1.0, True)]) for i in range(67)]
    write_rows(rows, tmp_path / "in")
    return tmp_path / "in"


def test_67_rows_on_2_actors_plan_two_shards_per_actor(rows67, tmp_path):
    store = ShardStore(tmp_path / "out", "label")
    size = choose_shard_rows(store, None, count_rows(rows67), actors=2)
    shards = plan_shards(rows67, size)
    assert size == 17 and [s.rows for s in shards] == [17, 17, 17, 16]


def test_default_size_is_capped_and_never_zero():
    assert default_shard_rows(100_000, 2) == MAX_SHARD_ROWS == 256
    assert default_shard_rows(3, 4) == 1
    assert default_shard_rows(40, 2, most=8) == 8  # eval and retrieve cap it at batch_size


def test_limit_counts_only_the_rows_the_job_reads(rows67):
    assert count_rows(rows67) == 67 and count_rows(rows67, limit=10) == 10


def test_explicit_shard_rows_wins(rows67, tmp_path):
    store = ShardStore(tmp_path / "out", "label")
    assert choose_shard_rows(store, 256, count_rows(rows67), actors=2) == 256
    assert len(plan_shards(rows67, 256)) == 1


def test_a_resumed_job_keeps_its_recorded_plan(rows67, tmp_path):
    """The manifest fingerprints the plan: a re-run with another --actors must reuse it (a new
    default would be a "different job"), and an explicit different size is still refused."""
    store = ShardStore(tmp_path / "out", "label")
    first = choose_shard_rows(store, None, 67, actors=2)
    fingerprint = {"shard_rows": first, "inputs": [[s.start, s.stop]
                                                   for s in plan_shards(rows67, first)]}
    store.open(fingerprint)
    again = choose_shard_rows(ShardStore(tmp_path / "out", "label"), None, 67, actors=8)
    assert again == first == 17
    ShardStore(tmp_path / "out", "label").open(
        {"shard_rows": again, "inputs": [[s.start, s.stop] for s in plan_shards(rows67, again)]})
    with pytest.raises(ConfigError, match="shard_rows: 17 -> 5"):
        ShardStore(tmp_path / "out", "label").open(
            {"shard_rows": 5, "inputs": fingerprint["inputs"]})
