"""``loss_curve.png`` of a ``raglign train`` run: training loss, validation metrics (when the run
has them), an objective's own window means (RRPO: rewards, KLs, clip and idle fractions) and
learning rate over the optimizer steps, with the exported step marked."""

from __future__ import annotations

from pathlib import Path

# Legends beside the panels: inside, they hide the points a reader is looking for.
_LEGEND = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "fontsize": 8, "frameon": False}


# RRPO's window means (raglign.training.losses.rrpo), a panel per scale: the panel's label, its
# y scale and its (metric, legend) series. A panel is drawn when the run reports any of its
# metrics. The KL panel is symlog: the KL to the reference grows to ~1e-2 while the approximate
# KL to the sampling policy stays near 1e-4, and both start at 0.
RRPO_PANELS = [
    ("reward", {"value": "linear"}, [("rrpo_reward", "sampled episode's\nfinal reward"),
                                     ("rrpo_ref_reward", "reference's greedy\ntop-k reward")]),
    ("KL", {"value": "symlog", "linthresh": 1e-6},
     [("rrpo_kl", "KL(policy || reference)"),
      ("rrpo_approx_kl", "approx. KL to the\nsampling policy (k3)")]),
    ("fraction", {"value": "linear"}, [("rrpo_clip_fraction", "clip fraction"),
                                       ("rrpo_worker_idle", "Train worker idle"),
                                       ("rrpo_actor_idle", "reward actors idle")]),
]


def objective_panels(trained: list[dict]) -> list[tuple[str, dict, list[tuple[str, str]]]]:
    """The :data:`RRPO_PANELS` whose metrics the run reported, with those metrics only."""
    out = []
    for label, scale, series in RRPO_PANELS:
        present = [(m, legend) for m, legend in series if any(m in h for h in trained)]
        if present:
            out.append((label, scale, present))
    return out


def plot_loss_curve(history: list[dict], path: Path, title: str, attribute: str | None = None,
                    exported_step: int | None = None) -> None:
    """Training loss, validation metrics (when the run has them), the objective's window means
    (:func:`objective_panels`) and learning rate, one panel per scale over a shared step axis:
    they have unrelated scales, and one axis per quantity with its own legend is what lets a
    reader tell them apart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trained = [h for h in history if "loss" in h]
    validated = [h for h in history if attribute and attribute in h]
    extra = objective_panels(trained)
    ratios = [3] + [3] * bool(validated) + [2.2] * len(extra) + [1.6]
    fig, axes = plt.subplots(len(ratios), 1, figsize=(9.5, 2.4 * len(ratios) + 0.6),
                             sharex=True, height_ratios=ratios)
    marker = "o" if len(trained) <= 60 else None
    steps = [h["step"] for h in trained]
    loss_ax, lr_ax = axes[0], axes[-1]
    for ax, (label, scale, series) in zip(axes[1 + bool(validated):-1], extra):
        for metric, legend in series:
            points = [(h["step"], h[metric]) for h in trained if metric in h]
            ax.plot(*zip(*points), marker=marker, markersize=3, label=legend)
        ax.set_yscale(**scale)
        ax.set_ylabel(label)
        ax.legend(**_LEGEND)
    loss_ax.plot(steps, [h["loss"] for h in trained], color="tab:blue", marker=marker,
                 markersize=3, label="training loss\n(mean since the\nprevious point)")
    loss_ax.set_ylabel("loss")
    loss_ax.legend(**_LEGEND)
    if validated:
        _plot_validation(axes[1], validated, attribute, exported_step)
    lr_ax.plot(steps, [h["lr"] for h in trained], color="tab:gray", label="learning rate")
    lr_ax.set_ylabel("learning rate")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    lr_ax.legend(**_LEGEND)
    lr_ax.set_xlabel("step (global batch)")
    for ax in axes:
        ax.grid(alpha=0.3)
    loss_ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_validation(ax, validated: list[dict], attribute: str, exported_step: int | None) -> None:
    """Validation Recall@5, NDCG@5, MRR and the selecting metric; the exported step marked."""
    shown = list(dict.fromkeys([attribute, "val_recall@5", "val_ndcg@5", "val_mrr"]))
    steps = [h["step"] for h in validated]
    for name in shown:
        if all(name in h for h in validated):
            ax.plot(steps, [h[name] for h in validated], marker="o", markersize=3,
                    linewidth=2.2 if name == attribute else 1.2,
                    label=name.removeprefix("val_") + (" (selects the model)" if name == attribute
                                                       else ""))
    if exported_step is not None:
        ax.axvline(exported_step, color="tab:red", linestyle="--", linewidth=1,
                   label=f"exported: step {exported_step}"
                   + (" (the starting model)" if exported_step == 0 else ""))
    ax.set_ylabel(f"validation\n(n={validated[0].get('val_n', '?')})")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(**_LEGEND)
