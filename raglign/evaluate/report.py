"""Comparison reports over evaluation runs: tables, a bar chart with CIs, and verdicts.

Runs are the JSON files ``raglign eval`` writes; any metric present in some run gets a column, in
a fixed, readable order (ranking metrics, then reader metrics), with its 95% bootstrap interval.
Against a base run, each run's *paired* difference (same questions, paired bootstrap over the
per-row metrics ``raglign eval`` writes beside its JSON) says whether a gap is an effect or
noise, and :func:`verdict` turns the headline metrics' intervals into better / on par / worse
(or mixed).
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from raglign import storage
from raglign.data.io import read_file
from raglign.errors import DataError

COLUMNS = ["recall@1", "recall@5", "ndcg@5", "mrr", "indirect_recall@5", "em", "subem", "f1",
           "accuracy"]
READER_METRICS = ["em", "subem", "f1", "accuracy"]
# The metrics a verdict is judged on: where the first gold document lands, and how much of the
# gold set reaches the reader's top 5.
HEADLINE = ("mrr", "recall@5")
# Columns of an eval run's .rows.parquet that describe the ranking or answer, not a metric.
DETAIL_COLUMNS = ("ranked_doc_ids", "prediction")
# verdict -> (what it says, why)
VERDICTS = {
    "better": ("better than the base", "an interval lies above 0 and none below"),
    "worse": ("worse than the base", "an interval lies below 0 and none above"),
    "on par": ("on par with the base", "every interval includes 0: any difference is too small "
               "to tell from noise at this n"),
    "mixed": ("mixed", "one interval lies above 0 and another below"),
}


def load_runs(paths: list[str | Path]) -> list[dict[str, Any]]:
    """The JSON reports of ``raglign eval``, each with its ``name`` (file stem if unnamed)."""
    runs = []
    for p in paths:
        try:  # a path or a storage URI (a report `raglign eval` wrote to s3://)
            run = json.loads(storage.read_text(p))
        except json.JSONDecodeError as e:
            raise DataError(str(p), None, None, f"not valid JSON: {e}") from None
        if not isinstance(run, dict) or "n" not in run:
            raise DataError(str(p), None, "n", "not a raglign eval report")
        run.setdefault("name", os.path.splitext(storage.name(p))[0])
        runs.append(run)
    return runs


def metric_columns(runs: Sequence[Mapping]) -> list[str]:
    """The metrics some run reports as a number, in the table's fixed order."""
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


def markdown_table(runs: list[dict], columns: Sequence[str] | None = None) -> str:
    """One row per run, one column per metric (``value [95% CI]``): every metric the runs
    report, or those of ``columns`` they report."""
    cols = metric_columns(runs)
    cols = cols if columns is None else [c for c in columns if c in cols]
    head = "| run | n | " + " | ".join(cols) + " |"
    sep = "|---|---:|" + "---:|" * len(cols)
    body = [f"| {r.get('name')} | {r.get('n')} | " + " | ".join(_cell(r, c) for c in cols) + " |"
            for r in runs]
    return "\n".join([head, sep, *body])


def per_row_metrics(report_path: str | Path) -> list[dict[str, Any]]:
    """The per-row metrics of one ``raglign eval`` run (the ``.rows.parquet`` beside its JSON),
    sorted by row id so that two runs over the same questions pair up row by row."""
    path = storage.with_suffix(report_path, ".rows.parquet")
    if not storage.is_file(path):
        raise DataError(path, None, None, "no such file; raglign eval writes the per-row "
                        "metrics beside its report and paired differences need them")
    rows = read_file(path).to_pylist()
    return sorted(({k: v for k, v in r.items() if k not in DETAIL_COLUMNS} for r in rows),
                  key=lambda r: r["id"])


