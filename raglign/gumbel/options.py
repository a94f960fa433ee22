"""Options of G-Rerank's Algorithm 2 (learnable sampling weights), shared by the ``gumbel_weight``
labelling signal, ``raglign grerank mine-weights`` and the ablation.

The paper gives τ = 0.5, κ = 1.0 and k (the generator's k2 = 5) but not the number of steps or
the learning rate of Algorithm 2; the defaults here (Adam, lr 0.1, 30 steps) move a weight by at
most ~3 (Adam's step is about lr in size), enough for κ·w to dominate unit-scale Gumbel noise,
within a per-question budget that fits a CPU (see docs/grerank.md for the measured trade-off).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt

from raglign.config import StrictModel


class SamplingWeightOptions(StrictModel):
    """Algorithm 2 for one query: w = init, then ``steps`` Adam steps on the G-Rerank loss."""

    steps: PositiveInt = 30
    lr: float = Field(0.1, gt=0)
    k: PositiveInt = Field(5, description="subset size; capped at the number of candidates")
    tau: float = Field(0.5, gt=0)
    kappa: float = Field(1.0, gt=0)
    noise: bool = Field(True, description="False is the paper's 'w/o Gumbel' ablation")
    samples: PositiveInt = Field(1, description="Gumbel masks averaged per step (1 = paper)")
    init: Literal["zeros", "normal"] = Field(
        "zeros", description="zeros = Algorithm 2; normal = N(0, init_std²), for the ablation, "
        "where a uniform start would hide a collapse to uniform")
    init_std: float = Field(1.0, gt=0)
    seed: int = 0
