"""Reranker training objectives: pure functions of a ``[B, n]`` score tensor.

Each module holds one loss (``infonce``, ``kl``, ``emdr``, ``supervised``); :data:`OBJECTIVES`
is the one name → loss table that ``TrainConfig.objective`` validates against and the trainer
dispatches through. (``gumbel`` is G-Rerank's mask, whose loss needs the generator; it is
``raglign train``'s ``objective: gumbel`` via :mod:`raglign.pipeline.train_gumbel`, not an entry
of this table.) An entry names the row field that carries its per-document supervision
(what ``raglign mine`` writes) and adapts the batch to the loss's signature, so adding an
objective is one module plus one line here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from raglign.objectives.emdr import emdr
from raglign.objectives.infonce import infonce
from raglign.objectives.kl import kl_distill, replug_lsr
from raglign.objectives.supervised import cosent, supervised


@dataclass(frozen=True)
class LossParams:
    """Hyper-parameters the objectives read (from ``TrainConfig``)."""

    temperature: float = 1.0  # reranker score temperature: logits = score / temperature
    beta: float = 1.0  # REPLUG's LM temperature in Q_LM = softmax(log p_LM / beta)
    in_batch_negatives: bool = False  # InfoNCE only; scores are then [B, B*n]
    kind: str = "cross"  # the reranker's kind: "supervised" is BCE for cross, CoSENT for bi


@dataclass(frozen=True)
class Objective:
    """A loss with the row field it is trained from and how a batch maps onto its arguments."""

    field: str  # "labels" | "target" | "lm_logprob": one value per document in each row
    description: str
    loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, LossParams], torch.Tensor]


def _supervised(scores, values, mask, p: LossParams):
    if p.kind == "bi":
        return cosent(scores, values, p.temperature, mask)
    return supervised(scores, values, p.temperature, mask)


def _infonce(scores, values, mask, p: LossParams):
    positive = values.argmax(dim=1)
    if p.in_batch_negatives:  # [B, B*n]: every query sees every group's documents
        mask = mask.reshape(1, -1).expand(scores.shape[0], -1)
    return infonce(scores, p.temperature, positive, p.in_batch_negatives, mask)


OBJECTIVES: dict[str, Objective] = {
    "infonce": Objective("labels", "RADIO: InfoNCE over 1 positive + m negatives", _infonce),
    "supervised": Objective("labels", "gold / graded labels: pointwise BCE (cross-encoders), "
                            "pairwise CoSENT (bi-encoders)", _supervised),
    "kl": Objective("target", "PDist / LOOP / ADist: KL(target || p_R)",
                    lambda s, v, m, p: kl_distill(s, v, p.temperature, m)),
    "replug": Objective("lm_logprob", "REPLUG LSR: KL(p_R || softmax(log p_LM / beta))",
                        lambda s, v, m, p: replug_lsr(s, v, p.beta, p.temperature, m)),
    "emdr": Objective("lm_logprob", "EMDR^2: -log sum_k p_LM(a|q,d_k) p_R(d_k|q)",
                      lambda s, v, m, p: emdr(s, v, p.temperature, m)),
}

__all__ = ["OBJECTIVES", "LossParams", "Objective", "cosent", "emdr", "infonce", "kl_distill",
           "replug_lsr", "supervised"]
