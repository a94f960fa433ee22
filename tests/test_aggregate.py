"""Dataset aggregation: means, skip counts, categories, bootstrap intervals, paired comparison."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from raglign.data.schema import make_row
from raglign.errors import DataError
from raglign.evaluate.aggregate import (
    aggregate,
    bootstrap_ci,
    categories_from_meta,
    compare,
    paired_bootstrap,
)


def test_bootstrap_ci_matches_normal_approximation():
    # Bernoulli(0.3), n = 2000: the percentile interval must be close to p ± 1.96·sqrt(p(1-p)/n)
    values = np.zeros(2000)
    values[:600] = 1.0
    mean, low, high = bootstrap_ci(values, n_boot=2000, seed=0)
    half = 1.96 * math.sqrt(0.3 * 0.7 / 2000)   # 0.02008
    assert mean == pytest.approx(0.3)
    assert low == pytest.approx(0.3 - half, abs=0.003)
    assert high == pytest.approx(0.3 + half, abs=0.003)


def test_bootstrap_ci_is_seeded_and_exact_for_degenerate_inputs():
    vals = [0.1, 0.5, 0.9, 0.3, 0.7]
    noisy = np.random.default_rng(7).uniform(0, 1, 50)
    assert bootstrap_ci(noisy, seed=3) == bootstrap_ci(noisy, seed=3)
    assert bootstrap_ci(noisy, seed=3)[1:] != bootstrap_ci(noisy, seed=4)[1:]
    assert bootstrap_ci([0.4] * 7) == pytest.approx((0.4, 0.4, 0.4))
    assert bootstrap_ci([2.0]) == (2.0, 2.0, 2.0)
    # the 95% interval lies inside the data range and the 50% interval inside the 95% one
    _, lo95, hi95 = bootstrap_ci(vals)
    _, lo50, hi50 = bootstrap_ci(vals, alpha=0.5)
    assert 0.1 <= lo95 < lo50 < hi50 < hi95 <= 0.9
    with pytest.raises(ValueError):
        bootstrap_ci([])
    with pytest.raises(ValueError):
        bootstrap_ci([1.0, float("nan")])


def test_bootstrap_ci_chunked_large_input():
    # 10,000 rows × 1,000 resamples is drawn in chunks; the interval still matches theory
    rng = np.random.default_rng(1)
    values = rng.normal(0.0, 1.0, 10_000)
    mean, low, high = bootstrap_ci(values, n_boot=1000)
    half = 1.96 * values.std() / math.sqrt(values.size)
    assert (high - low) / 2 == pytest.approx(half, rel=0.1)
    assert low < mean < high


def test_paired_bootstrap_constant_shift_and_identity():
    b = [0.0, 1.0, 0.5, 0.25, 1.0]
    a = [x + 0.1 for x in b]
    res = paired_bootstrap(a, b)
    assert res["diff"] == pytest.approx(0.1)
    assert res["diff_ci"] == pytest.approx([0.1, 0.1])
    assert res["p_value"] == 0.0
    same = paired_bootstrap(b, b)
    assert same["diff"] == 0.0 and same["p_value"] == 1.0


def test_paired_bootstrap_is_tighter_than_independent_intervals():
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 1, 500)             # per-row difficulty shared by both systems
    a = base + rng.normal(0.02, 0.01, 500)
    res = paired_bootstrap(a, base)
    _, lo_a, hi_a = bootstrap_ci(a)
    width_paired = res["diff_ci"][1] - res["diff_ci"][0]
    assert width_paired < 0.1 * (hi_a - lo_a)
    assert res["diff_ci"][0] > 0 and res["p_value"] == 0.0


def test_paired_bootstrap_drops_undefined_rows():
    res = paired_bootstrap([1.0, None, 0.0, float("nan")], [0.0, 1.0, 0.0, 1.0])
    assert res["n"] == 2 and res["skipped"] == 2
    assert res["mean_a"] == 0.5 and res["mean_b"] == 0.0
    with pytest.raises(ValueError, match="same rows"):
        paired_bootstrap([1.0], [1.0, 0.0])


def test_compare_checks_ids_and_pairs_metrics():
    a = [{"id": "q1", "em": 1.0, "f1": 1.0}, {"id": "q2", "em": 0.0, "f1": 0.5}]
    b = [{"id": "q1", "em": 0.0, "f1": 0.5}, {"id": "q2", "em": 0.0, "f1": 0.5}]
    out = compare(a, b)
    assert set(out) == {"em", "f1"}
    assert out["em"]["diff"] == 0.5 and out["f1"]["diff"] == 0.25
    with pytest.raises(DataError, match="record 1"):
        compare(a, [b[0], {"id": "q9", "em": 0.0, "f1": 0.0}])


def _rows():
    cats = ["STEM", "STEM", "Humanities", "Other", "STEM"]
    return [make_row(f"q{i}", "q?", ["A"], meta={"category": c}) for i, c in enumerate(cats)]


PER_ROW = [
    {"em": 1.0, "recall@5": 1.0},
    {"em": 0.0, "recall@5": None},           # no gold documents: skipped, counted
    {"em": 1.0, "recall@5": 0.5},
    {"em": True, "recall@5": float("nan")},  # bools count as 0/1, NaN is undefined
    {"em": 0.0, "recall@5": 0.0},
]


def test_aggregate_overall_and_skips():
    out = aggregate(PER_ROW, ci=False)
    assert out == {"n": 5, "em": pytest.approx(3 / 5), "recall@5": pytest.approx(1.5 / 3),
                   "skipped": {"em": 0, "recall@5": 2}}


def test_aggregate_by_category_hand_computed():
    out = aggregate(PER_ROW, _rows(), category_key="category", n_boot=200)
    cats = out["by_category"]
    assert list(cats) == ["Humanities", "Other", "STEM", "ALL"]
    assert cats["STEM"]["n"] == 3
    assert cats["STEM"]["em"] == pytest.approx(1 / 3)
    assert cats["STEM"]["recall@5"] == pytest.approx(0.5)        # rows q0 and q4; q1 skipped
    assert cats["STEM"]["skipped"] == {"em": 0, "recall@5": 1}
    assert cats["Other"]["recall@5"] is None and cats["Other"]["recall@5_ci"] is None
    assert cats["Other"]["skipped"]["recall@5"] == 1
    assert cats["Humanities"]["em_ci"] == [1.0, 1.0]
    assert cats["ALL"] == {k: v for k, v in out.items() if k != "by_category"}
    lo, hi = out["em_ci"]
    assert 0.0 <= lo <= out["em"] <= hi <= 1.0
    json.dumps(out)  # JSON-ready: no numpy scalars, no tuples


def test_aggregate_errors_name_the_row():
    rows = _rows()
    rows[2] = make_row("q2", "q?", ["A"], meta={"subject": "x"})
    with pytest.raises(DataError, match=r"record q2, field 'meta.category'"):
        aggregate(PER_ROW, rows, category_key="category")
    with pytest.raises(ValueError, match="needs the rows"):
        aggregate(PER_ROW, category_key="category")
    with pytest.raises(DataError, match=r"record q7, field 'em'"):
        aggregate([{"id": "q7", "em": "yes"}])
    assert categories_from_meta(_rows(), "category")[:2] == ["STEM", "STEM"]
