"""Mining: ranking, RADIO score mixing, shifted-negative groups, soft distillation targets."""

from __future__ import annotations

import math

import numpy as np
import pytest

from raglign.data.schema import candidate, make_row, to_table
from raglign.errors import DataError
from raglign.mining import (
    TARGETS,
    flatten_group,
    mine_groups,
    mine_targets,
    minmax,
    mix_scores,
    negative_positions,
    rank_by,
    soft_targets,
)


def _row(rid: str, n: int = 20, **signals) -> dict:
    cands = []
    for j in range(n):
        c = candidate(f"{rid}-d{j}", f"T{j}", f"text {j}", score=float(n - j))
        for name, values in signals.items():
            c[name] = values[j]
        cands.append(c)
    return make_row(rid, f"question {rid}?", ["ans"], cands)


def test_rank_by_descending_ascending_and_stable_ties():
    row = _row("q", 4, sig=[0.2, 0.9, 0.2, 0.5])
    assert rank_by(row, "sig") == [1, 3, 0, 2]               # tie 0/2 keeps candidate order
    assert rank_by(row, "sig", descending=False) == [0, 2, 3, 1]
    assert rank_by(row, "score") == [0, 1, 2, 3]


def test_rank_by_missing_value_names_row_and_field():
    row = _row("q7", 3, sig=[0.1, None, 0.3])
    with pytest.raises(DataError, match=r"record q7, field 'candidates\[1\]\.sig': missing"):
        rank_by(row, "sig")
    with pytest.raises(DataError, match=r"candidates\[0\]\.nope"):
        rank_by(row, "nope")
    bad = _row("q8", 2, sig=[float("nan"), 1.0])
    with pytest.raises(DataError, match=r"record q8, field 'candidates\[0\]\.sig'"):
        rank_by(bad, "sig")


def test_minmax_and_mix_scores_hand_computed():
    assert minmax([2.0, 4.0, 3.0]).tolist() == [0.0, 1.0, 0.5]
    assert minmax([5.0, 5.0]).tolist() == [0.0, 0.0]           # constant → zeros
    # s = [0, .5, 1], r = minmax([10, 30, 20]) = [0, 1, .5]; 0.3 s + 0.7 r
    mixed = mix_scores([1.0, 2.0, 3.0], [10.0, 30.0, 20.0], alpha=0.3)
    np.testing.assert_allclose(mixed, [0.0, 0.85, 0.65])
    np.testing.assert_allclose(mix_scores([1.0, 2.0, 3.0], [10.0, 30.0, 20.0], 1.0), [0, 0.5, 1])
    np.testing.assert_allclose(mix_scores([1.0, 2.0, 3.0], [10.0, 30.0, 20.0], 0.0), [0, 1, 0.5])
    # constant retrieval scores contribute nothing; constant signal likewise
    np.testing.assert_allclose(mix_scores([1.0, 2.0, 3.0], [7.0, 7.0, 7.0], 0.5), [0, 0.25, 0.5])
    np.testing.assert_allclose(mix_scores([1.0, 2.0, 3.0], None, alpha=1.0), [0, 0.5, 1])
    with pytest.raises(ValueError, match="unless alpha == 1"):
        mix_scores([1.0, 2.0], None, alpha=0.5)
    with pytest.raises(ValueError):
        mix_scores([1.0, 2.0], [1.0], alpha=0.5)
    with pytest.raises(ValueError):
        mix_scores([1.0, 2.0], [1.0, 2.0], alpha=1.5)


def test_negative_positions_fixed_per_row_and_seed():
    # pinned: the sampling index is part of the experiment's definition and must not drift
    assert negative_positions("q1", 20) == [9, 11, 12, 13, 15, 18]
    assert negative_positions("q2", 20) == [6, 8, 10, 11, 15, 16]
    assert negative_positions("q1", 20, seed=0) == [3, 6, 8, 15, 17, 18]
    for i in range(200):
        pos = negative_positions(f"row{i}", 20, n=3, m=6, seed=42)
        assert len(set(pos)) == 6 and min(pos) >= 3 and max(pos) <= 19 and pos == sorted(pos)
    assert negative_positions("q1", 20, fixed_ranks=[18, 3, 4, 6, 9, 13]) == [3, 4, 6, 9, 13, 18]
    assert negative_positions("x", 9, n=3, m=6) == [3, 4, 5, 6, 7, 8]   # exactly enough
    with pytest.raises(ValueError):
        negative_positions("x", 8, n=3, m=6)


