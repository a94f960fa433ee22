"""The model card (README.md) of an exported reranker: where it came from, how it was trained and
which step it is, so that a model directory explains itself without its run directory.

The objective's part is the objective's own :meth:`~raglign.training.loss.Loss.describe`: the card
holds no list of objectives.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from raglign.config import dump_yaml
from raglign.training.loss import LOSSES
from raglign.training_config import TrainConfig

if TYPE_CHECKING:
    from raglign.training.export import ExportChoice


def model_card(cfg: TrainConfig, provenance: dict[str, list], n_rows: int, step: int, total: int,
               history: list[dict], choice: ExportChoice, validation: str | None) -> str:
    """A README.md for the exported model: data, signal, objective, hyper-parameters, result,
    and (with ``validation``, a description of the rows) which step was exported and why."""
    data, objective = LOSSES[cfg.objective].describe(cfg)
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
