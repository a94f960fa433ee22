"""The Ray Data labelling job end to end with a tiny random model saved to disk: numbers equal
the in-process computation, rejects and summary, resumption after SIGKILL, manifest mismatch."""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict

import numpy as np
import pyarrow as pa
import pytest

from raglign.config import validate
from raglign.data.io import read_rows, write_rows
from raglign.data.schema import candidate, make_row
from raglign.errors import ConfigError
from raglign.pipeline.label import (LabelConfig, ShardWorker, label_in_process, map_shards,
                                    run_label)
from raglign.pipeline.shards import plan_shards
from conftest import kill_cli_when


@pytest.fixture(scope="module")
def input_dir(tmp_path_factory):
    rows = []
    for i in range(12):
        cands = [candidate(f"q{i}-d{j}", f"Title {j}", f"Passage {j} of question {i}: Paris is "
                           f"{'the capital' if j == i % 4 else 'a city'}.", 4.0 - j, j == i % 4)
                 for j in range(4)]
        rows.append(make_row(f"q{i}", f"Question number {i}?", [] if i == 4 else ["Paris"],
                             [] if i == 7 else cands))
    path = tmp_path_factory.mktemp("label-in")
    write_rows(rows[:8], path, prefix="a")
    write_rows(rows[8:], path, prefix="b")
    return path


def _cfg(input_dir, out, generator, **kw):
    fields = dict(job="label", input=str(input_dir), output=str(out),
                  generator={"name": generator, "dtype": "float32"},
                  signals=["answer_logprob", "loo_logprob", "judge"], context="concat",
                  shard_rows=3, batch_size=2, actors=1, loo={"k": 3},
                  judge={"max_new_tokens": 4})
    fields.update(kw)
    return validate(LabelConfig, fields)


def _by_id(rows):
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), "duplicate rows"
    return {r["id"]: r for r in rows}


def _assert_same(a, b):
    a, b = _by_id(a), _by_id(b)
    assert sorted(a) == sorted(b)
    for rid in a:
        for ca, cb in zip(a[rid]["candidates"], b[rid]["candidates"], strict=True):
            assert ca.keys() == cb.keys()
            for k in ca:
                if isinstance(ca[k], float):
                    assert np.isclose(ca[k], cb[k], atol=1e-4), (rid, k)
                else:
                    assert ca[k] == cb[k], (rid, k)


def test_pipeline_equals_in_process_labelling_and_reports_rejects(ray_local, tmp_path, input_dir,
                                                                  tiny_dir):
    cfg = _cfg(input_dir, tmp_path / "out", tiny_dir)
    lines = []
    summary = run_label(cfg, progress=lines.append)
    labelled = read_rows(tmp_path / "out")
    reference = label_in_process(cfg, read_rows(input_dir))
    _assert_same(labelled, reference)
    # Input order is kept within and across partitions.
    assert [r["id"] for r in labelled] == [r["id"] for r in reference]
    assert summary["rows_in"] == 12 and summary["rows_out"] == 10
    assert summary["reject_reasons"] == {"no answers": 1, "no candidates": 1}
    rejects = [json.loads(x) for x in (tmp_path / "out" / "_rejects.jsonl").read_text().splitlines()]
    assert {(r["id"], r["reason"], r["record"]) for r in rejects} == {
        ("q4", "no answers", 5), ("q7", "no candidates", 8)}
    judged = [c["judge"] for r in labelled for c in r["candidates"]]
    assert summary["counts"]["judge_unparseable"] == sum(v is None for v in judged)
    assert summary["counts"]["judge_outputs"] == len(judged) == 40
    # 12 rows in 3-row shards per file: a has 8 rows (3 shards), b 4 rows (2 shards).
    assert len(list((tmp_path / "out").glob("part-*.parquet"))) == 5
    # One line before and one after; rows show on a progress bar, not a line per shard.
    assert len(lines) == 2 and "5 shards of up to 3 rows" in lines[0] and "done:" in lines[-1]
    table = json.loads((tmp_path / "out" / "_signal_eval.json").read_text())
    assert table["rows_with_gold"] == 10 and set(table["signals"]) == {
        "retrieval", "answer_logprob", "loo_logprob", "judge"}
    # A different config into the same directory fails before any work, naming the change.
    with pytest.raises(ConfigError, match="loo.k: 3 -> 2"):
        run_label(_cfg(input_dir, tmp_path / "out", tiny_dir, loo={"k": 2}))