def test_mine_groups_same_positions_across_signals():
    rng = np.random.default_rng(0)
    rows = [_row(f"q{i}", 20, sig_a=rng.normal(size=20).tolist(),
                 sig_b=rng.normal(size=20).tolist()) for i in range(30)]
    ga, rej_a = mine_groups(rows, "sig_a")
    gb, rej_b = mine_groups(rows, "sig_b")
    assert not rej_a and not rej_b and len(ga) == len(gb) == 30
    for row, a, b in zip(rows, ga, gb):
        assert a["negative_ranks"] == b["negative_ranks"]
        assert a["negative_ranks"] == negative_positions(row["id"], 20)
        for group, sig in ((a, "sig_a"), (b, "sig_b")):
            order = rank_by(row, sig)
            cands = row["candidates"]
            assert group["positive"]["doc_id"] == cands[order[0]]["doc_id"]
            assert [d["doc_id"] for d in group["negatives"]] == [
                cands[order[p]]["doc_id"] for p in group["negative_ranks"]]
            # never the positive nor one of the n - 1 candidates right after it
            top = {cands[order[r]]["doc_id"] for r in range(3)}
            assert not top & {d["doc_id"] for d in group["negatives"]}
    # the two signals do rank differently, so the shared positions pick different documents
    assert any(a["positive"] != b["positive"] for a, b in zip(ga, gb))


def test_mine_groups_fixed_ranks_and_shape():
    sig = [float(v) for v in [5, 1, 9, 3, 7, 0, 2, 8, 6, 4, 19, 18, 17, 16, 15, 14, 13, 12, 11, 10]]
    row = _row("q", 20, sig=sig)
    (group,), rejects = mine_groups([row], "sig", fixed_ranks=[3, 4, 6, 9, 13, 18])
    assert not rejects
    order = sorted(range(20), key=lambda j: -sig[j])   # 10, 11, 12, 13, 14, ...
    assert group["positive"] == {"doc_id": "q-d10", "title": "T10", "text": "text 10"}
    assert [d["doc_id"] for d in group["negatives"]] == [
        f"q-d{order[p]}" for p in (3, 4, 6, 9, 13, 18)]
    assert group["negative_ranks"] == [3, 4, 6, 9, 13, 18]
    assert group["signal"] == "sig" and group["alpha"] is None
    flat = flatten_group(group)
    assert flat["labels"] == [1, 0, 0, 0, 0, 0, 0]
    assert flat["docs"][0] == group["positive"] and flat["docs"][1:] == group["negatives"]
    to_table([flat])  # Arrow-friendly: fixed struct types


def test_mine_groups_with_alpha_mixes_retrieval_scores():
    # retrieval score = 20 - j (candidate 0 best); signal favours candidate 19 slightly
    sig = [0.0] * 19 + [1.0]
    row = _row("q", 20, sig=sig)
    # alpha = 1: signal only → candidate 19; alpha = 0.3: 0.3·1 < 0.7·1 for candidate 0
    assert mine_groups([row], "sig", alpha=1.0).records[0]["positive"]["doc_id"] == "q-d19"
    assert mine_groups([row], "sig", alpha=0.3).records[0]["positive"]["doc_id"] == "q-d0"
    no_ret = _row("r", 20, sig=sig)
    for c in no_ret["candidates"]:
        c["score"] = None
    assert mine_groups([no_ret], "sig", alpha=1.0).records[0]["positive"]["doc_id"] == "r-d19"
    with pytest.raises(DataError, match=r"record r, field 'candidates\[0\]\.score'"):
        mine_groups([no_ret], "sig", alpha=0.5)


def test_mine_groups_short_rows_rejected_or_raised():
    rows = [_row("long", 20, sig=list(range(20))), _row("short", 8, sig=list(range(8)))]
    groups, rejects = mine_groups(rows, "sig")
    assert [g["id"] for g in groups] == ["long"]
    assert rejects == [{"id": "short", "reason": rejects[0]["reason"]}]
    assert "8 candidates" in rejects[0]["reason"] and "at least 9" in rejects[0]["reason"]
    with pytest.raises(DataError, match="record short, field 'candidates'"):
        mine_groups(rows, "sig", on_short="error")
    _, rej = mine_groups([_row("f", 15, sig=list(range(15)))], "sig", fixed_ranks=[3, 4, 6, 9, 13, 18])
    assert rej[0]["id"] == "f" and "fixed rank 18" in rej[0]["reason"]


