"""Which model a finished ``raglign train`` run exports, and the export itself.

* **Which model** (:func:`choose_export`). Without validation, the last step's. With
  validation, the best validated step Ray Train kept (``CheckpointConfig`` ranked by the
  metric), but only if it beats the starting model (step 0): a user must never ship a reranker
  that validation shows to be no better than what they started from, so otherwise the export is
  the starting model itself, and the run says so on the console, in the card and in
  ``train_result.json``.
* **Export** (:func:`export_model`) runs in the driver: the reranker is rebuilt as every worker
  built it (same seed, so the same new head) and the chosen checkpoint's weights loaded into it.
  Checkpoints therefore carry no second copy of the model in Hugging Face format. With
  ``base_merge`` w in effect, a trained checkpoint's weights are exported as ``(1 − w) ·
  trained + w · base`` (:mod:`raglign.training.merge`), the base being the model just built,
  before the checkpoint is loaded into it. The validation scores in the history are the unmerged model's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raglign import storage
from raglign.training.merge import interpolate_state
from raglign.training.reranker import build_reranker
from raglign.training_config import TrainConfig


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
    best, or without validation). The note says when the trained weights are merged with the
    starting model's (``base_merge``)."""
    choice = _choose(cfg, history, last, last_step, best)
    w = cfg.base_merge_weight
    if w and choice.checkpoint is not None:
        choice.note += (f"; its weights merged with the starting model's, {1 - w:g} x trained + "
                        f"{w:g} x `{cfg.model}` (base_merge)")
    return choice


def _choose(cfg: TrainConfig, history: list[dict], last: Any, last_step: int,
            best: tuple[Any, dict] | None) -> ExportChoice:
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


def export_model(cfg: TrainConfig, checkpoint: Any, dst: str, card: str) -> None:
    """Write the chosen model to ``dst`` (a path or storage URI) with its model card.

    ``save_pretrained`` (transformers, sentence-transformers' layout) writes local files by
    name and cannot write through a pyarrow filesystem, so the model is saved into a local
    temporary directory first. Locally that directory is then renamed over ``dst`` (atomic);
    for a URI its files are uploaded with ``pyarrow.fs.copy_files`` after the old ones are
    removed. That upload is not atomic: a run killed during it leaves a partial model under
    ``dst`` and no new ``train_result.json`` (written after the export); re-running the job
    exports again from its checkpoint.
    """
    import torch

    with _quiet_transformers():  # the workers' logs said it all (a new head, missing keys)
        reranker = build_reranker(cfg)  # as every worker built it: the starting model
        if checkpoint is not None:
            # the starting weights, kept for the merge before the checkpoint overwrites them
            start = ({k: v.clone() for k, v in reranker.state_dict().items()}
                     if cfg.base_merge_weight else None)
            with checkpoint.as_directory() as d:
                reranker.load_state_dict(torch.load(Path(d) / "model.pt", map_location="cpu"))
            if start is not None:
                reranker.load_state_dict(interpolate_state(reranker.state_dict(), start,
                                                           cfg.base_merge_weight))
        if storage.is_remote(dst):
            with tempfile.TemporaryDirectory(prefix="raglign-export-") as tmp:
                reranker.eval().save(tmp, model_card=card)
                storage.delete_dir(dst)
                storage.upload_dir(tmp, dst)
            return
        local = Path(dst)
        tmp = local.with_name(f".{local.name}.{uuid.uuid4().hex}")
        reranker.eval().save(tmp, model_card=card)
    if local.exists():
        shutil.rmtree(local)
    os.replace(tmp, local)


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