def test_killed_run_resumes_to_exactly_the_uninterrupted_rows(ray_local, tmp_path, input_dir,
                                                              tiny_dir):
    """SIGKILL the CLI after its first partition is committed, re-run, compare."""
    out = tmp_path / "killed"
    address = ray_local.get_runtime_context().gcs_address
    cfg = _cfg(input_dir, out, tiny_dir, batch_size=1, signals=["answer_logprob", "judge"],
               judge={"max_new_tokens": 16})
    recipe = tmp_path / "job.yaml"
    recipe.write_text(json.dumps(cfg.model_dump(mode="json")))  # JSON is YAML
    kill_cli_when(["label", "--config", str(recipe), "--address", address],
                  lambda: list((out / "_shards").glob("*.json")), "a partition was written")
    finished = len(list((out / "_shards").glob("*.json")))
    assert 1 <= finished < 5, f"{finished} of 5 shards were done at the kill: nothing to resume"
    lines = []
    summary = run_label(cfg, progress=lines.append)
    assert f"{finished} shards already finished" in lines[0]
    assert summary["shards_finished"] == 5 and summary["rows_out"] == 10
    assert summary["rows_rejected"] == 2  # rejects of shards finished before the kill are kept
    # The uninterrupted reference, computed without Ray (the first test shows the two agree).
    reference = label_in_process(cfg, read_rows(input_dir))
    _assert_same(read_rows(out), reference)
    assert [r["id"] for r in read_rows(out)] == [r["id"] for r in reference]
    judged = [c["judge"] for r in reference for c in r["candidates"]]
    assert summary["counts"] == {"judge_outputs": 40,
                                 "judge_unparseable": sum(v is None for v in judged)}
    assert not list(out.glob(".*.tmp")), "temporary files left behind"


def test_default_shards_follow_the_actors_and_a_resumed_run_keeps_them(ray_local, tmp_path,
                                                                       input_dir, tiny_dir):
    """Without ``shard_rows``, 12 rows on 2 actors are cut in 3-row shards (two per actor); a
    re-run with 1 actor (whose default would be 6) resumes that plan, not "another job"."""
    cfg = _cfg(input_dir, tmp_path / "out", tiny_dir, shard_rows=None, actors=2,
               signals=["answer_logprob"], eval={"enabled": False})
    first, again = [], []
    run_label(cfg, progress=first.append)
    summary = run_label(cfg.model_copy(update={"actors": 1}), progress=again.append)
    assert "5 shards of up to 3 rows" in first[0] and "0 shards already finished" in first[0]
    assert "5 shards of up to 3 rows" in again[0] and "5 shards already finished" in again[0]
    assert summary["shards_finished"] == 5 and summary["rows_out"] == 10


class _PidWorker(ShardWorker):
    """Tags each labelled row with the actor process that labelled it."""

    def __init__(self, config: dict):
        self.cfg = LabelConfig.model_validate(config)

    def label(self, batch):
        time.sleep(0.3)  # long enough for both actors to be asked for work
        return batch.select(["id", "_shard"]).append_column(
            "pid", pa.array([os.getpid()] * batch.num_rows, pa.int64()))


def test_shards_spread_over_the_actor_pool_whatever_the_batch_size(ray_local, input_dir):
    """Each actor call is one whole shard, so 5 shards reach both actors even with
    ``batch_size`` 8 (before, the fused read + actor map bundled all shard descriptors up to
    the batch size and sent them to one actor)."""
    from ray import cloudpickle  # Ray's own copy pickles the actor class
    from ray.data import DataContext

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    cfg = _cfg(input_dir, "unused", "unused", shard_rows=3, batch_size=8, actors=2)
    shards = plan_shards(cfg.input, cfg.shard_rows, None)
    # Both actors up before the first shard is sent: on a loaded machine the second one can
    # start after the first has labelled all 5 tiny shards, which is timing, not bundling.
    context = DataContext.get_current()
    before, context.wait_for_min_actors_s = context.wait_for_min_actors_s, 120
    try:
        rows = map_shards(cfg, shards, _PidWorker).take_all()
    finally:
        context.wait_for_min_actors_s = before
    assert sorted(r["id"] for r in rows) == sorted(f"q{i}" for i in range(12))
    pids_of = {}
    for r in rows:
        pids_of.setdefault(r["_shard"], set()).add(r["pid"])
    assert len(pids_of) == 5 and all(len(p) == 1 for p in pids_of.values())
    assert len(set().union(*pids_of.values())) == 2


def test_a_shard_reports_progress_per_batch(input_dir, capsys):
    cfg = _cfg(input_dir, "unused", "unused", shard_rows=5, batch_size=2)
    shard = plan_shards(cfg.input, cfg.shard_rows, None)[0]
    out = _PidWorker(cfg.model_dump(mode="json"))(pa.Table.from_pylist([asdict(shard)]))
    assert out.column("id").to_pylist() == [f"q{i}" for i in range(5)]
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" (")[0] for line in lines] == [
        f"[label] {shard.name}: {n}/5 rows" for n in (2, 4, 5)]
