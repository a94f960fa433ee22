"""Reranker training objectives: pure functions of a ``[B, n]`` score tensor.

Each module holds one loss's maths (``infonce``, ``kl``, ``emdr``, ``supervised``, G-Rerank's
``gumbel`` mask, ``rrpo``), tested against explicit computations without a reranker or a
cluster. ``raglign train`` reaches them through its losses (:mod:`raglign.training.losses`),
which map a training batch onto these arguments; the objectives' names are registered in
``raglign.training_config.OBJECTIVES``.
"""

from __future__ import annotations

from raglign.objectives.emdr import emdr
from raglign.objectives.infonce import infonce
from raglign.objectives.kl import base_anchor, geometric_mix, kl_distill, replug_lsr
from raglign.objectives.supervised import cosent, supervised

__all__ = ["base_anchor", "cosent", "emdr", "geometric_mix", "infonce", "kl_distill", "replug_lsr",
           "supervised"]
