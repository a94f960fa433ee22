"""``loo_logprob``: log p(a | q, top-K without d_i) (LOOP, leave-one-out perplexity).

LOOP's target is softmax_i(-log p(a | D_K \\ d_i, q) / T): a document matters when removing it
hurts the answer. D_K is the top ``loo.k`` candidates *in the row's candidate order* (the
retriever's ranking), ``k`` = 5 by default, the number of documents the generator reads in the
papers' pipeline (k2 = 5). Candidates ranked below K are not in the context the generator sees,
so leaving them out changes nothing: they get ``null``, never a made-up value. A query with one
candidate gets log p(a | q, no documents) for it.

``context: parallel`` runs K short answer passes over one shared document prefill (masking one
document each); ``context: concat`` writes the K-1 remaining documents into an ordinary prompt.
"""

from __future__ import annotations

from pydantic import PositiveInt

from raglign.config import StrictModel
from raglign.signals.base import Labels, LikelihoodSignal, Score
from raglign.signals.items import Item


class LooOptions(StrictModel):
    """``loo:`` LOOP: leave-one-out over the top ``k`` candidates (the generator's k2 = 5)."""

    k: PositiveInt = 5


class LeaveOneOut(LikelihoodSignal):
    name = "loo_logprob"
    summary = "log p(answer | question, top-K without d_i); null below rank K (LOOP)"
    higher_is_better = False  # removing a needed document lowers log p(a | the rest)

    def requests(self, item: Item, cfg):
        if cfg.context == "parallel":
            return []
        k = min(cfg.loo.k, len(item.docs))
        top = tuple(item.docs[:k])
        return [Score(item.question, top[:i] + top[i + 1:], item.answer, item.choices)
                for i in range(k)]

    def compute(self, item, results, models, cfg):
        k = min(cfg.loo.k, len(item.docs))
        if cfg.context == "parallel":
            cache = models.engine_cache(item)
            top = [float(v) for v in models.engine.leave_one_out(cache, item.answer, k)]
        else:
            top = [float(results[r]) for r in self.requests(item, cfg)]
        return Labels(top + [None] * (len(item.docs) - k))
