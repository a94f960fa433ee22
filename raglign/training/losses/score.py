"""Losses of the reranker's scores against one per-document value of mined rows (``labels``,
``target`` or ``lm_logprob``, the registry line's ``rows``): InfoNCE, supervised, KL, REPLUG,
EMDR².

Each is the same step — score the micro-batch's groups through DDP, then a pure function of
``[B, n]`` scores, values and padding mask from :mod:`raglign.objectives` — so a subclass states
only its :meth:`ScoreLoss.loss` (how the batch maps onto that function's arguments), its
description for the model card and, where it has one, a rule its rows must follow.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from raglign.objectives import (base_anchor, cosent, emdr, geometric_mix, infonce, kl_distill,
                                replug_lsr, supervised)
from raglign.training.loss import Loss
from raglign.training.reranker import build_reranker, scorer_class
from raglign.training_config import OBJECTIVES, TrainConfig

if TYPE_CHECKING:
    import torch

    from raglign.training.batches import Batch


@dataclass(frozen=True)
class LossParams:
    """Hyper-parameters the score losses read (from ``TrainConfig``)."""

    temperature: float = 1.0  # reranker score temperature: logits = score / temperature
    beta: float = 1.0  # REPLUG's LM temperature in Q_LM = softmax(log p_LM / beta)
    in_batch_negatives: bool = False  # InfoNCE only; scores are then [B, B*n]
    kind: str = "cross"  # the reranker's kind: "supervised" is BCE for cross, CoSENT for bi


def score_mask(mask: torch.Tensor, scores: torch.Tensor, p: LossParams) -> torch.Tensor:
    """The padding mask of ``scores``: the groups' own ``[B, n]``, or with in-batch negatives
    (``[B, B*n]`` scores, every query against every group's documents) all groups' for each
    query."""
    if p.in_batch_negatives:
        return mask.reshape(1, -1).expand(scores.shape[0], -1)
    return mask


class ScoreLoss(Loss):
    """``loss(scores, values, mask, params)`` on the scores of the batch's groups."""

    description: ClassVar[str]

    def __init__(self, cfg: TrainConfig, device):
        self.params = LossParams(cfg.score_temperature, cfg.beta, cfg.in_batch_negatives,
                                 cfg.kind)
        self.device = device
        self.anchor = cfg.anchor_weight
        self.geometric = cfg.anchor_mode == "geometric"
        # The frozen starting reranker, scored like the student (in-batch shape included); it
        # is rebuilt from the config, so a run resumed from a checkpoint anchors to the same base.
        self.base = (scorer_class()(build_reranker(cfg, device).eval().requires_grad_(False),
                                    cfg.in_batch_negatives) if self.anchor else None)
        self._anchor_kl: list[float] = []

    @staticmethod
    @abstractmethod
    def loss(scores: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
             p: LossParams) -> torch.Tensor:
        """The loss of ``[B, n]`` scores (``[B, B*n]`` with in-batch negatives)."""

    @classmethod
    def row_error(cls, values: list[float]) -> str | None:
        """Why one row's values cannot train this loss (None: they can), beyond the checks of
        their field that every objective reading it shares (:mod:`raglign.training.tables`)."""
        return None

    def __call__(self, model, batch: Batch) -> torch.Tensor:
        import torch

        scores = model(batch.queries, batch.docs).float()
        mask, values = batch.mask.to(self.device), batch.values.to(self.device)
        if self.base is None:
            return self.loss(scores, values, mask, self.params)
        with torch.no_grad():
            base = self.base(batch.queries, batch.docs).float()
        drift = base_anchor(scores, base, self.params.temperature,
                            score_mask(mask, scores, self.params))
        self._anchor_kl.append(float(drift.detach()))
        if self.geometric:  # the target itself moves towards the base (objective kl only)
            mixed = geometric_mix(values, base, self.anchor, self.params.temperature, mask)
            return self.loss(scores, mixed, mask, self.params)
        return ((1 - self.anchor) * self.loss(scores, values, mask, self.params)
                + self.anchor * drift)

    def pop_means(self) -> dict[str, float]:
        """``kl_to_base``: how far the student has moved from the anchor, per logging window."""
        if not self._anchor_kl:
            return {}
        out = {"kl_to_base": sum(self._anchor_kl) / len(self._anchor_kl)}
        self._anchor_kl = []
        return out

    @classmethod
    def describe(cls, cfg: TrainConfig) -> tuple[str, str]:
        a = cfg.anchor_weight
        anchor = ("" if not a else
                  f"; target anchored to the base: target^(1 - {a}) x p_base^{a}, renormalised"
                  if cfg.anchor_mode == "geometric" else
                  f"; anchored to the base: (1 - {a}) x loss + {a} x KL(p_base || p_R)")
        return (f"per-document field `{OBJECTIVES[cfg.objective].rows}`",
                f"{cls.description}; score temperature {cfg.score_temperature}{anchor}")


class InfoNCE(ScoreLoss):
    description = "RADIO: InfoNCE over 1 positive + m negatives"

    @staticmethod
    def loss(scores, values, mask, p: LossParams):
        positive = values.argmax(dim=1)
        return infonce(scores, p.temperature, positive, p.in_batch_negatives,
                       score_mask(mask, scores, p))

    @classmethod
    def row_error(cls, values: list[float]) -> str | None:
        if sum(v == 1.0 for v in values) != 1 or sum(v != 0 for v in values) != 1:
            return f"infonce needs exactly one positive (label 1) and zeros elsewhere, got {values}"
        return None


class Supervised(ScoreLoss):
    description = ("gold / graded labels: pointwise BCE (cross-encoders), pairwise CoSENT "
                   "(bi-encoders)")

    @staticmethod
    def loss(scores, values, mask, p: LossParams):
        if p.kind == "bi":
            return cosent(scores, values, p.temperature, mask)
        return supervised(scores, values, p.temperature, mask)


class KL(ScoreLoss):
    description = "PDist / LOOP / ADist: KL(target || p_R)"

    @staticmethod
    def loss(scores, values, mask, p: LossParams):
        return kl_distill(scores, values, p.temperature, mask)


class Replug(ScoreLoss):
    description = "REPLUG LSR: KL(p_R || softmax(log p_LM / beta))"

    @staticmethod
    def loss(scores, values, mask, p: LossParams):
        return replug_lsr(scores, values, p.beta, p.temperature, mask)

    @classmethod
    def describe(cls, cfg: TrainConfig) -> tuple[str, str]:
        data, loss = super().describe(cfg)
        return data, f"{loss}, beta {cfg.beta}"


class EMDR(ScoreLoss):
    description = "EMDR^2: -log sum_k p_LM(a|q,d_k) p_R(d_k|q)"

    @staticmethod
    def loss(scores, values, mask, p: LossParams):
        return emdr(scores, values, p.temperature, mask)
