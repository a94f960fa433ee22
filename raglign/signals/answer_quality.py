"""``answer_quality``: how good the generator's answer is with that document alone (RRR).

RRR rewards a document by the quality of the answer the generator writes when reading it.
The answer is generated greedily from the ordinary QA prompt holding only d_i
(``answer_quality.max_new_tokens``) and scored against all gold aliases with
:mod:`raglign.metrics`. The field holds one metric, chosen by ``answer_quality.metric``:
``f1`` (default; graded, so near-misses still rank above wrong answers), ``em`` or ``subem``.
One field per signal keeps the schema one column per name; run a second job with another
metric to get both. The generations are shared with ``dpa`` (same prompts, deduplicated).
"""

from __future__ import annotations

from typing import Literal

from pydantic import PositiveInt

from raglign.config import StrictModel
from raglign.metrics import exact_match, f1_score, sub_exact_match
from raglign.signals.base import Generate, Labels, Signal
from raglign.signals.items import Item

METRICS = {"f1": f1_score, "em": exact_match, "subem": sub_exact_match}


class AnswerQualityOptions(StrictModel):
    """``answer_quality:`` RRR: the single-document answer's quality (also the generation
    ``dpa`` reuses, so its ``max_new_tokens`` applies to both)."""

    metric: Literal["f1", "em", "subem"] = "f1"
    max_new_tokens: PositiveInt = 32


def single_doc_answers(item: Item, cfg) -> list[Generate]:
    """Greedy answer generations, one per document alone (shared by answer_quality and dpa)."""
    return [Generate("qa", item.question, (d,), choices=item.choices,
                     max_new_tokens=cfg.answer_quality.max_new_tokens) for d in item.docs]


def answer_scores(item: Item, results, cfg, metric: str) -> list[float | None]:
    fn = METRICS[metric]
    return [fn(results[r].strip(), item.row["answers"])
            for r in single_doc_answers(item, cfg)]


class AnswerQuality(Signal):
    name = "answer_quality"
    summary = "EM/F1/SubEM of the answer generated with d_i alone (RRR)"
    higher_is_better = True  # a better answer with this document alone

    def requests(self, item, cfg):
        return single_doc_answers(item, cfg)

    def compute(self, item, results, models, cfg):
        return Labels(answer_scores(item, results, cfg, cfg.answer_quality.metric))
