"""``objective: gumbel`` of ``raglign train``: G-Rerank's Algorithm 1 inside the one training job.

The trainer (:mod:`raglign.pipeline.train`) owns everything a run shares with the other
objectives — data order, DDP, optimizer and schedule, checkpoints, resume, export, model card.
This module holds only what differs:

* :func:`load_gumbel_table` reads *canonical* rows (question, answers, candidates: the output
  of ``raglign data convert`` or ``raglign retrieve``), not mined rows: the supervision is the
  gold answer itself, so there is nothing to mine. The table keeps the reranker's texts
  (``docs``, as in every training table) plus what the generator's prompt needs (titles,
  texts, choices) and the answer alias the loss scores.
* :class:`GumbelLoss` is built once per worker. It holds the frozen generator behind a
  :class:`~raglign.engine.DocumentEngine` (which sets ``requires_grad_(False)`` on it, so a
  backward pass computes no LLM parameter gradient). Per micro-batch it prefills the
  candidates once without grad, then scores them with the reranker (with grad, through the DDP
  wrapper so gradients are averaged across workers) and returns
  :func:`~raglign.objectives.gumbel.gumbel_lm_loss`.

The Gumbel noise is drawn from the worker's global torch RNG (on the scores' device), whose
state every checkpoint already saves per rank: a resumed run draws the same masks an
uninterrupted one would have.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from raglign.data.io import parquet_files
from raglign.data.schema import validate_row
from raglign.errors import DataError
from raglign.training_config import GumbelOptions

if TYPE_CHECKING:
    from raglign.pipeline.train import Batch


def load_gumbel_table(path: str, options: GumbelOptions, limit: int | None = None,
                      ) -> tuple[pa.Table, dict[str, list]]:
    """Validated canonical rows as ``{id, question, docs: [str], titles, texts, choices,
    answer}`` over each row's first ``options.n`` candidates.

    Every row must have candidates and a non-empty answer: a row without them cannot train the
    reranker, and dropping it silently would change what a run means. The second value is the
    model card's provenance (the generator the reranker was trained through).
    """
    from raglign.models.rerankers import doc_text
    from raglign.pipeline.label import prepare_item
    from raglign.signals.base import Item

    cols: dict[str, list[Any]] = {k: [] for k in ("id", "question", "docs", "titles", "texts",
                                                  "choices", "answer")}
    for f in parquet_files(path):
        src = str(f)
        for i, row in enumerate(pq.read_table(f).to_pylist()):
            rec = row.get("id") or i
            validate_row(row, src, rec)
            cands = (row.get("candidates") or [])[:options.n]
            item = prepare_item({**row, "candidates": cands}, options.answer_alias)
            if not isinstance(item, Item):  # the reason: "no candidates" / "no answers"
                field = "candidates" if item == "no candidates" else "answers"
                raise DataError(src, rec, field, f"{item}: objective 'gumbel' trains on rows "
                                                 "with candidates and a gold answer")
            cols["id"].append(str(row["id"]))
            cols["question"].append(item.question)
            cols["docs"].append([doc_text(t, x) for t, x in item.docs])
            cols["titles"].append([t for t, _ in item.docs])
            cols["texts"].append([x for _, x in item.docs])
            cols["choices"].append(list(item.choices) if item.choices else None)
            cols["answer"].append(item.answer)
            if limit is not None and len(cols["id"]) >= limit:
                break
        if limit is not None and len(cols["id"]) >= limit:
            break
    schema = pa.schema([("id", pa.string()), ("question", pa.string()),
                        ("docs", pa.list_(pa.string())), ("titles", pa.list_(pa.string())),
                        ("texts", pa.list_(pa.string())), ("choices", pa.list_(pa.string())),
                        ("answer", pa.string())])
    return pa.table(cols, schema=schema), {"generator": [options.generator]}


class GumbelLoss:
    """Per-worker G-Rerank loss: ``loss = GumbelLoss(options, device)(model, batch)``.

    ``cache_mib`` is the largest document cache (keys and values of one micro-batch) seen since
    the last :meth:`pop_metrics`, reported next to the peak RSS so a run states its memory.
    """

    def __init__(self, options: GumbelOptions, device):
        from raglign.engine import DocumentEngine
        from raglign.models.generator import TransformersGenerator

        gen = TransformersGenerator.from_name(options.generator, dtype=options.dtype,
                                              device=str(device))
        self.engine = DocumentEngine(gen.model, gen.tokenizer)  # freezes the LLM
        self.options = options
        self.cache_mib = 0.0

    def __call__(self, model, batch: Batch):
        import torch

        from raglign.objectives.gumbel import gumbel_lm_loss

        o, cols = self.options, batch.columns
        docs = [list(zip(t, x)) for t, x in zip(cols["titles"], cols["texts"])]
        # The LLM runs outside the trainer's bf16 autocast: it has its own dtype, and the mask's
        # log(M) must reach the attention logits at that precision.
        no_autocast = torch.autocast(self.engine.device.type, enabled=False)
        with no_autocast:
            caches = self.engine.prepare_many(batch.queries, docs, cols["choices"])  # no grad
        self.cache_mib = max(self.cache_mib, sum(c.nbytes() for c in caches) / 2**20)
        scores = model(batch.queries, batch.docs)  # [b, n] with grad, padding scored as ""
        with no_autocast:
            return gumbel_lm_loss(self.engine, caches, cols["answer"], scores.float(), o.k,
                                  o.tau, o.kappa, o.noise, None, batch.mask.to(scores.device),
                                  o.samples)

    def pop_metrics(self) -> dict[str, float]:
        out, self.cache_mib = {"cache_mib": self.cache_mib}, 0.0
        return out
