"""Options of G-Rerank's Gumbel subset mask, stated once for both of the paper's algorithms.

:class:`GumbelMaskOptions` is the mask (:func:`raglign.objectives.gumbel.stochastic_subset_mask`:
the max over k Gumbel-softmax draws of κ·w at temperature τ). Algorithm 1 (``objective: gumbel``
of ``raglign train``, :class:`raglign.training_config.GumbelOptions`) puts it on the reranker's
scores; Algorithm 2 (:class:`SamplingWeightOptions`: the ``gumbel_weight`` labelling signal,
``raglign grerank mine-weights`` and the ablation) on learnable per-document weights. Both
extend it, so the two cannot drift apart. The defaults are the paper's: τ = 0.5, κ = 1.0, k = the
generator's k2 = 5, one mask per evaluation.

The paper gives neither the number of steps nor the learning rate of Algorithm 2; the defaults
here (Adam, lr 0.1, 30 steps) move a weight by at most ~3 (Adam's step is about lr in size),
enough for κ·w to dominate unit-scale Gumbel noise, within a per-question budget that fits a CPU
(see docs/grerank.md for the measured trade-off).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt

from raglign.config import StrictModel


class GumbelMaskOptions(StrictModel):
    """The mask whose ``log M_i`` goes on the generator's attention logits of document i."""

    k: PositiveInt = Field(5, description="subset size of the relaxed top-k mask")
    tau: float = Field(0.5, gt=0)
    kappa: float = Field(1.0, gt=0)
    noise: bool = Field(True, description="False is the paper's 'w/o Gumbel' ablation")
    samples: PositiveInt = Field(1, description="Gumbel masks averaged per query (Algorithm 1) "
                                                "or per step (Algorithm 2); 1 = paper")


class SamplingWeightOptions(GumbelMaskOptions):
    """Algorithm 2 for one query: w = init, then ``steps`` Adam steps on the G-Rerank loss
    (``k`` capped at the query's number of candidates)."""

    steps: PositiveInt = 30
    lr: float = Field(0.1, gt=0)
    init: Literal["zeros", "normal"] = Field(
        "zeros", description="zeros = Algorithm 2; normal = N(0, init_std²), for the ablation, "
        "where a uniform start would hide a collapse to uniform")
    init_std: float = Field(1.0, gt=0)
    seed: int = 0
