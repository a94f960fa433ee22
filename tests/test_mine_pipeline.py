"""``raglign mine`` through the CLI: groups and soft targets equal raglign.mining on the rows."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from raglign.cli import main
from raglign.data.io import write_rows
from raglign.data.schema import candidate, make_row
from raglign.mining import mine_groups, mine_targets


@pytest.fixture
def labelled(tmp_path):
    rows = []
    for i in range(3):
        n = 8 if i < 2 else 4  # the third row is too short for a 1 + 3 group
        cands = [dict(candidate(f"q{i}d{j}", f"t{j}", f"text {j}", float(n - j), j == 1),
                      answer_logprob=-float((j * 7 + i) % n), loo_logprob=-float(j))
                 for j in range(n)]
        rows.append(make_row(f"q{i}", f"question {i}?", ["a"], cands))
    write_rows(rows, tmp_path / "in")
    return tmp_path, rows


def test_mine_groups_cli_matches_mining(labelled):
    tmp, rows = labelled
    assert main(["mine", str(tmp / "in"), str(tmp / "g"), "--signal", "answer_logprob",
                 "--n", "2", "--m", "3", "--seed", "7"]) == 0
    got = pq.read_table(tmp / "g" / "part-00000.parquet").to_pylist()
    ref = mine_groups(rows, "answer_logprob", n=2, m=3, seed=7)
    assert [g["id"] for g in got] == [g["id"] for g in ref.records] == ["q0", "q1"]
    for g, r in zip(got, ref.records):
        assert [d["doc_id"] for d in g["docs"]] == \
            [r["positive"]["doc_id"]] + [d["doc_id"] for d in r["negatives"]]
        assert g["labels"] == [1, 0, 0, 0] and g["negative_ranks"] == r["negative_ranks"]
    summary = json.loads((tmp / "g" / "_summary.json").read_text())
    assert summary["records"] == 2 and summary["rows_rejected"] == 1
    assert "too few candidates" in (tmp / "g" / "_rejects.jsonl").read_text()


def test_mine_loo_groups_rank_ascending(labelled):
    tmp, rows = labelled
    assert main(["mine", str(tmp / "in"), str(tmp / "g"), "--signal", "loo_logprob",
                 "--fixed-ranks", "3,4,5"]) == 0
    got = pq.read_table(tmp / "g" / "part-00000.parquet").to_pylist()
    # loo_logprob = -j: the lowest value (the last candidate) is the positive.
    assert got[0]["docs"][0]["doc_id"] == "q0d7"


def test_mine_targets_cli_matches_mining(labelled):
    tmp, rows = labelled
    assert main(["mine", str(tmp / "in"), str(tmp / "t"), "--targets", "loop",
                 "--temperature", "0.5", "--k", "4"]) == 0
    got = pq.read_table(tmp / "t" / "part-00000.parquet").to_pylist()
    ref = mine_targets(rows, "loop", temperature=0.5, k=4).records
    for g, r in zip(got, ref, strict=True):
        assert g["target"] == pytest.approx(r["target"])
    assert len(got) == 3


def test_mine_needs_exactly_one_mode(labelled, capsys):
    tmp, _ = labelled
    assert main(["mine", str(tmp / "in"), str(tmp / "x"), "--signal", "judge",
                 "--targets", "pdist"]) == 2
    assert "exactly one of signal" in capsys.readouterr().err
