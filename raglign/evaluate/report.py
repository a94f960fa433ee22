"""Comparison reports over evaluation runs: a Markdown table and a bar chart with CIs.

Runs are the JSON files ``raglign eval`` writes; any metric present in some run gets a column, in
a fixed, readable order (ranking metrics, then reader metrics), with its 95% bootstrap interval.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from raglign.errors import DataError

COLUMNS = ["recall@1", "recall@5", "ndcg@5", "mrr", "indirect_recall@5", "em", "subem", "f1",
           "accuracy"]


def load_runs(paths: list[str | Path]) -> list[dict[str, Any]]:
    """The JSON reports of ``raglign eval``, each with its ``name`` (file stem if unnamed)."""
    runs = []
    for p in paths:
        p = Path(p)
        try:
            run = json.loads(p.read_text())
        except FileNotFoundError:
            raise DataError(str(p), None, None, "no such file") from None
        except json.JSONDecodeError as e:
            raise DataError(str(p), None, None, f"not valid JSON: {e}") from None
        if not isinstance(run, dict) or "n" not in run:
            raise DataError(str(p), None, "n", "not a raglign eval report")
        run.setdefault("name", p.stem)
        runs.append(run)
    return runs


def _columns(runs: list[dict]) -> list[str]:
    present = {k for r in runs for k, v in r.items() if isinstance(v, (int, float))}
    cols = [c for c in COLUMNS if c in present]
    extra = sorted(k for k in present if k.startswith("indirect_recall@")
                   and k not in cols)
    return cols + extra


def _cell(run: dict, col: str) -> str:
    v = run.get(col)
    if not isinstance(v, (int, float)):
        return "–"
    ci = run.get(f"{col}_ci")
    return f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{v:.3f}"


def markdown_table(runs: list[dict]) -> str:
    """One row per run, one column per metric (``value [95% CI]``)."""
    cols = _columns(runs)
    head = "| run | n | " + " | ".join(cols) + " |"
    sep = "|---|---:|" + "---:|" * len(cols)
    body = [f"| {r.get('name')} | {r.get('n')} | " + " | ".join(_cell(r, c) for c in cols) + " |"
            for r in runs]
    return "\n".join([head, sep, *body])


def bar_plot(runs: list[dict], path: str | Path, metrics: list[str] | None = None) -> Path:
    """Grouped bars per metric, one colour per run, with CI whiskers; saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    metrics = metrics or _columns(runs)
    width = 0.8 / max(len(runs), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(metrics)), 4))
    x = np.arange(len(metrics))
    for i, run in enumerate(runs):
        vals = [run.get(m) if isinstance(run.get(m), (int, float)) else np.nan for m in metrics]
        lo = [v - run[f"{m}_ci"][0] if run.get(f"{m}_ci") else 0 for m, v in zip(metrics, vals)]
        hi = [run[f"{m}_ci"][1] - v if run.get(f"{m}_ci") else 0 for m, v in zip(metrics, vals)]
        ax.bar(x + i * width, vals, width, yerr=[lo, hi], capsize=2, label=str(run.get("name")))
    ax.set_xticks(x + width * (len(runs) - 1) / 2, metrics, rotation=20)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("raglign runs (95% bootstrap CI)")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
