"""KL distillation of the reranker towards an LLM-derived distribution over documents.

Two directions, as the papers use them:

* :func:`kl_distill` — PDist, LOOP and ADist (Atlas): ``KL(target || p_R)`` with
  ``p_R = softmax(scores / T_R)``. The target (``softmax_k(log p_LM(a|q,d_k) / T)`` for PDist,
  leave-one-out or attention mass for the others) is computed by ``raglign mine`` and is a
  constant here, so this equals the cross entropy ``-sum_k target_k log p_R(d_k)`` up to the
  target's entropy; the gradient w.r.t. the logits is ``(p_R - target) / T_R``.
* :func:`replug_lsr` — REPLUG's LM-supervised retrieval: ``KL(p_R || Q_LM)`` with
  ``Q_LM = softmax(log p_LM(a|q,d) / beta)``. Note the reversed direction: the reranker's own
  distribution weighs the log ratio, so the loss is mode-seeking (p_R is pushed to put its mass
  where Q_LM is large, and is not penalised for ignoring some of Q_LM's modes).

* :func:`base_anchor` — ``KL(p_base || p_R)``, the pull towards the frozen base reranker's own
  distribution that ``raglign train``'s ``anchor`` weight adds to any score objective. Because
  ``KL(target || p_R)`` is a cross entropy in ``p_R`` plus a constant, mixing a KL objective's
  target with ``p_base`` by a weight α gives the same gradient as ``(1 - α) KL(target || p_R) +
  α KL(p_base || p_R)``: the anchor is the distillation analogue of RADIO's α mix of the LLM
  signal with the retrieval score.
* :func:`geometric_mix` — the other way to combine a KL objective's target with the base:
  ``target^(1 - α) · p_base^α``, renormalised (a product of experts). Where the two disagree,
  an arithmetic mix keeps both peaks and asks the student for two modes; the product sums the
  two log-scores, as RADIO's α mix sums the LLM signal and the retrieval score, so its mass
  goes to the documents both rank high, and a document only one of them favours is pulled
  down by the other (docs/distillation.md compares the two).

Atlas uses ``T = T_R = 0.01`` with dot-product retriever scores; for cross-encoder logits
``T_R = 1`` is the natural scale (see docs/training.md).
"""

from __future__ import annotations

import torch

from raglign.objectives.common import check_scores, masked_log_softmax, masked_sum


def kl_distill(scores: torch.Tensor, target_probs: torch.Tensor, reranker_temperature: float = 1.0,
               mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the batch of ``KL(target || softmax(scores / T_R))`` (PDist / LOOP / ADist).

    ``target_probs`` is ``[B, n]``, non-negative, summing to 1 over the real documents of each
    row (masked entries are ignored whatever their value).
    """
    if reranker_temperature <= 0:
        raise ValueError(f"reranker_temperature must be > 0, got {reranker_temperature}")
    mask = check_scores(scores, target_probs, mask, "target_probs")
    target = target_probs.to(scores.dtype)
    log_p = masked_log_softmax(scores / reranker_temperature, mask)
    live = mask & (target > 0)  # 0 * log 0 = 0 by convention
    terms = target * (torch.log(target.clamp_min(torch.finfo(target.dtype).tiny)) - log_p)
    return masked_sum(terms, live).mean()


def replug_lsr(scores: torch.Tensor, lm_logprobs: torch.Tensor, beta: float = 1.0,
               reranker_temperature: float = 1.0, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the batch of ``KL(p_R || Q_LM)``, REPLUG LSR.

    ``p_R = softmax(scores / T_R)``, ``Q_LM = softmax(lm_logprobs / beta)`` where
    ``lm_logprobs[b, k] = log p_LM(a | q_b, d_k)`` (no gradient flows into it).
    """
    if beta <= 0 or reranker_temperature <= 0:
        raise ValueError(f"beta and reranker_temperature must be > 0, got {beta}, "
                         f"{reranker_temperature}")
    mask = check_scores(scores, lm_logprobs, mask, "lm_logprobs")
    log_p = masked_log_softmax(scores / reranker_temperature, mask)
    log_q = masked_log_softmax(lm_logprobs.detach().to(scores.dtype) / beta, mask)
    return masked_sum(log_p.exp() * (log_p - log_q), mask).mean()


def base_anchor(scores: torch.Tensor, base_scores: torch.Tensor, temperature: float = 1.0,
                mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the batch of ``KL(softmax(base_scores / T) || softmax(scores / T))``.

    ``base_scores`` are the frozen starting reranker's scores of the same documents (no
    gradient flows into them); zero, with zero gradient, while the student still equals it.
    """
    mask = check_scores(scores, base_scores, mask, "base_scores")
    target = masked_log_softmax(base_scores.detach().to(scores.dtype) / temperature, mask).exp()
    return kl_distill(scores, target, temperature, mask)


def geometric_mix(target_probs: torch.Tensor, base_scores: torch.Tensor, weight: float,
                  temperature: float = 1.0, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``softmax((1 - w) log target + w log softmax(base_scores / T))`` over each row's real
    documents: the target mixed with the base's own distribution as a normalised weighted
    geometric mean. ``w = 0`` returns the target, ``w = 1`` the base's distribution; a document
    the target gives 0 stays at 0 while ``w < 1``. Padding gets probability 0; no gradient."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    mask = check_scores(base_scores, target_probs, mask, "target_probs")
    dtype = torch.promote_types(target_probs.dtype, torch.float32)  # no bf16 logs
    log_base = masked_log_softmax(base_scores.detach().to(dtype) / temperature, mask)
    log_target = torch.log(target_probs.detach().to(dtype).clamp_min(0))  # 0 -> -inf
    # weight 1 must not let -inf * 0 turn into NaN: the target's zeros only count below 1
    mixed = weight * log_base + ((1 - weight) * log_target if weight < 1 else 0.0)
    return masked_log_softmax(mixed, mask).exp().to(target_probs.dtype)
