"""Pointwise binary cross entropy on gold relevance labels (the "supervised" baseline).

``L = mean over real documents of BCE(sigmoid(score / T), label)``. Chosen over a listwise
softmax because labels here are not one-hot in general: HotpotQA groups carry two gold
documents, ARL2's judge gives graded labels ("partially relevant" = 0.5) and some groups have
no positive at all, all of which BCE takes as they are, whereas a listwise cross entropy needs
a distribution over each group. It is also the loss sentence-transformers' CrossEncoder uses
for labelled pairs (``BinaryCrossEntropyLoss``), so a model trained here behaves like one
trained there. Every real (query, document) pair counts equally, so the mean is over pairs,
not over groups.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from raglign.objectives.common import check_scores, masked_sum


def supervised(scores: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0,
               mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean BCE-with-logits of ``scores / temperature`` against ``labels`` in [0, 1]."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    mask = check_scores(scores, labels, mask, "labels")
    target = labels.to(scores.dtype)
    if bool(((target < 0) | (target > 1))[mask].any()):
        raise ValueError("labels must lie in [0, 1]")
    per_pair = F.binary_cross_entropy_with_logits(scores / temperature, target, reduction="none")
    return masked_sum(per_pair, mask).sum() / mask.sum()
