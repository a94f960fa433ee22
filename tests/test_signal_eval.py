"""``signals-eval``: bootstrap intervals per signal and the paired comparison of two labellings,
checked against metrics computed by hand on constructed rows."""

from __future__ import annotations

import numpy as np
import pytest

from raglign.evaluate.aggregate import bootstrap_ci
from raglign.evaluate.signals import paired_signal_eval, per_row_metrics, signal_eval, to_markdown


def _row(i: int, values: list[float], gold: list[int]) -> dict:
    return {"id": f"q{i}", "question": "?",
            "candidates": [{"doc_id": f"d{j}", "title": None, "text": "t", "is_gold": j in gold,
                            "answer_logprob": v} for j, v in enumerate(values)]}


def _rows(seed: int, n: int = 30) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [_row(i, rng.normal(size=4).tolist(), [int(rng.integers(4))]) for i in range(n)]


def test_per_row_mrr_by_hand_and_interval_is_the_bootstrap_of_it():
    rows = _rows(0) + [{"id": "nogold", "question": "?", "candidates": [
        {"doc_id": "x", "title": None, "text": "t", "is_gold": False, "answer_logprob": 1.0}]}]
    per_row = per_row_metrics(rows, "answer_logprob", ks=(1,))
    assert len(per_row) == 30  # the row without gold has no ranking metric
    by_hand = []
    for r in rows[:30]:
        vals = [c["answer_logprob"] for c in r["candidates"]]
        gold = next(j for j, c in enumerate(r["candidates"]) if c["is_gold"])
        by_hand.append(1.0 / (1 + sum(v > vals[gold] for v in vals)))
    np.testing.assert_allclose([m["mrr"] for m in per_row], by_hand)
    table = signal_eval(rows, ["answer_logprob"], ks=(1,))
    assert table["rows_with_gold"] == 30 and table["rows_without_gold"] == 1
    mean, lo, hi = bootstrap_ci(by_hand)
    got = table["signals"]["answer_logprob"]
    assert got["mrr"] == pytest.approx(mean) and got["mrr_ci"] == pytest.approx([lo, hi])
    assert lo < mean < hi
    assert "answer_logprob | " in to_markdown(table) and f"[{lo:.2f}, {hi:.2f}]" in to_markdown(table)
    assert "mrr_ci" not in signal_eval(rows, ["answer_logprob"], ks=(1,), ci=False)["signals"][
        "answer_logprob"]


def test_paired_difference_of_two_labellings():
    a, b = _rows(1), _rows(2)
    b = [dict(rb, id=ra["id"], candidates=[dict(cb, is_gold=ca["is_gold"]) for ca, cb in
                                           zip(ra["candidates"], rb["candidates"])])
         for ra, rb in zip(a, b)]  # the same questions and gold, other values
    diff = paired_signal_eval(a, list(reversed(b)), "answer_logprob", ks=(1,))
    ma = [m["mrr"] for m in per_row_metrics(a, "answer_logprob", ks=(1,))]
    mb = [m["mrr"] for m in per_row_metrics(b, "answer_logprob", ks=(1,))]
    assert diff["mrr"]["diff"] == pytest.approx(np.mean(ma) - np.mean(mb))
    assert diff["mrr"]["n"] == 30
    same = paired_signal_eval(a, a, "answer_logprob", ks=(1,))
    assert same["mrr"]["diff"] == 0 and same["mrr"]["diff_ci"] == [0, 0]
    with pytest.raises(ValueError, match="same questions"):
        paired_signal_eval(a, b[:-1], "answer_logprob")
