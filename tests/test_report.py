"""Comparison reports: paired differences against a direct computation, the verdict rule on
constructed intervals, and the demo's comparison files from eval runs made without models."""

from __future__ import annotations

import numpy as np
import pytest

from raglign.data.io import write_rows
from raglign.data.schema import candidate, make_row
from raglign.errors import DataError
from raglign.evaluate.report import (
    HEADLINE,
    headroom_line,
    paired_differences,
    per_row_metrics,
    verdict,
    verdict_line,
)
from raglign.pipeline.evaluate import EvalConfig, evaluate

BASE = [{"id": "q1", "mrr": 1.0, "recall@5": 0.5, "f1": 0.2},
        {"id": "q2", "mrr": 0.5, "recall@5": 1.0, "f1": None},
        {"id": "q3", "mrr": 0.25, "recall@5": 0.5, "f1": 0.0},
        {"id": "q4", "mrr": 1.0, "recall@5": 1.0, "f1": 1.0},
        {"id": "q5", "mrr": 0.0, "recall@5": 0.0, "f1": 0.5}]
METHOD = [{"id": "q1", "mrr": 0.5, "recall@5": 0.5, "f1": 0.4},
          {"id": "q2", "mrr": 0.5, "recall@5": 0.5, "f1": 0.3},
          {"id": "q3", "mrr": 1.0, "recall@5": 1.0, "f1": 0.0},
          {"id": "q4", "mrr": 0.2, "recall@5": 1.0, "f1": None},
          {"id": "q5", "mrr": 0.0, "recall@5": 0.5, "f1": 0.5}]


