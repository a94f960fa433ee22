"""``attention``: the answer tokens' attention mass on each document (ADist).

ADist distils the share of attention the generator's answer tokens pay to each document,
weighted by value norms (α_k ||v_k||) and averaged over layers, heads and answer tokens. It is
read from the parallel-prefill engine, where each document's keys are a separate block, so the
mass per document is well defined and not biased by its position in a long prompt. There is no
concat-mode variant: in one concatenated prompt a document's attention mass also measures where
it sits, which is exactly the bias parallel prefill removes.
"""

from __future__ import annotations

from raglign.signals.base import Labels, Signal


class Attention(Signal):
    name = "attention"
    summary = "answer tokens' value-weighted attention mass per document (ADist)"
    higher_is_better = True  # the answer attends to this document more
    contexts = ("parallel",)  # no concat variant: see the module docstring

    def engine_use(self, context):
        return "reads the answer tokens' attention weights"

    def compute(self, item, results, models, cfg):
        cache = models.engine_cache(item)
        return Labels([float(v) for v in models.engine.attention_mass(cache, item.answer)])
