"""Parallel-prefill document engine: one document cache per query, answer likelihoods under any
document mask (hard, soft, differentiable), leave-one-out, single-document scores and attention
mass, with the ordinary concatenated prompt as the exact reference. See :mod:`.engine`."""

from raglign.engine.engine import DocCache, DocumentEngine
from raglign.masks import keep_mask, leave_one_out_masks

__all__ = ["DocCache", "DocumentEngine", "keep_mask", "leave_one_out_masks"]
