"""The teacher ladder (benchmarks/teacher_ladder.py) mixes the gold distribution into PDist's
targets as stated, ranks by the mixed targets, and refuses a row it cannot mix."""

from __future__ import annotations

import pytest


def _row(rid: str, target: list[float]) -> dict:
    return {"id": rid, "question": "?", "target": target,
            "docs": [{"doc_id": f"{rid}-{j}", "title": "t", "text": "x"} for j in range(len(target))]}


def test_gold_mix_and_the_teachers_own_ranking(bench_module):
    ladder = bench_module("teacher_ladder")
    canonical = [{"id": "a", "candidates": [{"doc_id": "a-0"}, {"doc_id": "a-1", "is_gold": True},
                                            {"doc_id": "a-2", "is_gold": True}]},
                 {"id": "b", "candidates": [{"doc_id": "b-0", "is_gold": True},
                                            {"doc_id": "b-1", "is_gold": False}]}]
    gold = ladder.gold_ids(canonical)
    assert gold == {"a": {"a-1", "a-2"}, "b": {"b-0"}}
    rows = [_row("a", [0.7, 0.2, 0.1]), _row("b", [0.4, 0.6])]

    llm = ladder.gold_mixed(rows, gold, 0.0)
    assert [r["target"] for r in llm] == [[0.7, 0.2, 0.1], [0.4, 0.6]]
    half = ladder.gold_mixed(rows, gold, 0.5)
    assert half[0]["target"] == pytest.approx([0.35, 0.35, 0.3])
    assert half[1]["target"] == pytest.approx([0.7, 0.3])
    assert all(sum(r["target"]) == pytest.approx(1.0) for r in half)
    assert rows[0]["target"] == [0.7, 0.2, 0.1]  # the input is not changed

    # q = 0: row a ranks a-0 first (gold at rank 2: RR 1/2), row b ranks b-1 first (RR 1/2).
    assert ladder.target_ranking(llm, gold) == pytest.approx({"mrr": 0.5, "recall@5": 1.0})
    # q = 0.5: a's tie 0.35 / 0.35 keeps the rows' order (a-0 first); b's gold now first.
    assert ladder.target_ranking(half, gold)["mrr"] == pytest.approx((0.5 + 1.0) / 2)
    assert ladder.target_ranking(ladder.gold_mixed(rows, gold, 1.0), gold)["mrr"] == 1.0

    with pytest.raises(ValueError, match="row c: no gold paragraph among its 2 documents"):
        ladder.gold_mixed([_row("c", [0.5, 0.5])], gold, 0.5)
