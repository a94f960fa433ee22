"""``gumbel_weight``: G-Rerank's Algorithm 2 weight per document (learnable sampling weights).

Each candidate gets one scalar weight, initialised to 0 and optimised for ``gumbel.steps`` Adam
steps on the answer's NLL under differentiable masked attention with a Gumbel relaxed top-k mask
(:func:`raglign.gumbel.weights.learn_weights`). Higher = the LLM needs the document more. The
weights are learned from the same parallel-prefill cache the other engine signals
(``answer_logprob`` in parallel context, ``loo_logprob``, ``attention``) read, so labelling all of
them in one job prefills each query once. Gumbel draws are seeded per row
(:func:`~raglign.signals.base.row_seed` of ``gumbel.seed`` and the row id): a row's weights do
not depend on its batch, and a resumed job reproduces them.
"""

from __future__ import annotations

from raglign.signals.base import Labels, Signal, row_seed


class GumbelWeight(Signal):
    """Its options block is ``gumbel:``, :class:`raglign.gumbel.options.SamplingWeightOptions`,
    kept with Algorithm 2 because training and the ablation use it too."""

    name = "gumbel_weight"
    summary = "G-Rerank Algorithm 2: learned Gumbel sampling weight per document"
    higher_is_better = True  # Algorithm 2 learned to sample this document more

    def engine_use(self, context):
        return "learns document weights through differentiable masked attention"

    def compute(self, item, results, models, cfg):
        import torch

        from raglign.gumbel.weights import learn_weights

        cache = models.engine_cache(item)
        generator = torch.Generator().manual_seed(row_seed(cfg.gumbel.seed, item.row["id"]))
        run = learn_weights(models.engine, cache, item.answer, cfg.gumbel, generator)
        return Labels(run.weights)
