"""``judge``: the LLM's graded relevance label for (q, d) with the answer in view (ARL2).

ARL2 has the LLM label each document "relevant / partially relevant / not relevant" knowing the
gold answer; the reranker then learns from those labels. The labels map to 2 / 1 / 0. Generation
is greedy (a label must not change between runs) and short (``judge.max_new_tokens``). The
prompt is :data:`raglign.prompts.JUDGE_PROMPT`, beside the other tasks' prompts, so that every
backend renders it from the one place.

An output that states none of the three labels is *unparseable*: it is stored as ``null`` and
counted (``judge_unparseable`` in the job summary), never read as "not relevant" — a silent 0
would teach the reranker that the document is irrelevant when the LLM merely rambled.
"""

from __future__ import annotations

import re

from pydantic import PositiveInt

from raglign.config import StrictModel
from raglign.prompts import TASK_SAMPLING
from raglign.signals.base import Generate, Labels, Signal
from raglign.signals.items import Item


class JudgeOptions(StrictModel):
    """``judge:`` ARL2 relevance judgement: greedy, a few tokens."""

    max_new_tokens: PositiveInt = TASK_SAMPLING["judge"]["max_new_tokens"]

# Order matters: "not relevant" and "partially relevant" both contain "relevant".
_LABELS = [
    (re.compile(r"\b(not|ir|non)[\s-]*relevant\b|\bnot\b.{0,20}\brelevant\b"), 0),
    (re.compile(r"\bpartial(ly)?\b|\bsomewhat\b"), 1),
    (re.compile(r"\brelevant\b"), 2),
]


def parse_judgement(text: str) -> int | None:
    """2 / 1 / 0 for relevant / partially relevant / not relevant; None when the first
    non-empty line names none of them."""
    line = next((ln for ln in text.strip().lower().splitlines() if ln.strip()), "")
    for pattern, label in _LABELS:
        if pattern.search(line):
            return label
    return None


class Judge(Signal):
    name = "judge"
    summary = "LLM relevance label with the answer in view: 2 relevant / 1 partially / 0 not (ARL2)"
    higher_is_better = True  # 2 relevant > 1 partially > 0 not

    def requests(self, item: Item, cfg):
        return [Generate("judge", item.question, (d,), item.answer,
                         max_new_tokens=cfg.judge.max_new_tokens) for d in item.docs]

    def compute(self, item, results, models, cfg):
        labels = [parse_judgement(results[r]) for r in self.requests(item, cfg)]
        bad = sum(v is None for v in labels)
        return Labels([None if v is None else float(v) for v in labels],
                      counts={"judge_unparseable": bad, "judge_outputs": len(labels)})
