"""One ranking direction per signal, declared on its class and read by every consumer.

``raglign eval --rank-by``, ``raglign signals-eval``, the G-Rerank report and ``raglign mine``
must rank a signal field the same way: in the direction its Signal class declares, with null
(unlabelled) candidates after the labelled ones in retrieval order. These tests pin the table,
run each consumer on the same rows, and flip a declaration to show no consumer keeps a copy.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from raglign.cli import main
from raglign.data.io import write_rows
from raglign.data.schema import candidate, make_row
from raglign.errors import ConfigError, DataError
from raglign.evaluate.signals import ranked_doc_ids, signal_eval
from raglign.gumbel.report import per_row_metrics
from raglign.mining import TARGETS, mine_groups, rank_by, soft_targets
from raglign.pipeline.evaluate import EvalConfig, _ranking, evaluate
from raglign.signals import SIGNALS
from raglign.signals.loo import LeaveOneOut
from raglign.signals.ranking import higher_is_better, rank_candidates, rank_values

# The declared table. Written out here (not read from the classes) so a flipped declaration
# fails a test instead of silently changing every consumer at once.
LOWER_IS_BETTER = {"loo_logprob"}
EXPECTED_SIGNALS = {"rationale_score", "answer_logprob", "loo_logprob", "attention", "judge",
                    "answer_quality", "dpa", "gumbel_weight"}

# One row's signal values: ties (0.5 twice, -1.0 twice), nulls (judge: unparseable; loo: below
# rank K) in the middle and at the end, and gold documents where each direction puts them apart.
VALUES = [0.5, None, 2.0, 0.5, -1.0, None, -1.0, 3.0]
GOLD = {1, 4}
# Hand-ranked: labelled values by direction, ties in candidate order, then nulls 1, 5.
DESC = [7, 2, 0, 3, 4, 6, 1, 5]
ASC = [4, 6, 0, 3, 2, 7, 1, 5]


def _rows(field: str) -> list[dict]:
    """Two rows carrying ``field``: VALUES, and a second row with a different null pattern."""
    second = [None, 1.0, 1.0, None, 0.0, 2.0, None, -3.0]
    rows = []
    for rid, values in (("r0", VALUES), ("r1", second)):
        cands = [dict(candidate(f"{rid}d{j}", f"T{j}", f"text {j}", float(8 - j), j in GOLD),
                      **{field: v}) for j, v in enumerate(values)]
        rows.append(make_row(rid, f"question {rid}?", ["a"], cands))
    return rows


def _eval_order(row: dict, field: str, tmp_path) -> list[str]:
    cfg = EvalConfig(data=str(tmp_path), output=str(tmp_path / "o.json"), rank_by=field, k1=20)
    return [row["candidates"][i]["doc_id"] for i in _ranking(row, cfg)]


def test_every_signal_declares_its_direction_on_its_own_class():
    assert set(SIGNALS) == EXPECTED_SIGNALS
    for name, signal in SIGNALS.items():
        assert "higher_is_better" in vars(type(signal)), f"{name} does not declare a direction"
        assert signal.higher_is_better is (name not in LOWER_IS_BETTER), name
        assert higher_is_better(name) is signal.higher_is_better


@pytest.mark.parametrize("first", ["raglign.signals.ranking", "raglign.mining",
                                   "raglign.evaluate.signals"])
def test_the_definition_is_a_low_layer_without_torch_or_pipelines(first):
    # a fresh interpreter, each importer first: no import cycle, no model or pipeline code
    code = (f"import sys, {first}, raglign.signals.ranking\n"
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith('raglign.pipeline')]\n"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_fields_rank_highest_first():
    assert higher_is_better("score") and higher_is_better("my_own_column")
    assert rank_candidates([{"x": 1}, {"x": 3}, {"x": 2}], "x") == [1, 2, 0]


def test_rank_values_nulls_last_in_order_ties_stable_nan_is_null():
    assert rank_values(VALUES) == DESC
    assert rank_values(VALUES, descending=False) == ASC
    assert rank_values([float("nan"), 1.0, None, 2.0]) == [3, 1, 0, 2]
    assert rank_values([False, True, None, True]) == [1, 3, 0, 2]  # is_gold: gold first
    assert rank_values([]) == []
    with pytest.raises(TypeError, match="position 1 is 'x'"):
        rank_values([1.0, "x"])
    with pytest.raises(TypeError, match="candidate field 'f'"):
        rank_candidates([{"f": [1]}], "f")


@pytest.mark.parametrize("field", sorted(EXPECTED_SIGNALS))
def test_eval_rank_by_ranks_exactly_as_signals_eval(field, tmp_path):
    rows = _rows(field)
    expected = ASC if field in LOWER_IS_BETTER else DESC
    assert ranked_doc_ids(rows[0]["candidates"], field) == [f"r0d{j}" for j in expected]
    for row in rows:
        assert _eval_order(row, field, tmp_path) == ranked_doc_ids(row["candidates"], field)

    # The real entry point on disk: the per-row rankings it writes, and its MRR against
    # signals-eval's and the G-Rerank report's (every row has gold, so all three average the
    # same rows).
    write_rows(rows, tmp_path / "d")
    out = tmp_path / "e.json"
    report = evaluate(EvalConfig(data=str(tmp_path / "d"), output=str(out), rank_by=field,
                                 k1=20, ks=[1, 2], n_boot=100))
    detail = pq.read_table(out.with_suffix(".rows.parquet")).to_pylist()
    assert [d["ranked_doc_ids"] for d in detail] == \
        [ranked_doc_ids(r["candidates"], field) for r in rows]
    table = signal_eval(rows, [field], ks=(1, 2))["signals"][field]
    assert report["mrr"] == pytest.approx(table["mrr"])
    assert report["recall@2"] == pytest.approx(table["recall@2"])
    gumbel = per_row_metrics(rows, field, ks=(1, 2))
    assert [g["mrr"] for g in gumbel] == pytest.approx([d["mrr"] for d in detail])


@pytest.mark.parametrize("field", sorted(EXPECTED_SIGNALS))
def test_mine_default_direction_is_the_declared_one(field):
    # Mining needs every candidate labelled: fill the nulls.
    row = _rows(field)[0]
    for c, v in zip(row["candidates"], [0.5, 1.5, 2.0, 0.5, -1.0, 0.0, -1.0, 3.0]):
        c[field] = v
    best, worst = ("r0d4", "r0d7") if field in LOWER_IS_BETTER else ("r0d7", "r0d4")
    assert rank_by(row, field) == rank_candidates(row["candidates"], field)
    (group,), _ = mine_groups([row], field, n=1, m=3, seed=0)
    assert group["positive"]["doc_id"] == best
    # the explicit override still wins
    (group,), _ = mine_groups([row], field, n=1, m=3, seed=0,
                              descending=field in LOWER_IS_BETTER)
    assert group["positive"]["doc_id"] == worst


def test_eval_cli_rank_by_loo_logprob_ranks_lowest_first_with_nulls_last(tmp_path):
    # LOOP labels the top K = 3 candidates and leaves the rest null.
    loo = [-2.0, -5.0, -1.0, None, None]
    cands = [dict(candidate(f"d{j}", f"T{j}", f"text {j}", float(5 - j), j == 1), loo_logprob=v)
             for j, v in enumerate(loo)]
    write_rows([make_row("q", "q?", ["a"], cands)], tmp_path / "d")
    out = tmp_path / "loo.json"
    assert main(["eval", str(tmp_path / "d"), "--output", str(out),
                 "--rank-by", "loo_logprob"]) == 0
    (detail,) = pq.read_table(out.with_suffix(".rows.parquet")).to_pylist()
    assert detail["ranked_doc_ids"] == ["d1", "d0", "d2", "d3", "d4"]
    assert json.loads(out.read_text())["mrr"] == pytest.approx(1.0)


def test_eval_rank_by_errors_name_the_row(tmp_path):
    cfg = EvalConfig(data="somewhere", output=str(tmp_path / "o.json"), rank_by="judge")
    with pytest.raises(ConfigError, match="row q: no field 'judge'"):
        _ranking(make_row("q", "q?", ["a"], [candidate("d0", "T", "t")]), cfg)
    bad = make_row("q", "q?", ["a"], [dict(candidate("d0", "T", "t"), judge="relevant")])
    with pytest.raises(DataError, match="somewhere, record q.*'relevant', not a number"):
        _ranking(bad, cfg)
    # a row whose every candidate is null (all judge outputs unparseable) keeps retrieval order
    nulls = make_row("q", "q?", ["a"], [dict(candidate(f"d{j}", "T", "t"), judge=None)
                                        for j in range(3)])
    assert _ranking(nulls, cfg) == [0, 1, 2]


def test_flipping_the_declaration_flips_every_consumer(monkeypatch, tmp_path):
    """No consumer keeps its own copy of the direction: change the class attribute and eval,
    signals-eval, mining groups and LOOP soft targets all follow."""
    row = _rows("loo_logprob")[0]
    full = {**row, "candidates": [dict(c, loo_logprob=float(j % 3))
                                  for j, c in enumerate(row["candidates"])]}
    monkeypatch.setattr(LeaveOneOut, "higher_is_better", True)
    assert ranked_doc_ids(row["candidates"], "loo_logprob") == [f"r0d{j}" for j in DESC]
    assert _eval_order(row, "loo_logprob", tmp_path) == [f"r0d{j}" for j in DESC]
    assert rank_by(full, "loo_logprob") == [2, 5, 1, 4, 7, 0, 3, 6]
    assert TARGETS["loop"].sign == 1
    monkeypatch.setattr(LeaveOneOut, "higher_is_better", False)
    assert rank_by(full, "loo_logprob") == [0, 3, 6, 1, 4, 7, 2, 5]
    assert TARGETS["loop"].sign == -1
    t = soft_targets(full, "loo_logprob", 1.0, negate=TARGETS["loop"].sign < 0)
    assert max(range(8), key=t.__getitem__) == 0  # the lowest loo_logprob gets the most mass


def test_mine_cli_default_and_override(tmp_path):
    row = _rows("loo_logprob")[0]
    for j, c in enumerate(row["candidates"]):
        c["loo_logprob"] = -float(j)  # lowest = the last candidate
    write_rows([row], tmp_path / "in")
    assert main(["mine", str(tmp_path / "in"), str(tmp_path / "g"), "--signal", "loo_logprob",
                 "--n", "1", "--m", "2"]) == 0
    got = pq.read_table(tmp_path / "g" / "part-00000.parquet").to_pylist()
    assert got[0]["docs"][0]["doc_id"] == "r0d7"
    cfg = tmp_path / "mine.yaml"
    cfg.write_text(f"job: mine\ninput: {tmp_path / 'in'}\noutput: {tmp_path / 'h'}\n"
                   "signal: loo_logprob\nn: 1\nm: 2\ndescending: true\n")
    assert main(["mine", "--config", str(cfg)]) == 0
    got = pq.read_table(tmp_path / "h" / "part-00000.parquet").to_pylist()
    assert got[0]["docs"][0]["doc_id"] == "r0d0"


def test_mine_alpha_mixes_a_lower_is_better_signal_in_its_useful_direction():
    # retrieval favours candidate 0; loo_logprob favours candidate 3 (lowest) only a little
    # against the retrieval term at alpha 0.3, decisively at alpha 1.
    cands = [dict(candidate(f"d{j}", "T", "t", float(4 - j)), loo_logprob=v)
             for j, v in enumerate([0.0, 0.0, 0.0, -1.0])]
    row = make_row("q", "q?", ["a"], cands)

    def positive(alpha):
        (group,), _ = mine_groups([row], "loo_logprob", n=1, m=2, seed=0, alpha=alpha)
        return group["positive"]["doc_id"]

    assert positive(1.0) == "d3"
    # usefulness minmax(-loo) = [0, 0, 0, 1], retrieval [1, 2/3, 1/3, 0]:
    # 0.3·u + 0.7·r = [0.7, 0.47, 0.23, 0.3] → d0 (mixing the raw value would rank d3 first)
    assert positive(0.3) == "d0"
