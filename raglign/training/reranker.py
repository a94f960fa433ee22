"""The reranker a run trains: built identically on every worker, in the driver that exports it
and in RRPO's frozen reference, and wrapped so that DDP sees its scoring.

torch is imported inside the functions: the job's driver imports this module before it knows
whether it will train here (local mode) or only start workers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the config (pydantic) only as a type: benchmarks/gpu_suite.py builds the
    # reranker step from scorer_class and param_groups where pydantic is not installed.
    from raglign.training_config import TrainConfig


def scorer_class():
    """The module DDP wraps around the reranker (defined on first use: it subclasses a torch
    class, and this module imports torch only inside functions)."""
    import torch
    import torch.nn.functional as F

    class Scorer(torch.nn.Module):
        """Routes ``forward`` to the reranker's scoring so DDP's forward hooks run.

        DDP synchronises gradients only for computation that went through its own ``forward``;
        calling ``ddp.module.forward_scores`` would silently train each worker on its own data.
        With in-batch negatives a bi-encoder embeds the batch's documents once and scores every
        query against all of them (``[B, B*n]``, group-major, as :func:`infonce` expects).
        """

        def __init__(self, reranker, in_batch_negatives: bool):
            super().__init__()
            self.reranker = reranker
            self.in_batch_negatives = in_batch_negatives

        def forward(self, queries: list[str], docs: list[list[str]]):
            if not self.in_batch_negatives:
                return self.reranker.forward_scores(queries, docs)
            enc = self.reranker.encoder
            q = enc.embed(list(queries))
            d = enc.embed([t for group in docs for t in group])
            if self.reranker.similarity == "cosine":
                q, d = F.normalize(q, dim=-1), F.normalize(d, dim=-1)
            return q @ d.T

    return Scorer


def build_reranker(cfg: TrainConfig, device=None):
    """The reranker to fine-tune, initialised identically on every worker (seeded head)."""
    import torch

    from raglign.models.rerankers import load_reranker

    torch.manual_seed(cfg.seed)
    kw = {"similarity": cfg.similarity} if cfg.similarity else {}
    reranker = load_reranker(cfg.model, kind=cfg.kind, max_length=cfg.max_length, device=device, **kw)
    return reranker.train()


def build_optimizer(model, lr: float, weight_decay: float):
    """AdamW over :func:`param_groups`, fused: one kernel per parameter group instead of a
    Python loop of a dozen tensor ops per parameter. The same update up to float rounding
    (weights 3e-8 apart after 7 steps); on the CPU it took 0.013 instead of 0.10 CPU-s per
    step for MiniLM-L6's 22.7M parameters, a cost every DDP worker pays in full however many
    workers share the batch (docs/benchmarks.md, "Where the 2-worker time goes")."""
    import torch

    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, fused=True)


def param_groups(model, weight_decay: float) -> list[dict]:
    """No weight decay on biases and LayerNorm weights (the standard BERT fine-tuning recipe)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]
