"""InfoNCE over a group of one positive and sampled negatives (RADIO, eq. 13-14).

``L = -log f(q,d+) / (f(q,d+) + sum_j f(q,d-_j))`` with ``f = exp(phi(q,d) / tau)``, which is the
cross entropy of ``softmax(scores / tau)`` against the positive's index. RADIO's reference
fine-tunes with groups of 1 + 6 and no in-batch negatives (the default here).

In-batch negatives (``in_batch_negatives=True``): every query is also scored against the
documents of all other groups in the batch, so ``scores`` is ``[B, B*n]`` with column
``b*n + j`` = (query, document j of group b), and the positive of query b sits at column
``b*n + positive_index[b]``. The loss is defined for any reranker; it is only *cheap* for
bi-encoders (B*n document embeddings reused by all B queries), whereas a cross-encoder has to
run B*B*n pairs, so the trainer only offers it for ``kind: bi``. Another group's documents are
assumed not to answer this query (true for distinct questions; duplicates are the user's call).

The temperature matters: cross-encoder logits are unbounded and are used at ``tau = 1``
(FlagEmbedding's reranker fine-tuning, the recipe RADIO follows), whereas cosine similarities of
a bi-encoder live in [-1, 1] and need a small ``tau`` (FlagEmbedding's embedder default 0.02) to
form a peaked distribution at all.
"""

from __future__ import annotations

import torch

from raglign.objectives.common import check_scores, masked_log_softmax


def infonce(scores: torch.Tensor, temperature: float = 1.0,
            positive_index: int | torch.Tensor = 0, in_batch_negatives: bool = False,
            mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean InfoNCE loss over the batch.

    Args:
        scores: ``[B, n]`` reranker scores of each query's own group, or ``[B, B*n]`` (all groups
            of the batch, group-major) when ``in_batch_negatives``.
        temperature: ``tau`` in ``exp(score / tau)``.
        positive_index: the positive's index within its group: one int for all, or ``[B]`` longs.
        in_batch_negatives: see the module docstring for the score layout.
        mask: ``[B, n]`` (or ``[B, B*n]``) booleans, False for padding documents.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    mask = check_scores(scores, None, mask, "")
    batch, width = scores.shape
    pos = torch.as_tensor(positive_index, device=scores.device, dtype=torch.long)
    pos = pos.expand(batch) if pos.dim() == 0 else pos
    if pos.shape != (batch,):
        raise ValueError(f"positive_index must be an int or shape [{batch}], got {tuple(pos.shape)}")
    if in_batch_negatives:
        if width % batch:
            raise ValueError(f"in-batch scores must be [B, B*n]; {width} columns for B={batch}")
        pos = torch.arange(batch, device=scores.device) * (width // batch) + pos
    if bool(((pos < 0) | (pos >= width)).any()):
        raise ValueError(f"positive_index out of range for {width} documents")
    if not bool(mask.gather(1, pos[:, None]).all()):
        raise ValueError("a positive document is masked out")
    logp = masked_log_softmax(scores / temperature, mask)
    return -logp.gather(1, pos[:, None]).squeeze(1).mean()
