"""EMDR^2: the reranker as the latent-document prior of a retrieval-augmented marginal likelihood.

``L = -log sum_k p_LM(a | q, d_k) p_R(d_k | q)``, computed as
``-logsumexp_k(log p_LM(a|q,d_k) + log_softmax(scores / T_R)_k)`` so that answer likelihoods of
1e-40 neither underflow nor lose precision. The gradient w.r.t. the logits is
``(p_R - posterior) / T_R`` with ``posterior_k ∝ p_LM(a|q,d_k) p_R(d_k)``: documents that
explain the answer better than the reranker currently believes are pushed up.

Sequence level vs Atlas's token level: with ``lm_logprobs`` of shape ``[B, n]`` (one
``log p(a|q,d_k)`` per document, what ``raglign label`` stores) this is the EMDR^2 formula. Atlas
instead marginalises *per answer token*: ``-mean_t logsumexp_k(log p(a_t|q,d_k,a_<t) + log p_R(d_k))``
over the non-padding answer tokens (its ``logprob`` with ``temperature_score``). Pass
``lm_logprobs`` of shape ``[B, n, T]`` with a ``token_mask`` ``[B, T]`` for that variant. The two
differ because a sum of per-token logsumexps is not the logsumexp of per-document sums.
"""

from __future__ import annotations

import torch

from raglign.objectives.common import check_scores, masked_log_softmax


def emdr(scores: torch.Tensor, lm_logprobs: torch.Tensor, reranker_temperature: float = 1.0,
         mask: torch.Tensor | None = None, token_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the batch of the EMDR^2 negative marginal log-likelihood.

    Args:
        scores: ``[B, n]`` reranker scores.
        lm_logprobs: ``[B, n]`` sequence log-likelihoods ``log p_LM(a | q, d_k)``, or
            ``[B, n, T]`` per-token log-probabilities for Atlas's token-level marginal.
        reranker_temperature: ``T_R`` in ``p_R = softmax(scores / T_R)``.
        mask: ``[B, n]`` booleans, False for padding documents.
        token_mask: ``[B, T]`` booleans for the token-level form (default: all tokens count).
    """
    if reranker_temperature <= 0:
        raise ValueError(f"reranker_temperature must be > 0, got {reranker_temperature}")
    mask = check_scores(scores, lm_logprobs, mask, "lm_logprobs")
    log_prior = masked_log_softmax(scores / reranker_temperature, mask)
    lm = lm_logprobs.detach().to(scores.dtype)
    if lm.dim() == 2:
        joint = (lm + log_prior).masked_fill(~mask, float("-inf"))
        return -torch.logsumexp(joint, dim=1).mean()
    if lm.dim() != 3:
        raise ValueError(f"lm_logprobs must be [B, n] or [B, n, T], got {tuple(lm.shape)}")
    joint = (lm + log_prior[..., None]).masked_fill(~mask[..., None], float("-inf"))
    per_token = torch.logsumexp(joint, dim=1)  # [B, T]
    if token_mask is None:
        token_mask = torch.ones_like(per_token, dtype=torch.bool)
    if tuple(token_mask.shape) != tuple(per_token.shape):
        raise ValueError(f"token_mask shape {tuple(token_mask.shape)} != {tuple(per_token.shape)}")
    token_mask = token_mask.to(device=scores.device, dtype=torch.bool)
    per_token = torch.where(token_mask, per_token, torch.zeros_like(per_token))
    return -(per_token.sum(1) / token_mask.sum(1).clamp_min(1)).mean()
