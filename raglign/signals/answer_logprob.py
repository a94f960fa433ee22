"""``answer_logprob``: log p(a | q, d_i), one document at a time (PDist, REPLUG, EMDR²).

The quantity behind perplexity distillation (target softmax_i(log p / T)), REPLUG's LSR and
EMDR²'s marginal. Summed over answer tokens, not averaged: the papers' targets are likelihoods of
the whole answer, and every candidate of a query scores the same answer, so length does not bias
the comparison. ``context: parallel`` scores all documents from one shared prefill with the
document engine (one document unmasked at a time); ``context: concat`` writes the ordinary QA
prompt with that document alone and scores it through the generator backend. With one document
the two are the same prompt, so they agree to float tolerance.
"""

from __future__ import annotations

from raglign.signals.base import Labels, LikelihoodSignal, Score
from raglign.signals.items import Item


class AnswerLogprob(LikelihoodSignal):
    name = "answer_logprob"
    summary = "log p(answer | question, d_i), each document alone (PDist / REPLUG / EMDR)"
    higher_is_better = True  # the answer is likelier with this document

    def requests(self, item: Item, cfg):
        if cfg.context == "parallel":
            return []
        return [Score(item.question, (d,), item.answer, item.choices) for d in item.docs]

    def compute(self, item, results, models, cfg):
        if cfg.context == "parallel":
            cache = models.engine_cache(item)
            values = models.engine.single_document(cache, item.answer)
            return Labels([float(v) for v in values])
        reqs = self.requests(item, cfg)
        return Labels([float(results[r]) for r in reqs])
