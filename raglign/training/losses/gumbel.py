"""``objective: gumbel`` of ``raglign train``: G-Rerank's Algorithm 1 as a training loss.

The trainer owns everything a run shares with the other objectives — data order, DDP, optimizer
and schedule, checkpoints, resume, export, model card. This module holds only what differs:

* the rows are canonical, not mined (:func:`raglign.pipeline.lm_table.load_lm_table`).
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

from typing import TYPE_CHECKING

from raglign.training.loss import Loss
from raglign.training_config import GumbelOptions, TrainConfig

if TYPE_CHECKING:
    from raglign.training.batches import Batch


class GumbelLoss(Loss):
    """Per-worker G-Rerank loss: ``loss = GumbelLoss(options, device)(model, batch)``.

    ``cache_mib`` is the largest document cache (keys and values of one micro-batch) seen since
    the last :meth:`pop_metrics`, reported next to the peak RSS so a run states its memory.
    """

    def __init__(self, options: GumbelOptions, device):
        from raglign.engine import DocumentEngine
        from raglign.models.generator_spec import build_generator

        gen = build_generator(options.generator.model_copy(update={"device": str(device)}))
        self.engine = DocumentEngine(gen.model, gen.tokenizer)  # freezes the LLM
        self.options = options
        self.cache_mib = 0.0

    @classmethod
    def build(cls, cfg: TrainConfig, device) -> GumbelLoss:
        return cls(cfg.gumbel, device)

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

    @classmethod
    def describe(cls, cfg: TrainConfig) -> tuple[str, str]:
        g, lm = cfg.gumbel, cfg.gumbel.generator
        loss = (f"G-Rerank: the gold answer's per-token NLL under the frozen generator "
                f"`{lm.name}` ({lm.dtype}) reading the candidates through a Gumbel relaxed "
                f"top-{g.k} mask of the scores (tau {g.tau}, kappa {g.kappa}, noise {g.noise}, "
                f"{g.samples} mask(s) per query)")
        return f"gold answers (alias `{g.answer_alias}`) over the first {g.n} candidates", loss
