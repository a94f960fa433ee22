"""The Gumbel-noise ablation (the paper's §4.4, Figure 4): does the mask still tell documents
apart when the Gumbel noise is removed?

For each query, Algorithm 2 runs twice from the *same* initial weights and the same seed: once
with the noise (the method) and once without (the mask is then the plain softmax(κw/τ), the
same for all k draws). The statistic is the paper's: the largest normalised weight max_i
softmax(w)_i after every step, averaged over queries; 1/n means no document is preferred. The
ablation starts from random weights (``init: normal``) by default, because Algorithm 2's zero
start is already uniform and could not show a fall toward it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from raglign.gumbel.options import SamplingWeightOptions

ARMS = {"with_noise": True, "without_noise": False}


def run_ablation(engine, items: Sequence[Any], options: SamplingWeightOptions,
                 progress=print) -> dict[str, Any]:
    """``items`` are labelling :class:`~raglign.signals.items.Item` s (question, documents,
    answer). Returns the per-step mean max weight of both arms, per-query traces, losses, and
    the uniform level 1/n."""
    import torch

    from raglign.gumbel.weights import learn_weights
    from raglign.signals.base import row_seed

    arms: dict[str, dict[str, Any]] = {a: {"per_query": [], "loss": []} for a in ARMS}
    sizes = []
    for i, item in enumerate(items):
        cache = engine.prepare(item.question, item.docs,
                               list(item.choices) if item.choices else None)
        sizes.append(cache.num_docs)
        seed = row_seed(options.seed, item.row["id"])
        for arm, noise in ARMS.items():
            run = learn_weights(engine, cache, item.answer,
                                options.model_copy(update={"noise": noise}),
                                torch.Generator().manual_seed(seed))
            arms[arm]["per_query"].append(run.max_weight)
            arms[arm]["loss"].append(run.loss)
        progress(f"[ablation] {i + 1}/{len(items)} {item.row['id']}: max weight "
                 f"{arms['with_noise']['per_query'][-1][-1]:.3f} with noise, "
                 f"{arms['without_noise']['per_query'][-1][-1]:.3f} without "
                 f"(uniform {1 / cache.num_docs:.3f})")
    for arm in arms.values():
        arm["mean"] = _mean_curve(arm["per_query"])
        arm["mean_loss"] = _mean_curve(arm["loss"])
    return {"queries": [it.row["id"] for it in items], "num_candidates": sizes,
            "uniform": sum(1 / n for n in sizes) / len(sizes), "options": options.model_dump(),
            **arms}


def _mean_curve(curves: Sequence[Sequence[float]]) -> list[float]:
    return [sum(c[t] for c in curves) / len(curves) for t in range(len(curves[0]))]


def plot_ablation(result: Mapping[str, Any], path: str | os.PathLike, title: str = "") -> Path:
    """A small PNG of both arms' mean max weight per step, with the 1/n line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    for arm, style in (("with_noise", "-"), ("without_noise", "--")):
        ax.plot(result[arm]["mean"], style, label=arm.replace("_", " "))
    ax.axhline(result["uniform"], color="grey", lw=0.8, ls=":", label="uniform 1/n")
    ax.set_xlabel("step")
    ax.set_ylabel("max softmax(w)")
    ax.set_title(title or f"Gumbel ablation ({len(result['queries'])} queries)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_ablation(result: Mapping[str, Any], out_dir: str | os.PathLike) -> dict[str, str]:
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    (root / "ablation.json").write_text(json.dumps(result, indent=2) + "\n")
    png = plot_ablation(result, root / "ablation.png")
    return {"json": str(root / "ablation.json"), "png": str(png)}
