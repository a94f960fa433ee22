"""Shape checks and masked softmax shared by every objective.

Groups of candidates differ in length (a query may have fewer than k retrieved documents), so
every loss takes a ``[B, n]`` score tensor plus an optional boolean ``mask`` (True = a real
document, False = padding). Padding must get exactly zero probability and zero gradient: a
large negative fill would leak ``exp(-1e4)``-sized mass in float16/bfloat16 and a ``0 * -inf``
product gives NaN, so masked entries are written as ``-inf`` before ``log_softmax`` and the
products that would touch them are selected away with ``torch.where``.
"""

from __future__ import annotations

import torch


def check_scores(scores: torch.Tensor, other: torch.Tensor | None, mask: torch.Tensor | None,
                 other_name: str) -> torch.Tensor:
    """The boolean mask for ``scores`` ([B, n]); raise ValueError when shapes disagree."""
    if scores.dim() != 2:
        raise ValueError(f"scores must be [batch, n_docs], got shape {tuple(scores.shape)}")
    if other is not None and tuple(other.shape[:2]) != tuple(scores.shape):
        raise ValueError(f"{other_name} shape {tuple(other.shape)} does not match scores "
                         f"{tuple(scores.shape)}")
    if mask is None:
        return torch.ones_like(scores, dtype=torch.bool)
    if tuple(mask.shape) != tuple(scores.shape):
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match scores {tuple(scores.shape)}")
    mask = mask.to(device=scores.device, dtype=torch.bool)
    if not bool(mask.any(dim=1).all()):
        raise ValueError("every row of mask needs at least one real document")
    return mask


def masked_log_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``log_softmax`` over the last axis with masked entries at ``-inf`` (probability 0)."""
    return torch.log_softmax(logits.masked_fill(~mask, float("-inf")), dim=-1)


def masked_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over the last axis of ``values`` where ``mask`` is True (NaN/inf elsewhere ignored)."""
    return torch.where(mask, values, torch.zeros_like(values)).sum(dim=-1)
