"""What ``raglign train`` leaves behind: which model it exports, its card, the loss curve and the
checkpoints a finished run keeps.

* **Which model** (:func:`choose_export`). Without validation, the last step's. With
  validation, the best validated step Ray Train kept (``CheckpointConfig`` ranked by the
  metric), but only if it beats the starting model (step 0): a user must never ship a reranker
  that validation shows to be no better than what they started from, so otherwise the export is
  the starting model itself, and the run says so on the console, in the card and in
  ``train_result.json``.
* **Export** (:func:`export_model`) runs in the driver: the reranker is rebuilt as every worker
  built it (same seed, so the same new head) and the chosen checkpoint's weights loaded into it.
  Checkpoints therefore carry no second copy of the model in Hugging Face format.
* **Disk** (:func:`slim_checkpoints`). Ray Train keeps ``keep_checkpoints`` (default 1) plus the
  best by validation. Once a run has finished and exported, nothing is left to resume, so the
  optimizer, schedule and RNG state (two thirds of a checkpoint under AdamW) are removed from
  the checkpoints Ray kept; their model weights stay for comparison. The directories themselves
  stay: Ray Train's run snapshot lists them and refuses a run directory where they are missing.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raglign.config import dump_yaml
from raglign.training_config import TrainConfig

# A checkpoint's files that only continuing the run needs (model.pt, state.json and
# metrics.jsonl stay).
TRAINING_STATE = ("optimizer.pt", "scheduler.pt", "rng-rank*.pt")


@dataclass
class ExportChoice:
    """The model a run exports: ``checkpoint`` holds its ``model.pt`` (None: the starting
    model), ``kind`` is ``last``, ``best`` or ``base``, ``note`` one plain sentence about why."""

    step: int
    checkpoint: Any
    kind: str
    note: str


def _score(history: list[dict], step: int, attribute: str) -> float | None:
    return next((h[attribute] for h in history if h["step"] == step and attribute in h), None)


def choose_export(cfg: TrainConfig, history: list[dict], last: Any, last_step: int,
                  best: tuple[Any, dict] | None) -> ExportChoice:
    """The model to export, from the last checkpoint and the best validated one ``best``
    (``(checkpoint, its reported metrics)``; None when no trained step was checkpointed as a
    best, or without validation)."""
    if cfg.validation is None:
        return ExportChoice(last_step, last, "last", f"exported the model of the last step "
                                                     f"({last_step})")
    attribute, metric = cfg.validation.score_attribute, cfg.validation.metric
    base = _score(history, 0, attribute)
    final = _score(history, last_step, attribute)
    trained = "no trained step was validated" if best is None else \
        f"best trained {best[1][attribute]:.4f} at step {best[1]['step']}"
    if best is None or not best[1][attribute] > base:
        return ExportChoice(0, None, "base", (
            f"No trained step beat the starting model on validation ({metric} {base:.4f} at "
            f"step 0; {trained}): the exported model is the starting model `{cfg.model}`, "
            "UNCHANGED. Training did not help on these validation questions."))
    step = best[1]["step"]
    kind = "last" if step == last_step else "best"
    return ExportChoice(step, best[0], kind, (
        f"exported step {step}, the best on validation ({metric} {best[1][attribute]:.4f}; "
        f"starting model {base:.4f}" + ("" if kind == "last" or final is None
                                        else f"; last step {last_step}: {final:.4f}") + ")"))


def export_model(cfg: TrainConfig, checkpoint: Any, dst: Path, card: str) -> None:
    """Write the chosen model to ``dst`` (replaced atomically) with its model card."""
    import torch

    from raglign.pipeline.train import build_reranker

    with _quiet_transformers():  # the workers' logs said it all (a new head, missing keys)
        reranker = build_reranker(cfg)  # as every worker built it: the starting model
        if checkpoint is not None:
            with checkpoint.as_directory() as d:
                reranker.load_state_dict(torch.load(Path(d) / "model.pt", map_location="cpu"))
        tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex}")
        reranker.eval().save(tmp, model_card=card)
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(tmp, dst)


@contextlib.contextmanager
def _quiet_transformers():
    """Loading the base model once more in the driver repeats the warnings its workers already
    printed (a new score head, the weights it lacks) and two progress bars for a file copy;
    keep them off the console this time."""
    from transformers.utils import logging as hf_logging

    ours = logging.getLogger("raglign.models.rerankers")
    level, verbosity = ours.level, hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    ours.setLevel(logging.ERROR)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        ours.setLevel(level)
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def slim_checkpoints(checkpoints: list[Any]) -> int:
    """Remove the :data:`TRAINING_STATE` files of a finished run's checkpoints; bytes freed.

    Works on any storage Ray Train writes to (local, NFS, ``s3://``) through the checkpoint's
    own pyarrow filesystem.
    """
    import pyarrow.fs as pafs

    freed = 0
    for path, fs in {c.path: c.filesystem for c in checkpoints}.items():
        for info in fs.get_file_info(pafs.FileSelector(path)):
            if info.type == pafs.FileType.File and any(
                    fnmatch.fnmatch(info.base_name, p) for p in TRAINING_STATE):
                freed += info.size
                fs.delete_file(info.path)
    return freed


# ---------------------------------------------------------------------------------------------
# Model card
# ---------------------------------------------------------------------------------------------

def model_card(cfg: TrainConfig, provenance: dict[str, list], n_rows: int, step: int, total: int,
               history: list[dict], choice: ExportChoice, validation: str | None) -> str:
    """A README.md for the exported model: data, signal, objective, hyper-parameters, result,
    and (with ``validation``, a description of the rows) which step was exported and why."""
    data, objective = _card_objective(cfg)
    library = "sentence-transformers"
    if cfg.kind == "cross":
        usage = ("from sentence_transformers import CrossEncoder\n\nmodel = CrossEncoder(\"PATH\")\n"
                 "scores = model.predict([(query, doc) for doc in docs])  # higher = more relevant")
    else:
        usage = ("from sentence_transformers import SentenceTransformer\n\nmodel = SentenceTransformer(\"PATH\")\n"
                 "scores = model.similarity(model.encode([query]), model.encode(docs))")
    signal = ", ".join(f"{k}: {', '.join(map(str, v))}" for k, v in provenance.items()) or "not recorded"
    losses = [h["loss"] for h in history if "loss" in h]
    final = losses[-1] if losses else float("nan")
    status = "complete" if step >= total else f"stopped early at max_steps ({step} of {total})"
    if choice.kind == "base":
        heading = (f"# {cfg.kind}-encoder reranker `{cfg.model}`, unchanged: raglign training "
                   f"({cfg.objective}) did not beat it on validation\n\n> **{choice.note}**")
    else:
        heading = (f"# {cfg.kind}-encoder reranker fine-tuned with raglign ({cfg.objective})\n\n"
                   f"Fine-tuned from `{cfg.model}` with `raglign train` to rank documents by what "
                   "a RAG generator\nneeds.")
    checked = "" if validation is None else (
        f"\n- **Validation**: {validation}, in `raglign eval`'s reranker setting (first "
        f"{cfg.validation.k1} candidates); the best step by `{cfg.validation.metric}` is "
        "exported, the starting model if no step beats it")
    return f"""---
library_name: {library}
base_model: {cfg.model}
tags: [reranker, {cfg.kind}-encoder, raglign, {cfg.objective}]
---

{heading}

- **Data**: `{cfg.data}` — {n_rows} training queries, {data}
- **Signal** (from the training rows): {signal}
- **Objective**: `{cfg.objective}` — {objective}
- **Training**: {step} optimizer steps ({status}); {cfg.epochs} epochs of {total // cfg.epochs}
  steps; final loss {final:.4f}{checked}
- **This model**: {choice.note}

## Usage

```python
{usage}
```

## Hyper-parameters

AdamW (lr {cfg.lr}, weight decay {cfg.weight_decay}), linear warmup over {cfg.warmup_ratio:.0%}
of the steps then linear decay, {cfg.batch_size} groups per step, max length {cfg.max_length},
seed {cfg.seed}, {cfg.num_workers} Ray Train worker(s). The full job configuration:

```yaml
{dump_yaml(cfg).strip()}
```
"""


def _card_objective(cfg: TrainConfig) -> tuple[str, str]:
    """What the rows supervise and what the loss is, for the model card."""
    if cfg.objective == "gumbel":
        g = cfg.gumbel
        loss = (f"G-Rerank: the gold answer's per-token NLL under the frozen generator "
                f"`{g.generator}` ({g.dtype}) reading the candidates through a Gumbel relaxed "
                f"top-{g.k} mask of the scores (tau {g.tau}, kappa {g.kappa}, noise {g.noise}, "
                f"{g.samples} mask(s) per query)")
        return f"gold answers (alias `{g.answer_alias}`) over the first {g.n} candidates", loss
    if cfg.objective == "rrpo":
        r = cfg.rrpo
        loss = (f"RRPO: PPO clipped surrogate (eps {r.clip_eps}) on episodes of {r.k} documents "
                f"sampled from the Plackett-Luce policy of the scores (temperature "
                f"{cfg.score_temperature}), reward `{r.reward}` from the frozen reader "
                f"`{r.generator}` ({r.dtype}), advantages against the initial reranker's greedy "
                f"episode (gamma {r.gamma}, GAE lambda {r.lam}), KL weight {r.kl_beta}")
        return f"gold answers over the first {r.n} candidates", loss
    from raglign.objectives import OBJECTIVES

    obj = OBJECTIVES[cfg.objective]
    beta = f", beta {cfg.beta}" if cfg.objective == "replug" else ""
    return (f"per-document field `{obj.field}`",
            f"{obj.description}; score temperature {cfg.score_temperature}{beta}")


# ---------------------------------------------------------------------------------------------
# Loss curve
# ---------------------------------------------------------------------------------------------

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