def paired_differences(runs: Sequence[Mapping], per_row: Sequence[Sequence[Mapping]],
                       metrics: Sequence[str] | None = None, n_boot: int = 1000,
                       seed: int = 0) -> dict[str, dict[str, dict[str, Any]]]:
    """``{run name: {metric: paired_bootstrap result}}``: every run after the first minus the
    first (the base), on each metric both report, over the same questions.

    Pairing cancels how hard each question is, so a difference's interval is far tighter than
    the two runs' own intervals side by side, which overlap even when one run is better on
    almost every question. ``per_row[i]`` holds the per-row metrics of ``runs[i]``.
    """
    from raglign.evaluate.aggregate import compare

    if len(runs) != len(per_row):
        raise ValueError(f"{len(runs)} runs but {len(per_row)} per-row metric lists")
    base, base_rows = runs[0], per_row[0]
    out = {}
    for run, rows in zip(runs[1:], per_row[1:]):
        both = set(metric_columns([base])) & set(metric_columns([run]))
        shared = [m for m in metrics or metric_columns([base]) if m in both]
        out[str(run.get("name"))] = compare(rows, base_rows, shared, n_boot=n_boot, seed=seed)
    return out


def _diff_text(d: Mapping) -> str:
    lo, hi = d["diff_ci"]
    return f"{d['diff']:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def diff_table(diffs: Mapping[str, Mapping[str, Mapping]], metrics: Sequence[str]) -> str:
    """One row per run, one column per metric: ``difference [95% paired CI] p=…`` vs the base."""
    head = "| run − base | " + " | ".join(metrics) + " |"
    sep = "|---|" + "---:|" * len(metrics)
    body = [f"| {name} | " + " | ".join(
        f"{_diff_text(d[m])} p={d[m]['p_value']:.2f}" if m in d else "–" for m in metrics) + " |"
        for name, d in diffs.items()]
    return "\n".join([head, sep, *body])


def _ci_side(d: Mapping) -> int:
    """+1 when a paired interval lies above 0, -1 below it, 0 when it includes 0."""
    lo, hi = d["diff_ci"]
    return 1 if lo > 0 else -1 if hi < 0 else 0


def verdict(diffs: Mapping[str, Mapping], headline: Sequence[str]) -> str:
    """``better``, ``worse``, ``on par`` or ``mixed`` against the base, from the paired 95%
    intervals of the ``headline`` metrics.

    A metric only speaks when its interval excludes 0: a point estimate inside the noise says
    nothing, whatever its sign, so "on par" means "no difference detectable at this n", not
    "equal".
    """
    sides = {_ci_side(diffs[m]) for m in headline if m in diffs}
    if not sides:
        raise ValueError(f"none of the headline metrics {list(headline)} was compared")
    sides.discard(0)
    if not sides:
        return "on par"
    if len(sides) == 2:
        return "mixed"
    return "better" if 1 in sides else "worse"


def _shown(diffs: Mapping[str, Mapping], metrics: Sequence[str]) -> str:
    return ", ".join(f"{m} {_diff_text(diffs[m])}" for m in metrics if m in diffs)


def verdict_line(name: str, diffs: Mapping[str, Mapping], headline: Sequence[str]) -> str:
    """One method's verdict in plain words, with the differences and the n it rests on."""
    says, why = VERDICTS[verdict(diffs, headline)]
    n = next(diffs[m]["n"] for m in headline if m in diffs)
    return (f"**{name}**: {says}: {_shown(diffs, headline)} (paired 95% CIs, n = {n} "
            f"questions); {why}.")


def headroom_line(name: str, diffs: Mapping[str, Mapping], headline: Sequence[str]) -> str:
    """The oracle's differences in words: the most any reranker can gain over the base.

    On the reader's metrics this is the test a reader-side comparison needs first: a reader that
    gains nothing detectable from perfect ranking cannot show any reranker's gain.
    """
    text = f"**{name}** (gold first, the ceiling): {_shown(diffs, headline)}"
    reader = [m for m in READER_METRICS if m in diffs]
    if not reader:
        return text + ": the most any reranker can gain on ranking."
    text += f"; reader {_shown(diffs, reader)}"
    if any(_ci_side(diffs[m]) > 0 for m in reader):
        return text + ": the most any reranker can gain, with this reader."
    return text + (": even perfect ranking gives this reader no detectable gain, so no reranker "
                   "can show one with it at this n.")


