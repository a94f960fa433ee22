"""G-Rerank's stochastic subset mask (Algorithm 1 of the paper, ``StochasticSubsetMask``).

For j = 1..k: w̃ = κ·w + G (G_i = -log(-log u_i), u ~ U(0,1)), M^j = softmax(w̃ / τ); the mask is
the element-wise max over the k draws. Each draw is a relaxed one-hot ("pick one document"), so
the max of k draws is a relaxed k-hot subset. Without noise every draw is the same softmax and
the "subset" degenerates to one soft distribution, which is what the paper's ablation shows
collapsing to uniform (the mask then stops masking anything).

The mask enters the generator through the document engine as log(M_i) on the attention logits of
document i's keys; this module only produces the mask, so it is testable without a model.
"""

from __future__ import annotations

import torch


def gumbel_noise(shape: torch.Size | tuple[int, ...], generator: torch.Generator | None = None,
                 device=None, dtype=torch.float32, eps: float = 1e-10) -> torch.Tensor:
    """Standard Gumbel samples -log(-log u); u is clamped away from 0 and 1 so both logs are finite."""
    u = torch.rand(shape, generator=generator, device=device, dtype=dtype)
    u = u.clamp(eps, 1.0 - eps)
    return -torch.log(-torch.log(u))


def stochastic_subset_mask(weights: torch.Tensor, k: int, tau: float = 0.5, kappa: float = 1.0,
                           noise: bool = True, generator: torch.Generator | None = None,
                           valid: torch.Tensor | None = None) -> torch.Tensor:
    """Relaxed top-k mask over the last axis of ``weights`` (reranker scores, any leading shape).

    ``valid`` (bool, same shape) marks real candidates; padded ones get probability 0 in every
    draw. Values lie in (0, 1] for valid candidates. Differentiable with respect to ``weights``.
    ``noise=False`` is the paper's "w/o Gumbel" ablation.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    shape = (k, *weights.shape)
    logits = kappa * weights.unsqueeze(0).expand(shape)
    if noise:
        logits = logits + gumbel_noise(shape, generator, weights.device, weights.dtype)
    if valid is not None:
        logits = logits.masked_fill(~valid.unsqueeze(0).expand(shape), float("-inf"))
    draws = torch.softmax(logits / tau, dim=-1)
    return draws.max(dim=0).values


def hard_topk_mask(weights: torch.Tensor, k: int) -> torch.Tensor:
    """The inference-time mask: 1 for the k highest-scoring candidates, 0 elsewhere."""
    idx = weights.topk(min(k, weights.shape[-1]), dim=-1).indices
    return torch.zeros_like(weights).scatter(-1, idx, 1.0)


def max_mask_weight(weights: torch.Tensor) -> torch.Tensor:
    """The paper's Figure-4 statistic: the largest normalised document weight max_i softmax(w)_i,
    averaged over leading axes. 1/n means the reranker no longer tells candidates apart."""
    return torch.softmax(weights, dim=-1).max(dim=-1).values.mean()


def gumbel_lm_loss(engine, caches, answers, scores: torch.Tensor, k: int, tau: float = 0.5,
                   kappa: float = 1.0, noise: bool = True,
                   generator: torch.Generator | None = None, valid: torch.Tensor | None = None,
                   samples: int = 1) -> torch.Tensor:
    """G-Rerank's training loss: the gold answer's NLL under differentiable masked attention.

    ``scores`` ``[B, n]`` are reranker outputs (or Algorithm 2's free weights) for the
    candidates whose document caches are ``caches`` (one :class:`~raglign.engine.DocCache` per
    query, built once per step without grad); ``answers`` the gold answer strings. For each
    query a relaxed top-k mask M = :func:`stochastic_subset_mask` (scores) is drawn and the answer
    is scored by ``engine.masked_logprobs`` with log(M_i) added to every key of document i.
    Returns the mean over queries (and over ``samples`` independent masks per query) of the
    answer's per-token NLL (the usual LM cross-entropy), so queries with long answers do not
    dominate a batch.

    Gradients reach ``scores`` (hence the reranker) only: the engine freezes the LLM. A query
    with fewer than n candidates passes ``valid`` (True for its first n_b columns: padding goes
    last; padded columns get mask 0 in every draw and are cut off before the engine sees them). ``samples > 1`` averages several Gumbel
    draws; the engine packs them into one forward over the shared cache, so variance drops for
    far less than ``samples`` times the cost. ``samples=1`` is the paper's estimator.
    """
    if scores.dim() != 2 or scores.shape[0] != len(caches) or len(caches) != len(answers):
        raise ValueError(f"scores must be [B, n] with B = {len(caches)} caches and "
                         f"{len(answers)} answers, got {tuple(scores.shape)}")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    draws = scores.unsqueeze(0).expand(samples, *scores.shape)
    if valid is not None:
        valid = valid.unsqueeze(0).expand(samples, *valid.shape)
    masks = stochastic_subset_mask(draws, k, tau, kappa, noise, generator, valid)  # [S, B, n]
    losses = []
    for b, (cache, answer) in enumerate(zip(caches, answers)):
        n_b = cache.num_docs
        if n_b > scores.shape[1] or (valid is not None and int(valid[0, b].sum()) != n_b):
            raise ValueError(f"query {b}: its cache holds {n_b} documents but scores/valid "
                             f"describe {int(valid[0, b].sum()) if valid is not None else scores.shape[1]}")
        mask = masks[:, b, :n_b].to(engine.device)
        token_lp = engine.masked_logprobs(cache, answer, mask, per_token=True)  # [S, A]
        losses.append(-token_lp.mean())
    return torch.stack(losses).mean().to(scores.device)
