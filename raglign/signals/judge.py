"""``judge``: the LLM's graded relevance label for (q, d) with the answer in view (ARL2).

ARL2 has the LLM label each document "relevant / partially relevant / not relevant" knowing the
gold answer; the reranker then learns from those labels. The labels map to 2 / 1 / 0. Generation
is greedy (a label must not change between runs) and short (``judge.max_new_tokens``).

An output that states none of the three labels is *unparseable*: it is stored as ``null`` and
counted (``judge_unparseable`` in the job summary), never read as "not relevant" — a silent 0
would teach the reranker that the document is irrelevant when the LLM merely rambled.
"""

from __future__ import annotations

import re

from raglign.prompts import format_document, render_messages
from raglign.signals.base import Generate, Item, Labels, Signal

JUDGE_PROMPT = (
    "You are given a question, its correct answer and a document. Judge whether the document is "
    "relevant for answering the question with that answer.\n"
    "Question: {question}\nAnswer: {answer}\nDocument: {document}\n"
    "Reply with exactly one of: relevant, partially relevant, not relevant.\nJudgement:"
)

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


def judge_prompt(tokenizer, question: str, answer: str, doc: tuple[str | None, str]) -> str:
    """The ARL2-style relevance prompt, as a user turn (chat template) or plain text."""
    content = JUDGE_PROMPT.format(question=question, answer=answer,
                                  document=format_document(*doc).strip())
    return render_messages(tokenizer, [{"role": "user", "content": content}])


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