def _whiskers(values: Sequence[float], cis: Sequence[Sequence[float] | None]) -> list[list]:
    """Error-bar lengths below and above each value: 0 without an interval, and never negative
    (a percentile interval can miss its point estimate by a rounding error)."""
    low = [max(0.0, v - ci[0]) if ci else 0.0 for v, ci in zip(values, cis)]
    high = [max(0.0, ci[1] - v) if ci else 0.0 for v, ci in zip(values, cis)]
    return [low, high]


def _number(value: Any) -> float:
    """A metric value as a float, NaN where a run does not report it (None, absent, NaN)."""
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return math.nan


# (panel, x-axis label): the reranker's own result and what the generator makes of it are
# different quantities, so they never share a panel.
PANELS = (("ranking", "ranking metric: where the gold paragraphs land"),
          ("answer", "answer metric: the generator's answer vs the gold answer"))


def plot_panels(runs: Sequence[Mapping], metrics: Sequence[str]) -> list[tuple[str, list[str]]]:
    """``[(panel, metrics)]``: ranking metrics, then answer (:data:`READER_METRICS`) metrics,
    each only with the metrics some run reports a number for, and a panel only when it has one:
    a group of bars that no run has is not drawn as an empty slot that reads like a bug."""
    shown = [m for m in metrics if any(math.isfinite(_number(r.get(m))) for r in runs)]
    groups = {"ranking": [m for m in shown if m not in READER_METRICS],
              "answer": [m for m in shown if m in READER_METRICS]}
    return [(panel, groups[panel]) for panel, _ in PANELS if groups[panel]]


def _distinct(runs: Sequence[Mapping], key: str) -> list[str]:
    return list(dict.fromkeys(str(r[key]) for r in runs if r.get(key) is not None))


def plot_title(runs: Sequence[Mapping]) -> str:
    """What the figure is about, from the runs themselves: the number of questions, the base
    run's reranker (the one every other run is compared with) and the generator."""
    ns = sorted({r.get("n") for r in runs if isinstance(r.get("n"), int)})
    parts = [f"n = {ns[0]} questions" if len(ns) == 1
             else f"n = {ns[0]}–{ns[-1]} questions" if ns else "n unknown"]
    base = runs[0] if runs else {}
    if base.get("rank_by"):
        parts.append(f"base ranked by signal {base['rank_by']}")
    elif base.get("reranker") == "none":
        parts.append("base in retrieval order")
    elif base.get("reranker"):
        parts.append(f"base reranker {base['reranker']}")
    generators = _distinct(runs, "generator")
    if generators:
        k = _distinct(runs, "k")
        parts.append(f"generator {', '.join(generators)}" + (f" (top-{k[0]} documents)"
                                                             if len(k) == 1 else ""))
    return "raglign runs: " + "; ".join(parts)


def _label_bars(ax, bars, values: Sequence[float]) -> None:
    """The value above each bar, so a 0 reads as 0, and ``n/a`` in the slot of a run that does
    not report the metric (matplotlib leaves a NaN bar's label out)."""
    ax.bar_label(bars, [f"{v:.2f}" if math.isfinite(v) else "" for v in values], fontsize=7,
                 padding=2)
    for bar, v in zip(bars, values):
        if not math.isfinite(v):
            ax.text(bar.get_x() + bar.get_width() / 2, 0.01, "n/a", ha="center", va="bottom",
                    fontsize=7)


def _value_bars(ax, runs: Sequence[Mapping], metrics: Sequence[str], x, width: float) -> None:
    """One bar per run and metric with its 95% bootstrap whisker; a zero-height bar keeps its
    edge, a flat line in the run's colour, so a metric that is 0 is visibly there."""
    for i, run in enumerate(runs):
        vals = [_number(run.get(m)) for m in metrics]
        cis = [run.get(f"{m}_ci") for m in metrics]
        bars = ax.bar(x + i * width, vals, width, yerr=_whiskers(vals, cis), capsize=2,
                      color=f"C{i % 10}", edgecolor=f"C{i % 10}", linewidth=1.5,
                      label=str(run.get("name")))
        _label_bars(ax, bars, vals)
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("mean over questions (95% bootstrap CI)")