def test_mine_groups_argument_checks():
    rows = [_row("q", 20, sig=list(range(20)))]
    with pytest.raises(ValueError, match="positions < n=3"):
        mine_groups(rows, "sig", fixed_ranks=[2, 4, 6])
    with pytest.raises(ValueError, match="m=5"):
        mine_groups(rows, "sig", m=5, fixed_ranks=[3, 4, 6, 9, 13, 18])
    with pytest.raises(ValueError):
        mine_groups(rows, "sig", n=0)
    with pytest.raises(ValueError):
        mine_groups(rows, "sig", on_short="drop")


def test_soft_targets_hand_computed():
    row = _row("q", 3, answer_logprob=[-1.0, -2.0, -0.5])
    # z = [-2, -4, -1]
    e = [math.exp(-2), math.exp(-4), math.exp(-1)]
    expected = [x / sum(e) for x in e]
    assert soft_targets(row, "answer_logprob", 0.5) == pytest.approx(expected)
    assert soft_targets(row, "answer_logprob", 0.5) == pytest.approx([0.259496, 0.0351189, 0.705385],
                                                                    abs=1e-6)
    # first k in candidate order, not the top-k by the signal
    e2 = [math.exp(-1), math.exp(-2)]
    assert soft_targets(row, "answer_logprob", 1.0, k=2) == pytest.approx([x / sum(e2) for x in e2])
    # Atlas's T = 0.01 on well-separated values: no overflow, nearly one-hot
    t = soft_targets(row, "answer_logprob", 0.01)
    assert t[2] == pytest.approx(1.0) and sum(t) == pytest.approx(1.0)
    with pytest.raises(DataError, match="k=5"):
        soft_targets(row, "answer_logprob", 1.0, k=5)
    with pytest.raises(ValueError):
        soft_targets(row, "answer_logprob", 0.0)


def test_loop_target_weights_the_most_needed_document():
    # log p(a | D \ d_k): removing d1 hurts most (-3), so d1 gets the largest weight
    row = _row("q", 3, loo_logprob=[-1.0, -3.0, -2.0])
    t = soft_targets(row, "loo_logprob", 1.0, negate=True)
    e = [math.exp(1), math.exp(3), math.exp(2)]
    assert t == pytest.approx([x / sum(e) for x in e])
    assert int(np.argmax(t)) == 1
    assert TARGETS["loop"].field == "loo_logprob" and TARGETS["loop"].sign == -1
    assert all(spec.temperature == 0.01 for spec in TARGETS.values())


def test_mine_targets_records_and_rejects():
    rows = [_row("a", 4, loo_logprob=[-1.0, -3.0, -2.0, -0.5]),
            _row("b", 2, loo_logprob=[-1.0, -1.0])]
    records, rejects = mine_targets(rows, "loop", temperature=1.0, k=3)
    assert rejects == [{"id": "b", "reason": "too few candidates: 2 < k=3"}]
    (rec,) = records
    e = [math.exp(1), math.exp(3), math.exp(2)]
    assert rec["target"] == pytest.approx([x / sum(e) for x in e])
    assert [d["doc_id"] for d in rec["docs"]] == ["a-d0", "a-d1", "a-d2"]
    assert rec["method"] == "loop" and rec["temperature"] == 1.0
    with pytest.raises(DataError, match=r"record a, field 'candidates\[0\]\.answer_logprob'"):
        mine_targets(rows[:1], "pdist", k=3)  # these rows carry no answer_logprob
    default = mine_targets([_row("c", 2, answer_logprob=[-1.0, -1.01])], "pdist")
    assert default.records[0]["temperature"] == 0.01
    assert default.records[0]["target"] == pytest.approx([1 / (1 + math.exp(-1)),
                                                          1 - 1 / (1 + math.exp(-1))])
    to_table(default.records)
    with pytest.raises(DataError, match="record b, field 'candidates'"):
        mine_targets(rows, "loop", k=3, on_short="error")
    with pytest.raises(ValueError, match="unknown distillation method"):
        mine_targets(rows, "emdr")
