"""The fixed train/test split: stable per id, close to the asked fraction, disjoint."""

import pytest

from raglign.data.split import is_test, split_rows


def test_split_is_stable_disjoint_and_near_fraction():
    rows = [{"id": f"q{i}"} for i in range(2000)]
    train, test = split_rows(rows, 0.3, seed=0)
    assert len(train) + len(test) == 2000
    assert {r["id"] for r in train}.isdisjoint({r["id"] for r in test})
    assert abs(len(test) / 2000 - 0.3) < 0.03
    # membership depends on the id alone: a subset splits the same way
    sub_train, sub_test = split_rows(rows[::7], 0.3, seed=0)
    assert {r["id"] for r in sub_test} == {r["id"] for r in test} & {r["id"] for r in rows[::7]}
    # another seed gives another split
    assert {r["id"] for r in split_rows(rows, 0.3, seed=1)[1]} != {r["id"] for r in test}


def test_bad_fraction():
    with pytest.raises(ValueError):
        is_test("q", 1.0)