def _diff_bars(ax, runs: Sequence[Mapping], diffs: Mapping[str, Mapping[str, Mapping]],
               metrics: Sequence[str], x, width: float) -> None:
    """Each run's paired difference to the base in the run's own slot and colour, so the two
    rows read together; a bar whose whisker crosses the zero line is not an effect. No value
    labels: the numbers are in the table beside the figure, and near 0 they would overlap."""
    for i, run in enumerate(runs):
        d = diffs.get(str(run.get("name")))
        if not d:
            continue
        vals = [d[m]["diff"] if m in d else math.nan for m in metrics]
        cis = [d[m]["diff_ci"] if m in d else None for m in metrics]
        ax.bar(x + i * width, vals, width, yerr=_whiskers(vals, cis), capsize=2,
               color=f"C{i % 10}", edgecolor=f"C{i % 10}", linewidth=1.5)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylabel("run − base, same questions\n(paired 95% bootstrap CI)")


def comparison_figure(runs: Sequence[Mapping], metrics: Sequence[str] | None = None,
                      diffs: Mapping[str, Mapping[str, Mapping]] | None = None):
    """Grouped bars per metric, one colour per run, with CI whiskers and the value on each bar;
    ranking metrics and answer metrics in separate panels (:func:`plot_panels`), and with
    ``diffs`` (:func:`paired_differences`) a second row of each run minus the base. The title
    says n, the base reranker and the generator (:func:`plot_title`). A matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    panels = plot_panels(runs, metrics or metric_columns(runs))
    if not panels:
        raise ValueError("no run reports any metric to plot")
    width = 0.8 / max(len(runs), 1)
    rows = 2 if diffs else 1
    sizes = [len(m) for _, m in panels]
    fig, axes = plt.subplots(rows, len(panels), squeeze=False, sharex="col",
                             figsize=(max(7.0, 1.5 * sum(sizes) + 2.5), 3.8 * rows + 0.9),
                             gridspec_kw={"width_ratios": sizes})
    labels = dict(PANELS)
    for col, (panel, names) in enumerate(panels):
        x = np.arange(len(names))
        _value_bars(axes[0, col], runs, names, x, width)
        axes[0, col].set_title(f"{panel} metrics")
        if diffs:
            _diff_bars(axes[1, col], runs, diffs, names, x, width)
        centres = x + width * (len(runs) - 1) / 2
        bottom = axes[-1, col]
        bottom.set_xticks(centres, names)
        bottom.set_xlim(centres[0] - 0.5, centres[-1] + 0.5)  # a run's NaN slot included
        bottom.set_xlabel(labels[panel])
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, names, loc="upper center", ncol=min(len(runs), 6), fontsize=9,
               bbox_to_anchor=(0.5, 1 - 0.4 / fig.get_figheight()), frameon=False)
    fig.suptitle(plot_title(runs), fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.55 / fig.get_figheight()))
    return fig


def bar_plot(runs: list[dict], path: str | Path, metrics: list[str] | None = None,
             diffs: Mapping[str, Mapping[str, Mapping]] | None = None) -> str:
    """:func:`comparison_figure` saved as a PNG at ``path`` (a file or a storage URI);
    returns ``path``."""
    return save_png(comparison_figure(runs, metrics, diffs), path)


def save_png(fig, path: str | Path) -> str:
    """``fig`` as a PNG at ``path`` (a file or a storage URI: rendered in memory, written in one
    piece), then closed; returns ``path``."""
    import matplotlib.pyplot as plt

    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120)
    plt.close(fig)
    return storage.write_bytes(path, png.getvalue())
