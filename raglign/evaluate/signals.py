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
from pathlib import Path
from typing import Any

from raglign.data.io import read_rows
from raglign.evaluate.aggregate import aggregate
from raglign.metrics import ranking_metrics
from raglign.signals.ranking import rank_candidates

RETRIEVAL = "retrieval"


def ranked_doc_ids(candidates: Sequence[Mapping[str, Any]], field: str) -> list[str]:
    """Candidate doc ids ranked by ``field`` (:func:`~raglign.signals.ranking.rank_candidates`),
    or in candidate order for the ``retrieval`` baseline."""
    if field == RETRIEVAL:
        return [c["doc_id"] for c in candidates]
    return [candidates[i]["doc_id"] for i in rank_candidates(candidates, field)]


def signal_eval(rows: Sequence[Mapping[str, Any]], signals: Sequence[str],
                ks: Sequence[int] = (1, 2, 5, 10)) -> dict[str, Any]:
    """``{"rows_with_gold", "rows_without_gold", "ks", "signals": {name: {metric: mean}}}``."""
    with_gold = [r for r in rows if any(c.get("is_gold") for c in r.get("candidates") or [])]
    table: dict[str, Any] = {}
    for field in [RETRIEVAL, *signals]:
        per_row = []
        for r in with_gold:
            cands = r["candidates"]
            gold = [c["doc_id"] for c in cands if c.get("is_gold")]
            per_row.append(ranking_metrics(ranked_doc_ids(cands, field), gold, ks))
        agg = aggregate(per_row, ci=False) if per_row else {}
        table[field] = {k: v for k, v in agg.items() if k not in ("n", "skipped")}
    return {"rows_with_gold": len(with_gold), "rows_without_gold": len(rows) - len(with_gold),
            "ks": list(ks), "signals": table}


def to_markdown(result: Mapping[str, Any]) -> str:
    ks = result["ks"]
    cols = [f"recall@{k}" for k in ks] + [f"ndcg@{k}" for k in ks] + ["mrr"]
    lines = [f"Gold-document retrieval by signal ({result['rows_with_gold']} rows with gold; "
             f"{result['rows_without_gold']} without, skipped)", "",
             "| signal | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, metrics in result["signals"].items():
        cells = [("-" if metrics.get(c) is None else f"{metrics[c]:.3f}") for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
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
    root = Path(out_dir)
    for name, text in (("_signal_eval.json", json.dumps(result, indent=2) + "\n"),
                       ("_signal_eval.md", to_markdown(result))):
        tmp = root / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, root / name)
    return result
