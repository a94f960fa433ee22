"""One query ready for labelling: a canonical row becomes an :class:`Item` (the gold alias the
likelihood signals condition on, and the documents as the generator reads them), or the reason
it cannot be labelled.

It lives beside the signals, not in the labelling job, because every reader of a labelled
query starts from the same item: the label job, G-Rerank's ablation and the training tables of
the likelihood objectives (``pipeline/lm_table.py``) must pick the same alias and the same
documents, or a reranker would be trained on another answer than the one it was labelled with.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from raglign.metrics import normalize_answer

Doc = tuple[str | None, str]


@dataclass
class Item:
    """One query ready for labelling: its row, the gold answer alias used, its documents."""

    row: dict[str, Any]
    answer: str
    docs: list[Doc]

    @property
    def question(self) -> str:
        return self.row["question"]

    @property
    def choices(self) -> tuple[str, ...] | None:
        choices = self.row.get("choices")
        return tuple(choices) if choices else None

    @property
    def retrieval_scores(self) -> list[float]:
        """Retrieval scores, or ``-rank`` for all candidates when any score is missing (a
        rank is the only retrieval evidence every candidate list has)."""
        scores = [c.get("score") for c in self.row["candidates"]]
        if any(s is None for s in scores):
            return [-float(i) for i in range(len(scores))]
        return [float(s) for s in scores]


def gold_answers(row: Mapping[str, Any]) -> list[str]:
    """The row's non-empty gold answer strings."""
    return [a for a in (row.get("answers") or []) if isinstance(a, str) and a.strip()]


def pick_answer(answers: list[str], candidates: list[Mapping[str, Any]], policy: str) -> str:
    """The gold alias the likelihood signals condition on.

    ``first``: the dataset's first alias. ``best``: the alias that the most candidate documents
    contain (SQuAD-normalised substring match; ties go to the earlier alias), i.e. the surface
    form the retrieved evidence actually states — scoring an alias no document uses measures
    the LLM's prior rather than the documents. Falls back to the first alias.
    """
    answers = [a for a in answers if a and a.strip()]
    if policy == "first" or len(answers) == 1:
        return answers[0]
    texts = [normalize_answer(f"{c.get('title') or ''} {c.get('text') or ''}") for c in candidates]
    best, best_hits = answers[0], -1
    for a in answers:
        na = normalize_answer(a)
        hits = sum(1 for t in texts if na and f" {na} " in f" {t} ")
        if hits > best_hits:
            best, best_hits = a, hits
    return best


def prepare_item(row: Mapping[str, Any], policy: str) -> Item | str:
    """An :class:`Item`, or the reason the row cannot be labelled."""
    cands = row.get("candidates") or []
    if not cands:
        return "no candidates"
    answers = gold_answers(row)
    if not answers:
        return "no answers"
    docs = [(c.get("title") or None, c.get("text") or "") for c in cands]
    return Item(dict(row), pick_answer(answers, cands, policy), docs)
