"""How well each labelling signal finds the gold documents (G-Rerank's *mining* setting).

For every signal field present on the candidates, each row's candidates are ranked by it and
compared with the gold documents (``is_gold``): Recall@k, NDCG@k and MRR
(:mod:`raglign.metrics`), averaged over the rows that have at least one gold document
(:mod:`raglign.evaluate.aggregate`). Each signal ranks in the direction it declares, with
unlabelled candidates (``null``: LOOP below rank K, unparseable judge outputs) after the labelled
ones in retrieval order — :func:`raglign.signals.ranking.rank_candidates`, the same function
``raglign eval --rank-by`` and ``raglign mine`` rank with, so this table measures the ranking a
reranker would be evaluated or trained on. The retriever's own order is the ``retrieval``
baseline row.

Written as ``_signal_eval.json`` and ``_signal_eval.md`` next to the labelled output.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from raglign import storage
from raglign.data.io import read_rows
from raglign.evaluate.aggregate import aggregate, compare
from raglign.metrics import ranking_metrics
from raglign.signals.ranking import rank_candidates

RETRIEVAL = "retrieval"


def ranked_doc_ids(candidates: Sequence[Mapping[str, Any]], field: str) -> list[str]:
    """Candidate doc ids ranked by ``field`` (:func:`~raglign.signals.ranking.rank_candidates`),
    or in candidate order for the ``retrieval`` baseline."""
    if field == RETRIEVAL:
        return [c["doc_id"] for c in candidates]
    return [candidates[i]["doc_id"] for i in rank_candidates(candidates, field)]


def gold_rows(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The rows with at least one gold candidate: the only ones a ranking metric is defined on."""
    return [r for r in rows if any(c.get("is_gold") for c in r.get("candidates") or [])]


def per_row_metrics(rows: Sequence[Mapping[str, Any]], field: str,
                    ks: Sequence[int] = (1, 2, 5, 10)) -> list[dict[str, Any]]:
    """``[{"id", metric: value}]`` for each row of ``rows`` ranked by ``field`` (rows with gold),
    in row order: the unit a bootstrap resamples and a paired comparison pairs on."""
    out = []
    for r in gold_rows(rows):
        cands = r["candidates"]
        gold = [c["doc_id"] for c in cands if c.get("is_gold")]
        out.append({"id": r["id"], **ranking_metrics(ranked_doc_ids(cands, field), gold, ks)})
    return out


def signal_eval(rows: Sequence[Mapping[str, Any]], signals: Sequence[str],
                ks: Sequence[int] = (1, 2, 5, 10), ci: bool = True,
                n_boot: int = 1000) -> dict[str, Any]:
    """``{"rows_with_gold", "rows_without_gold", "ks", "signals": {name: {metric: mean,
    metric_ci: [low, high]}}}``; percentile-bootstrap 95% intervals over questions unless
    ``ci=False`` (on 100 questions a signal's MRR is only known to about ±0.05)."""
    with_gold = gold_rows(rows)
    table: dict[str, Any] = {}
    for field in [RETRIEVAL, *signals]:
        per_row = per_row_metrics(with_gold, field, ks)
        agg = aggregate(per_row, ci=ci, n_boot=n_boot) if per_row else {}
        table[field] = {k: v for k, v in agg.items() if k not in ("n", "skipped")}
    return {"rows_with_gold": len(with_gold), "rows_without_gold": len(rows) - len(with_gold),
            "ks": list(ks), "signals": table}


def paired_signal_eval(rows_a: Sequence[Mapping[str, Any]], rows_b: Sequence[Mapping[str, Any]],
                       field: str, ks: Sequence[int] = (1, 2, 5, 10),
                       n_boot: int = 1000) -> dict[str, dict[str, Any]]:
    """Metric by metric, ``field`` on ``rows_a`` minus ``field`` on ``rows_b`` (the same
    questions labelled two ways, e.g. ``context: parallel`` vs ``concat``), with a paired
    bootstrap CI and p-value; rows are paired by id, so their order may differ."""
    by_id = {r["id"]: r for r in rows_b}
    missing = [r["id"] for r in rows_a if r["id"] not in by_id]
    if missing or len(rows_a) != len(rows_b):
        raise ValueError(f"paired_signal_eval needs the same questions on both sides; "
                         f"{len(rows_a)} vs {len(rows_b)} rows, e.g. {missing[:3]} missing")
    a = per_row_metrics(rows_a, field, ks)
    b = per_row_metrics([by_id[r["id"]] for r in rows_a], field, ks)
    return compare(a, b, n_boot=n_boot)


def _cell(metrics: Mapping[str, Any], col: str) -> str:
    value, ci = metrics.get(col), metrics.get(f"{col}_ci")
    if value is None:
        return "-"
    return f"{value:.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def to_markdown(result: Mapping[str, Any]) -> str:
    ks = result["ks"]
    cols = [f"recall@{k}" for k in ks] + [f"ndcg@{k}" for k in ks] + ["mrr"]
    lines = [f"Gold-document retrieval by signal ({result['rows_with_gold']} rows with gold; "
             f"{result['rows_without_gold']} without, skipped; 95% bootstrap intervals)", "",
             "| signal | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, metrics in result["signals"].items():
        lines.append(f"| {name} | " + " | ".join(_cell(metrics, c) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def write_signal_eval(out_dir: str | os.PathLike, signals: Sequence[str] | None = None,
                      ks: Sequence[int] = (1, 2, 5, 10)) -> dict[str, Any]:
    """Evaluate a labelled dataset directory and write ``_signal_eval.{json,md}`` into it.
    ``signals=None`` evaluates every known signal field found on the candidates."""
    from raglign.signals import SIGNALS

    rows = read_rows(out_dir)
    if signals is None:
        present = {k for r in rows for c in r.get("candidates") or [] for k in c}
        signals = [s for s in SIGNALS if s in present]
    result = signal_eval(rows, list(signals), ks)
    for name, text in (("_signal_eval.json", json.dumps(result, indent=2) + "\n"),
                       ("_signal_eval.md", to_markdown(result))):
        storage.write_text(storage.join(out_dir, name), text)
    return result
