"""G-Rerank's Algorithm 2: learnable sampling weights, one scalar per candidate, no reranker.

For one (question, answer) and its candidates the weights w start at 0 and take ``steps`` Adam
steps on the same loss a reranker is trained with (:func:`~raglign.objectives.gumbel.gumbel_lm_loss`:
answer NLL under the masked attention of a relaxed top-k Gumbel mask). The final w says which
documents the frozen LLM needs to produce the gold answer — a mining signal that, unlike the
single-document likelihood, can reward documents that only help *together* (multi-hop evidence).

The document cache is prefilled once and reused by every step; a step is one short pass of the
suffix + answer over it plus its backward into the n weights, so S steps cost about S answer
passes. The weights live on the CPU (n numbers) whatever device the LLM is on, which keeps the
seeded CPU generator valid everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from raglign.gumbel.options import SamplingWeightOptions
from raglign.objectives.gumbel import gumbel_lm_loss, max_mask_weight


@dataclass
class WeightRun:
    """Final weights, the Figure-4 statistic ``max softmax(w)`` before the first step and after
    every step (``steps + 1`` values), and the loss of every step."""

    weights: list[float]
    max_weight: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)


def initial_weights(n: int, options: SamplingWeightOptions,
                    generator: torch.Generator) -> torch.Tensor:
    if options.init == "zeros":
        return torch.zeros(n)
    return torch.randn(n, generator=generator) * options.init_std


def learn_weights(engine, cache, answer: str, options: SamplingWeightOptions | None = None,
                  generator: torch.Generator | None = None) -> WeightRun:
    """Run Algorithm 2 on one prefilled query. ``generator`` (CPU) draws the initial weights and
    every Gumbel sample; by default it is seeded with ``options.seed``, so a run is reproducible."""
    options = options or SamplingWeightOptions()
    if cache.num_docs == 0:
        raise ValueError("learnable sampling weights need at least one candidate document")
    generator = generator or torch.Generator().manual_seed(options.seed)
    w = torch.nn.Parameter(initial_weights(cache.num_docs, options, generator))
    optimizer = torch.optim.Adam([w], lr=options.lr)
    k = min(options.k, cache.num_docs)
    run = WeightRun(weights=[], max_weight=[float(max_mask_weight(w.detach()))])
    for _ in range(options.steps):
        optimizer.zero_grad(set_to_none=True)
        loss = gumbel_lm_loss(engine, [cache], [answer], w.unsqueeze(0), k, options.tau,
                              options.kappa, options.noise, generator, samples=options.samples)
        loss.backward()
        optimizer.step()
        run.loss.append(float(loss.detach()))
        run.max_weight.append(float(max_mask_weight(w.detach())))
    run.weights = [float(v) for v in w.detach()]
    return run
