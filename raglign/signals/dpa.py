"""``dpa``: does the LLM answer correctly with that document alone, mixed with retrieval rank
(DPA-RAG).

DPA-RAG labels a document by the LLM's preference: positive when the LLM, reading that document
alone, answers correctly. Correctness c_i ∈ {0, 1} uses ``dpa.correct`` (``subem`` by default:
the gold answer appears in the generation, as DPA-RAG checks) on the same greedy single-document
generations as ``answer_quality``. The binary label is mixed with the retrieval rank r_i
(0-based, candidate order, n candidates):

    dpa_i = α · c_i + (1 - α) · (1 - r_i / n),   α = ``dpa.alpha`` = 0.5

With α ≥ 0.5 every correct document outranks every incorrect one and the retriever's order
breaks ties within each group (rank 0 scores 1, the last rank 1/n, so ties never remain);
α < 0.5 lets a high retrieval rank outweigh correctness.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from raglign.config import StrictModel
from raglign.signals.answer_quality import answer_scores, single_doc_answers
from raglign.signals.base import Labels, Signal


class DpaOptions(StrictModel):
    """``dpa:`` DPA-RAG: α·correct + (1-α)·(1 - rank/n)."""

    alpha: float = Field(0.5, ge=0.0, le=1.0)
    correct: Literal["subem", "em"] = "subem"


def dpa_mix(correct: list[float | None], alpha: float) -> list[float | None]:
    n = len(correct)
    return [None if c is None else alpha * c + (1 - alpha) * (1 - r / n)
            for r, c in enumerate(correct)]


class DPA(Signal):
    name = "dpa"
    summary = "α·[LLM correct with d_i alone] + (1-α)·(1 - rank/n) (DPA-RAG)"
    higher_is_better = True  # correct with this document, then higher in retrieval

    def requests(self, item, cfg):
        return single_doc_answers(item, cfg)

    def compute(self, item, results, models, cfg):
        correct = answer_scores(item, results, cfg, cfg.dpa.correct)
        return Labels(dpa_mix(correct, cfg.dpa.alpha))
