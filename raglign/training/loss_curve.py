"""``loss_curve.png`` of a ``raglign train`` run: training loss, validation metrics (when the run
has them) and learning rate over the optimizer steps, with the exported step marked."""

from __future__ import annotations

from pathlib import Path

# Legends beside the panels: inside, they hide the points a reader is looking for.
_LEGEND = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "fontsize": 8, "frameon": False}


def plot_loss_curve(history: list[dict], path: Path, title: str, attribute: str | None = None,
                    exported_step: int | None = None) -> None:
    """Training loss, validation metrics (when the run has them) and learning rate, one panel
    each over a shared step axis: the three have unrelated scales, and one axis per quantity
    with its own legend is what lets a reader tell them apart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trained = [h for h in history if "loss" in h]
    validated = [h for h in history if attribute and attribute in h]
    panels = 3 if validated else 2
    fig, axes = plt.subplots(panels, 1, figsize=(9.5, 2.4 * panels + 0.6), sharex=True,
                             height_ratios=[3, 3, 1.6][:panels] if validated else [3, 1.6])
    marker = "o" if len(trained) <= 60 else None
    steps = [h["step"] for h in trained]
    loss_ax, lr_ax = axes[0], axes[-1]
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
    lr_ax.set_xlabel("optimizer step")
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