def _reference(a: list[float | None], b: list[float | None], n_boot: int, seed: int) -> dict:
    """The paired bootstrap written out directly: per-row differences on the rows both define,
    one draw of row indices per resample from ``default_rng(seed)``, percentile interval."""
    d = np.array([x - y for x, y in zip(a, b) if x is not None and y is not None])
    idx = np.random.default_rng(seed).integers(0, d.size, size=(n_boot, d.size))
    means = d[idx].mean(axis=1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    p = min(1.0, 2 * min(np.mean(means <= 0), np.mean(means >= 0)))
    return {"diff": d.mean(), "diff_ci": [lo, hi], "p_value": p, "n": d.size}


def _run(name: str, per_row: list[dict]) -> dict:
    """A report as raglign eval writes it: the means of the metrics a run defines."""
    out = {"name": name, "n": len(per_row)}
    for m in ("mrr", "recall@5", "f1"):
        out[m] = float(np.mean([r[m] for r in per_row if r[m] is not None]))
    return out


def test_paired_differences_match_a_direct_computation():
    runs = [_run("base", BASE), _run("method", METHOD)]
    diffs = paired_differences(runs, [BASE, METHOD], n_boot=500, seed=3)
    assert list(diffs) == ["method"] and list(diffs["method"]) == ["recall@5", "mrr", "f1"]
    for m in ("mrr", "recall@5", "f1"):
        ref = _reference([r[m] for r in METHOD], [r[m] for r in BASE], 500, 3)
        got = diffs["method"][m]
        assert got["diff"] == pytest.approx(ref["diff"])
        assert got["diff_ci"] == pytest.approx(ref["diff_ci"])
        assert got["p_value"] == pytest.approx(ref["p_value"])
        assert got["n"] == ref["n"]
    # hand values: MRR (-0.5 + 0 + 0.75 - 0.8 + 0) / 5; F1 only on q1, q3, q5 (q2, q4 undefined)
    assert diffs["method"]["mrr"]["diff"] == pytest.approx(-0.11)
    assert diffs["method"]["f1"]["diff"] == pytest.approx(0.2 / 3)
    assert diffs["method"]["f1"]["skipped"] == 2


def test_paired_differences_only_compare_metrics_both_runs_report():
    no_reader = [{k: v for k, v in r.items() if k != "f1"} for r in METHOD]
    runs = [_run("base", BASE), {k: v for k, v in _run("m", METHOD).items() if k != "f1"}]
    diffs = paired_differences(runs, [BASE, no_reader], n_boot=100)
    assert set(diffs["m"]) == {"mrr", "recall@5"}


def test_per_row_metrics_pair_runs_written_in_different_orders(tmp_path):
    rows = [make_row(f"q{i}", f"question {i}?", ["a"],
                     [candidate("n", "t", "x", 1.0, False), candidate("g", "t", "y", 0.0, True)])
            for i in range(4)]
    write_rows(rows, tmp_path / "a")
    write_rows(rows[::-1], tmp_path / "b")
    base = evaluate(EvalConfig(data=str(tmp_path / "a"), output=str(tmp_path / "base.json"),
                               name="base"))
    oracle = evaluate(EvalConfig(data=str(tmp_path / "b"), output=str(tmp_path / "oracle.json"),
                                 reranker="oracle"))
    per_row = [per_row_metrics(tmp_path / "base.json"), per_row_metrics(tmp_path / "oracle.json")]
    assert [r["id"] for r in per_row[1]] == ["q0", "q1", "q2", "q3"]
    assert "ranked_doc_ids" not in per_row[0][0]
    diffs = paired_differences([base, oracle], per_row, n_boot=100)
    assert diffs["oracle"]["mrr"]["diff"] == pytest.approx(0.5)      # rank 2 -> rank 1
    assert diffs["oracle"]["recall@1"]["diff_ci"] == pytest.approx([1.0, 1.0])
    with pytest.raises(DataError, match="no such file"):
        per_row_metrics(tmp_path / "missing.json")


def _d(low: float, high: float, n: int = 33) -> dict:
    return {"diff": (low + high) / 2, "diff_ci": [low, high], "p_value": 0.5, "n": n}


@pytest.mark.parametrize("mrr, recall, expected", [
    (_d(0.01, 0.2), _d(0.02, 0.1), "better"),
    (_d(0.01, 0.2), _d(-0.05, 0.1), "better"),       # one interval above 0, none below
    (_d(-0.1, 0.05), _d(-0.02, 0.03), "on par"),
    (_d(0.0, 0.13), _d(-0.1, 0.0), "on par"),         # an interval touching 0 includes it
    (_d(-0.33, -0.13), _d(-0.12, 0.03), "worse"),
    (_d(-0.2, -0.1), _d(-0.2, -0.01), "worse"),
    (_d(0.05, 0.1), _d(-0.2, -0.1), "mixed"),
])
def test_verdict_rule(mrr, recall, expected):
    assert verdict({"mrr": mrr, "recall@5": recall, "f1": _d(0.5, 0.9)}, HEADLINE) == expected


def test_verdict_needs_a_headline_metric_and_reads_the_rest_as_context():
    assert verdict({"mrr": _d(-0.1, 0.1)}, HEADLINE) == "on par"
    with pytest.raises(ValueError, match="headline"):
        verdict({"f1": _d(0.1, 0.2)}, HEADLINE)
    line = verdict_line("pdist", {"mrr": _d(-0.33, -0.13), "recall@5": _d(-0.12, 0.03)},
                        HEADLINE)
    assert line == ("**pdist**: worse than the base: mrr -0.230 [-0.330, -0.130], recall@5 "
                    "-0.045 [-0.120, +0.030] (paired 95% CIs, n = 33 questions); an interval "
                    "lies below 0 and none above.")


def test_headroom_line_says_whether_the_reader_can_show_a_gain():
    ranking = {"mrr": _d(0.02, 0.16), "recall@5": _d(0.08, 0.23)}
    flat = headroom_line("oracle", {**ranking, "f1": _d(-0.01, 0.03)}, HEADLINE)
    assert "no detectable gain" in flat and "f1 +0.010" in flat
    gains = headroom_line("oracle", {**ranking, "f1": _d(0.05, 0.2)}, HEADLINE)
    assert "the most any reranker can gain, with this reader" in gains
    assert "on ranking" in headroom_line("oracle", ranking, HEADLINE)


def _demo_rows(n: int = 12) -> list[dict]:
    """Two gold paragraphs of four per question; the retriever ranks one gold first."""
    rows = []
    for i in range(n):
        cands = [candidate(f"{i}-g0", "t", "gold a", 4.0, True),
                 candidate(f"{i}-n0", "t", "other", 3.0, False),
                 candidate(f"{i}-n1", "t", "other", 2.0, False),
                 candidate(f"{i}-g1", "t", "gold b", 1.0, True)]
        for j, c in enumerate(cands):
            c["bad_signal"] = float(j in (1, 2))          # a "method" that ranks distractors first
        rows.append(make_row(f"q{i:02d}", f"question {i}?", ["x"], cands))
    return rows


def test_demo_comparison_files(tmp_path, capsys):
    from raglign.pipeline.demo import DemoConfig, write_comparison

    write_rows(_demo_rows(), tmp_path / "test")
    runs = [("base", {}), ("radio", {"rank_by": "bad_signal"}), ("oracle", {"reranker": "oracle"})]
    reports = [evaluate(EvalConfig(data=str(tmp_path / "test"), name=name, ks=[1, 5], k=2,
                                   output=str(tmp_path / "eval" / f"{name}.json"), **kw))
               for name, kw in runs]
    text = write_comparison(tmp_path, reports, DemoConfig(output=str(tmp_path), k=2))
    md = (tmp_path / "comparison.md").read_text()
    assert (tmp_path / "comparison.png").stat().st_size > 10_000
    printed, pointer = text.split("\nEvery metric, paired differences and the plot")
    assert "## Differences" not in printed and str(tmp_path) in pointer
    # the terminal: the headline columns only, each run's cells as in the file, every verdict
    lines = printed.splitlines()
    assert "| run | n | recall@5 | mrr |" in lines
    for row in (line for line in lines if line.startswith("| radio |")):
        assert row.split(" | ")[2] in md and "recall@1" not in printed
    verdicts = [line for line in lines if line.startswith("- **")]
    assert len(verdicts) == 2 and all(v in md for v in verdicts)
    # radio puts both distractors first on every question: Recall@1 0 vs 1/2, Recall@5 equal,
    # MRR 1/3 vs 1, so every paired interval is a single point
    assert "| radio | -0.500 [-0.500, -0.500] p=0.00 | +0.000 [+0.000, +0.000] p=1.00 |" in md
    assert "- **radio**: worse than the base" in md and "mrr -0.667 [-0.667, -0.667]" in md
    assert "- **oracle** (gold first, the ceiling): mrr +0.000" in md
    assert md.index("| base | 12 |") < md.index("| radio | 12 |") < md.index("| oracle | 12 |")


def _plotted_run(name: str, mrr: float, f1: float) -> dict:
    """An eval report with one ranking metric, two answer metrics and EM 0 on every question."""
    return {"name": name, "n": 12, "reranker": "minilm-l6", "generator": "smollm2-135m", "k": 5,
            "mrr": mrr, "mrr_ci": [mrr - 0.1, mrr + 0.1], "em": 0.0, "em_ci": [0.0, 0.0],
            "f1": f1, "f1_ci": [f1 - 0.05, f1 + 0.05]}


def test_comparison_figure_separates_ranking_and_answer_and_draws_zero_as_zero():
    import matplotlib.pyplot as plt

    from raglign.evaluate.report import comparison_figure

    runs = [_plotted_run("base", 0.4, 0.1), _plotted_run("radio", 0.6, 0.2)]
    runs[1]["recall@5"] = 0.9  # reported by one run only: its slot says n/a, no empty group
    fig = comparison_figure(runs)
    ranking, answer = fig.axes
    assert (ranking.get_title(), answer.get_title()) == ("ranking metrics", "answer metrics")
    assert [t.get_text() for t in ranking.get_xticklabels()] == ["recall@5", "mrr"]
    assert [t.get_text() for t in answer.get_xticklabels()] == ["em", "f1"]
    assert "ranking" in ranking.get_xlabel() and "answer" in answer.get_xlabel()
    assert "mean" in ranking.get_ylabel()
    assert fig._suptitle.get_text() == ("raglign runs: n = 12 questions; base reranker "
                                        "minilm-l6; generator smollm2-135m (top-5 documents)")
    # em is 0 for every run: one bar per run, each of height 0 (drawn, labelled 0.00)
    em_bars = answer.patches[0::2]
    assert [b.get_height() for b in em_bars] == [0.0, 0.0]
    assert [t.get_text() for t in answer.texts].count("0.00") == 2
    assert "n/a" in [t.get_text() for t in ranking.texts]
    plt.close(fig)


def test_comparison_figure_with_diffs_has_a_difference_row_per_panel():
    import matplotlib.pyplot as plt

    from raglign.evaluate.report import comparison_figure

    runs = [_plotted_run("base", 0.4, 0.1), _plotted_run("radio", 0.6, 0.2)]
    diff = {"diff": 0.2, "diff_ci": [0.1, 0.3], "p_value": 0.01, "n": 12}
    fig = comparison_figure(runs, diffs={"radio": {"mrr": diff, "f1": diff}})
    assert len(fig.axes) == 4
    assert all("run − base" in ax.get_ylabel() for ax in fig.axes[2:])
    plt.close(fig)
