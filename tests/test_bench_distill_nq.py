"""benchmarks/distill_nq.py deals its questions three ways by the fixed id hash: disjoint parts,
the same questions whatever the file order, and none of the test questions ever trained on."""

from __future__ import annotations

import json


def _rows(ids):
    return [{"id": i, "question": f"q{i}?", "answers": ["a"],
             "candidates": [{"doc_id": f"d{i}", "title": "t", "text": "x", "is_gold": True}]}
            for i in ids]


def test_three_way_split_by_id_hash(tmp_path, bench_module):
    from raglign.data.io import read_rows, write_rows
    from raglign.data.split import is_test

    bench = bench_module("distill_nq")
    ids = [f"nq{i}" for i in range(400)]
    write_rows(_rows(ids), tmp_path / "forward")
    write_rows(_rows(ids[::-1]), tmp_path / "reversed")
    parts = {}
    for name in ("forward", "reversed"):
        paths = bench.split(tmp_path / name, tmp_path / f"out-{name}", 300)
        parts[name] = {s: [r["id"] for r in read_rows(p)] for s, p in paths.items()}
        counts = json.loads((tmp_path / f"out-{name}" / "split" / "counts.json").read_text())
        assert counts == {s: len(v) for s, v in parts[name].items()}
    fwd = parts["forward"]
    assert {s: set(v) for s, v in fwd.items()} == {s: set(v) for s, v in parts["reversed"].items()}
    chosen = set(sorted(ids, key=bench.hash_order)[:300])
    assert set().union(*map(set, fwd.values())) == chosen and sum(map(len, fwd.values())) == 300
    assert set(fwd["test"]) == {i for i in chosen if is_test(i, 0.3)}
    assert set(fwd["val"]) == {i for i in chosen - set(fwd["test"]) if is_test(i, 0.4, seed=1)}
    # the shares follow the fractions (300 draws: 30 % test, 40 % of the other 70 % validation)
    assert 60 <= len(fwd["test"]) <= 120 and 60 <= len(fwd["val"]) <= 110


def test_grid_varies_the_anchor_mix_only_where_there_is_an_anchor(bench_module):
    bench = bench_module("distill_nq")
    points = bench.grid("0.02,0.1", "0,0.5", "arithmetic,geometric")
    assert points == [(0.02, 0.0, "arithmetic"), (0.02, 0.5, "arithmetic"),
                      (0.02, 0.5, "geometric"), (0.1, 0.0, "arithmetic"),
                      (0.1, 0.5, "arithmetic"), (0.1, 0.5, "geometric")]
    names = [bench.run_name("bi", *p) for p in points]
    assert names == ["T0.02-a0", "T0.02-a0.5", "T0.02-a0.5-geo", "T0.1-a0", "T0.1-a0.5",
                     "T0.1-a0.5-geo"]
    assert bench.run_name("cross", 1.0, 0.0) == "cross-T1-a0"


def test_what_the_anchored_targets_rank(tmp_path, bench_module):
    """The teacher is sure of d2 and the base of d0, both give the gold d1 a solid second: the
    geometric mix ranks d1 first (MRR 1), the arithmetic one third (1/3); a question without a
    gold candidate is left out."""
    import math

    from raglign.data.io import write_rows

    bench = bench_module("distill_nq")
    base = [0.7, 0.29, 0.01]  # softmax(score / T) with T = 1 and score = log p
    labelled = [{"id": "q", "question": "?", "candidates": [
                    {"doc_id": f"d{i}", "title": "t", "text": "x", "score": math.log(p),
                     "is_gold": i == 1}
                    for i, p in enumerate(base)]},
                {"id": "nogold", "question": "?", "candidates": [
                    {"doc_id": "x", "title": "t", "text": "x", "score": 0.0,
                     "is_gold": False}]}]
    mined = [{"id": "q", "question": "?", "target": [0.01, 0.29, 0.7],
              "docs": [{"doc_id": f"d{i}", "title": "t", "text": "x"} for i in range(3)]},
             {"id": "nogold", "question": "?", "target": [1.0],
              "docs": [{"doc_id": "x", "title": "t", "text": "x"}]}]
    write_rows(labelled, tmp_path / "labelled")
    write_rows(mined, tmp_path / "mined")
    got = bench.mixed_target_quality(tmp_path / "labelled", tmp_path / "mined", temperature=1.0,
                                     anchor=0.5)
    assert got["geometric"] == {"mrr": 1.0, "recall@5": 1.0}
    assert got["arithmetic"]["mrr"] == 1 / 3 and got["arithmetic"]["recall@5"] == 1.0
