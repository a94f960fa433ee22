"""The mining comparison of the paper's Figure 5: which per-document signal finds the gold
documents, with bootstrap confidence intervals and paired differences.

Ranks like the labelling job's signal evaluation (:func:`raglign.evaluate.signals.ranked_doc_ids`:
each signal in the direction it declares in :mod:`raglign.signals.ranking`, ``loo_logprob``
lowest first, nulls last in retrieval order) but reports intervals: on 100 HotpotQA questions a
Recall@2 difference of a few points is within noise, and the table has to say so. Differences
are paired bootstraps over the same questions (:func:`raglign.evaluate.aggregate.compare`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from raglign import storage
from raglign.data.io import read_rows
from raglign.evaluate.aggregate import aggregate, compare
from raglign.evaluate.signals import RETRIEVAL, ranked_doc_ids
from raglign.metrics import ranking_metrics

REFERENCE = "gumbel_weight"
BASELINES = ("answer_logprob", "attention", "loo_logprob")
LABELS = {RETRIEVAL: "retrieval order", "gumbel_weight": "G-Rerank weights (Algorithm 2)",
          "answer_logprob": "lowest perplexity (log p(a|q,d_i))",
          "attention": "attention (ADist)", "loo_logprob": "leave-one-out (LOOP)"}


def per_row_metrics(rows: Sequence[Mapping[str, Any]], field: str,
                    ks: Sequence[int]) -> list[dict[str, Any]]:
    """Ranking metrics of ``field`` for every row with at least one gold document."""
    out = []
    for r in rows:
        cands = r.get("candidates") or []
        gold = [c["doc_id"] for c in cands if c.get("is_gold")]
        if gold:
            out.append({"id": r["id"], **ranking_metrics(ranked_doc_ids(cands, field), gold, ks)})
    return out


def mining_report(rows: Sequence[Mapping[str, Any]], signals: Sequence[str] | None = None,
                  ks: Sequence[int] = (2, 5), reference: str = REFERENCE, n_boot: int = 1000,
                  seed: int = 0) -> dict[str, Any]:
    """``{"rows_with_gold", "metrics", "signals": {name: {metric, metric_ci}}, "paired": {name:
    {metric: reference - name with CI and p}}}``; ``signals`` defaults to those present."""
    present = {k for r in rows for c in r.get("candidates") or [] for k in c}
    if signals is None:
        signals = [s for s in (reference, *BASELINES) if s in present]
    missing = [s for s in signals if s not in present]
    if missing:
        raise ValueError(f"signal field(s) {missing} are on no candidate; present: {sorted(present)}")
    metrics = [f"recall@{k}" for k in ks] + ["mrr"]
    per_row = {f: per_row_metrics(rows, f, ks) for f in [RETRIEVAL, *signals]}
    table = {}
    for f, values in per_row.items():
        agg = aggregate(values, metrics=metrics, n_boot=n_boot, seed=seed) if values else {}
        table[f] = {k: v for k, v in agg.items() if k in metrics or k.endswith("_ci")}
    paired = {}
    if reference in per_row:
        for f, values in per_row.items():
            if f != reference and values:
                paired[f] = compare(per_row[reference], values, metrics, n_boot, seed=seed)
    return {"rows_with_gold": len(per_row[RETRIEVAL]), "metrics": metrics, "reference": reference,
            "signals": table, "paired": paired}


def _cell(metrics: Mapping[str, Any], m: str) -> str:
    v, ci = metrics.get(m), metrics.get(f"{m}_ci")
    if v is None:
        return "-"
    return f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{v:.3f}"


def to_markdown(report: Mapping[str, Any]) -> str:
    metrics = report["metrics"]
    lines = [f"{report['rows_with_gold']} questions with gold documents; mean [95% bootstrap CI]",
             "", "| signal | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for name, values in report["signals"].items():
        lines.append(f"| {LABELS.get(name, name)} | "
                     + " | ".join(_cell(values, m) for m in metrics) + " |")
    if report["paired"]:
        ref = LABELS.get(report["reference"], report["reference"])
        lines += ["", f"Paired difference, {ref} minus each row (95% CI, two-sided p):", "",
                  "| vs | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
        for name, diff in report["paired"].items():
            cells = [f"{d['diff']:+.3f} [{d['diff_ci'][0]:+.3f}, {d['diff_ci'][1]:+.3f}] "
                     f"p={d['p_value']:.3f}" for d in (diff[m] for m in metrics)]
            lines.append(f"| {LABELS.get(name, name)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_mining_report(labelled_dir: str | os.PathLike, signals: Sequence[str] | None = None,
                        ks: Sequence[int] = (2, 5)) -> dict[str, Any]:
    """Read a labelled directory, write ``_grerank_mining.{json,md}`` into it, return the report."""
    report = mining_report(read_rows(labelled_dir), signals, ks)
    storage.write_text(storage.join(labelled_dir, "_grerank_mining.json"),
                       json.dumps(report, indent=2) + "\n")
    storage.write_text(storage.join(labelled_dir, "_grerank_mining.md"), to_markdown(report))
    return report
