"""What ``raglign tune`` shows and leaves behind: a line per finished trial, and in ``OUTPUT``
``results.csv`` (a row per trial), ``best.json`` + ``best_train.yaml`` (the best trial's
runnable recipe, metrics and checkpoint) and ``report.md`` with two figures: the metric against
each swept setting (RADIO's Figure 2 for α) and every trial's validation curve.

A trial's "best" is its best validation over all its steps, the step 0 starting model included:
that is what ``raglign train`` would export from it. When no trial beats the starting model,
best.json and the report say so: its checkpoint is then none, the starting model is the answer.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ray.tune import Callback

from raglign import storage
from raglign.config import dump_yaml
from raglign.evaluate.report import save_png


def _values(config: dict, keys) -> str:
    return " ".join(f"{k.split('.', 1)[1]}={_fmt(config.get(k))}" for k in keys)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# Where each sweep's trial lines go, by experiment path: set by the driver for every run, so
# that a resumed sweep, whose callbacks Tune restores from the killed run's pickled state,
# writes to this run's sink and not the old one.
SINKS: dict[str, Any] = {}


class TrialLines(Callback):
    """One line per finished trial on the console (the driver's), with its values and metric.

    Counts finished trials from Tune's own trial list, so a resumed sweep counts on from where
    the killed one stopped.
    """

    def __init__(self, cfg, total: int | None, experiment: str):
        self.cfg, self.metric, self.mode = cfg, cfg.score_metric, cfg.mode
        self.total, self.experiment = total, experiment

    def progress(self, line: str) -> None:
        SINKS.get(self.experiment, print)(line)

    def _line(self, trials, trial, outcome: str) -> None:
        done = sum(t.status in ("TERMINATED", "ERROR") for t in trials if t is not trial) + 1
        last = trial.last_result or {}
        value = last.get(self.metric)
        analysis = getattr(trial, "metric_analysis", {}).get(self.metric, {})
        best = analysis.get(self.mode)
        if outcome == "done" and "step" in last and \
                last["step"] < self.cfg.planned_steps(trial.config, last["total_steps"]):
            outcome = f"stopped early by the scheduler at step {last['step']}"
        shown = "no validation" if value is None else \
            f"{self.metric} {value:.4f} (best {best:.4f})" if best is not None else \
            f"{self.metric} {value:.4f}"
        total = f"/{self.total}" if self.total else ""
        wall = last.get("time_total_s")
        self.progress(f"[raglign tune] trial {done}{total} {trial.trial_id} "
                      f"{_values(trial.config, trial.config)}: {shown}, {outcome}"
                      + (f", {wall:.0f} s" if wall is not None else ""))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._line(trials, trial, "done")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._line(trials, trial, "FAILED (see ray.log)")


def trial_row(cfg, result) -> tuple[dict, list[tuple]]:
    """A trial's row of results.csv and its validation curve ``[(step, value)]``."""
    metric, mode, keys = cfg.score_metric, cfg.mode, list(cfg.param_space)
    last = result.metrics or {}
    frame = result.metrics_dataframe
    curve, best = [], None
    if frame is not None and metric in frame:
        validated = frame[frame[metric].notna()]
        curve = list(zip(validated["step"].astype(int), validated[metric].astype(float)))
        if len(validated):  # ties: the later step, the one Ray Train's checkpoint ranking kept
            sign = 1 if mode == "max" else -1
            best = max((row for _, row in validated.iterrows()),
                       key=lambda row: (sign * row[metric], row["step"]))
    steps, total = last.get("step"), last.get("total_steps")
    status = "error" if result.error else "finished" if steps is not None and total is not None \
        and steps >= cfg.planned_steps(result.config, total) else "stopped early"
    checkpoint = best.get("checkpoint_path") if best is not None else None
    if isinstance(checkpoint, str):  # Ray's path within the storage's filesystem, as a URI
        from raglign.pipeline.tune import ray_storage

        checkpoint = storage.to_uri(checkpoint, ray_storage(cfg))
    row = {"trial_id": last.get("trial_id") or Path(result.path).name,
           **{k: result.config.get(k) for k in keys},
           f"best_{metric}": float(best[metric]) if best is not None else None,
           "best_step": int(best["step"]) if best is not None else None,
           f"final_{metric}": curve[-1][1] if curve else None,
           f"base_{metric}": next((v for s, v in curve if s == 0), None),
           "steps": steps, "total_steps": total, "status": status,
           "wall_s": round(last["time_total_s"], 1) if "time_total_s" in last else None,
           "checkpoint": checkpoint if isinstance(checkpoint, str) else None}
    return row, curve


def write_outputs(cfg, grid, out: str | Path) -> dict[str, Any]:
    """results.csv, best.json, best_train.yaml and report.md (with its figures) for a sweep,
    under ``out``: a directory or a storage URI."""
    import pandas as pd

    from raglign.pipeline.tune import best_recipe

    metric, mode, keys = cfg.score_metric, cfg.mode, list(cfg.param_space)
    rows, curves = [], {}
    for result in grid:
        row, curve = trial_row(cfg, result)
        rows.append(row)
        curves[row["trial_id"]] = (curve, row)
    best_col = f"best_{metric}"
    ranked = sorted((r for r in rows if r[best_col] is not None),
                    key=lambda r: r[best_col], reverse=mode == "max")
    frame = pd.DataFrame(rows, columns=["trial_id", *keys, best_col, "best_step",
                                        f"final_{metric}", f"base_{metric}", "steps",
                                        "total_steps", "status", "wall_s", "checkpoint"])
    out = str(out)
    storage.write_text(storage.join(out, "results.csv"), frame.to_csv(index=False))
    summary: dict[str, Any] = {"trials": len(rows), "metric": metric, "mode": mode,
                               "errors": sum(r["status"] == "error" for r in rows),
                               "stopped_early": sum(r["status"] == "stopped early" for r in rows),
                               "best_trial": None, "best_value": float("nan")}
    if ranked:
        top = ranked[0]
        values = {k: top[k] for k in keys}
        recipe = best_recipe(cfg, values)
        base = top[f"base_{metric}"]
        beats = base is None or (top[best_col] > base if mode == "max" else top[best_col] < base)
        best = {"trial_id": top["trial_id"], "metric": metric, "mode": mode,
                "value": top[best_col], "step": top["best_step"] if beats else 0,
                "base_value": base, "beats_starting_model": beats,
                "checkpoint": top["checkpoint"] if beats else None, "values": values,
                "recipe": recipe.model_dump(mode="json"),
                "run": f"raglign train --config {storage.join(out, 'best_train.yaml')}"}
        if cfg.mine is not None:
            best["mined_data"] = recipe.data
        storage.write_text(storage.join(out, "best.json"), json.dumps(best, indent=2) + "\n")
        storage.write_text(storage.join(out, "best_train.yaml"),
                           f"# The best trial ({top['trial_id']}) of the sweep in {out}: "
                           f"{metric} {top[best_col]:.4f} at step {top['best_step']}.\n"
                           + dump_yaml(recipe))
        summary.update(best_trial=top["trial_id"], best_value=top[best_col],
                       beats_starting_model=beats)
    if ranked:  # trials that never validated have nothing to draw
        _plot_vs_params(cfg, ranked, storage.join(out, "metric_vs_params.png"))
        _plot_curves(metric, curves, keys, storage.join(out, "curves.png"))
    storage.write_text(storage.join(out, "report.md"), _report(cfg, frame, ranked, summary))
    return summary


def _report(cfg, frame, ranked, summary) -> str:
    metric, keys = summary["metric"], list(cfg.param_space)
    lines = [f"# raglign tune: {cfg.name}", "",
             f"{summary['trials']} trials ({summary['stopped_early']} stopped early, "
             f"{summary['errors']} failed); {cfg.search.algorithm} search, "
             f"{cfg.scheduler.name} scheduler; metric `{metric}` ({cfg.mode}) on the base "
             "recipe's validation questions. Swept: "
             + ", ".join(f"`{k}` ({s.kind} {list(getattr(s, s.kind))})"
                         for k, s in cfg.param_space.items()) + ".", ""]
    if ranked:
        top = ranked[0]
        if summary["beats_starting_model"]:
            lines.append(f"**Best**: trial `{top['trial_id']}`, {metric} {top[f'best_{metric}']:.4f}"
                         f" at step {top['best_step']} (starting model: "
                         f"{_fmt(top[f'base_{metric}'])}), with "
                         + ", ".join(f"`{k}` = {_fmt(top[k])}" for k in keys)
                         + ". Re-train it: `raglign train --config best_train.yaml`.")
        else:
            lines.append(f"**No trial beat the starting model** on validation ({metric} "
                         f"{_fmt(top[f'base_{metric}'])} at step 0): every setting swept made "
                         "the reranker worse on held-out questions. Keep the starting model.")
    else:
        lines.append(f"**No trial reported {metric}**: each failed before its first validation; "
                     "its error is in its trial directory under ray/tune and in ray.log.")
    lines += ["", "## Trials, best first", "", _markdown(frame.sort_values(
        f"best_{metric}", ascending=cfg.mode == "min", na_position="last")
        .drop(columns=["checkpoint"])), ""]
    if ranked:
        lines += [
            f"## {metric} against each swept setting", "",
            "Per trial: the best validation (filled; what `raglign train` would export) and the "
            "last step's (hollow); the dashed line is the starting model.", "",
            "![metric against settings](metric_vs_params.png)", "",
            "## Validation curves", "", "![validation curves](curves.png)", ""]
    return "\n".join(lines)


def _markdown(frame) -> str:
    cols = list(frame.columns)
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in frame.iterrows():
        out.append("| " + " | ".join("" if _missing(v) else _fmt(v) for v in row) + " |")
    return "\n".join(out)


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _plot_vs_params(cfg, ranked: list[dict], path: str) -> None:
    """One panel per swept setting that took more than one value: each trial's best validation
    (filled; the starting model included, as the export would be) and its final one (hollow),
    the starting model dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = cfg.score_metric
    keys = [k for k in cfg.param_space if len({str(r[k]) for r in ranked}) > 1] or \
        list(cfg.param_space)[:1]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.6 * len(keys) + 0.6, 3.8), squeeze=False)
    bases = sorted(r[f"base_{metric}"] for r in ranked if r[f"base_{metric}"] is not None)
    for ax, key in zip(axes[0], keys):
        xs = [r[key] for r in ranked]
        numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
        if not numeric:  # categorical: one position per value
            labels = list(dict.fromkeys(str(x) for x in xs))
            ax.set_xticks(range(len(labels)), labels)
            xs = [labels.index(str(x)) for x in xs]
        for column, style in ((f"best_{metric}", {"color": "tab:blue", "label": "best step"}),
                              (f"final_{metric}", {"facecolors": "none", "color": "tab:orange",
                                                   "label": "last step"})):
            ys = [r[column] for r in ranked]
            ax.scatter(xs, ys, zorder=3, **style)
            if numeric and cfg.param_space[key].kind == "grid":
                means = {x: sum(y for xx, y in zip(xs, ys) if xx == x) / xs.count(x)
                         for x in sorted(set(xs))}
                ax.plot(list(means), list(means.values()), color=style["color"], alpha=0.5)
        if cfg.param_space[key].kind == "loguniform" or (
                numeric and min(xs) > 0 and max(xs) >= 100 * min(xs)):
            ax.set_xscale("log")
        if bases:
            ax.axhline(bases[len(bases) // 2], color="tab:gray", linestyle="--",
                       label="starting model")
        ax.set_xlabel(key)
        ax.set_ylabel(f"validation {metric.removeprefix('val_')}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{storage.name(cfg.output)}: {len(ranked)} trials", fontsize=10)
    fig.tight_layout()
    save_png(fig, path)


def _plot_curves(metric: str, curves: dict, keys: list[str], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 4.6))
    for trial_id, (curve, row) in curves.items():
        if not curve:
            continue
        steps, values = zip(*curve)
        ax.plot(steps, values, marker="o", markersize=3,
                linestyle="--" if row["status"] != "finished" else "-",
                label=f"{trial_id[-5:]} {_values(row, keys)}")
    ax.set_xlabel("optimizer step (0 = starting model)")
    ax.set_ylabel(f"validation {metric.removeprefix('val_')}")
    ax.set_title("every trial's validation curve (dashed: stopped early or failed)", fontsize=10)
    ax.grid(alpha=0.3)
    if len(curves) <= 16:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    save_png(fig, path)
