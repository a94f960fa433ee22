"""HotpotQA (distractor and fullwiki JSON): context paragraphs become candidates.

Record: ``_id, question, answer, type, level, supporting_facts [[title, sent_id]],
context [[title, [sentences]]]``. A paragraph's text is its sentences joined with "" (HotpotQA
sentences carry their own leading spaces), its doc_id is its Wikipedia title — the key of
HotpotQA's title → sentences corpus, so candidates join with that corpus. Gold = the titles in
``supporting_facts``; a row without supporting facts (the test set) has ``is_gold`` null, not
false, because the label is unknown rather than negative. 2WikiMultihopQA shares this shape and
this mapping (see :mod:`twowiki`).
"""

from __future__ import annotations

from typing import Any

from raglign.data.loaders.base import Fields, Format, Record, read_json_records, rest_meta, unique_ids
from raglign.data.schema import candidate, make_row


def context_candidates(f: Fields, r: dict, ) -> tuple[list[dict], dict[str, Any]]:
    """Candidates from ``context`` and gold from ``supporting_facts``; also the meta they imply."""
    context = f.list(r, "context", optional=True) or []
    titles, texts = [], []
    for i, para in enumerate(context):
        if not (isinstance(para, list) and len(para) == 2 and isinstance(para[1], list)):
            raise f.error(f"context[{i}]", "expected [title, [sentences]]")
        titles.append(f.check_str(para[0], f"context[{i}][0]"))
        texts.append("".join(f.check_str(s, f"context[{i}][1][{j}]", allow_empty=True)
                             for j, s in enumerate(para[1])))
    facts = f.list(r, "supporting_facts", optional=True)
    meta: dict[str, Any] = {}
    gold: set[str] | None = None
    if facts is not None:
        gold = set()
        for k, fact in enumerate(facts):
            if not (isinstance(fact, list) and len(fact) == 2 and isinstance(fact[0], str)
                    and isinstance(fact[1], int) and not isinstance(fact[1], bool)):
                raise f.error(f"supporting_facts[{k}]", "expected [title, sentence_id]")
            gold.add(fact[0])
        meta["supporting_facts"] = facts
        missing = sorted(gold - set(titles)) if context else []
        if missing:  # fullwiki: retrieved context may miss a gold page; say so rather than hide it
            meta["gold_titles_missing"] = missing
    cands = [candidate(doc_id, title, text, None, None if gold is None else title in gold)
             for doc_id, title, text in zip(unique_ids(titles), titles, texts)]
    return cands, meta


def context_row(rec: Record, dataset: str) -> dict:
    """The canonical row of a HotpotQA-shaped record (HotpotQA, 2WikiMultihopQA)."""
    f = Fields(rec)
    r = f.obj(rec.raw)
    qid = f.id(r, "_id")
    question = f.str(r, "question")
    answer = f.str(r, "answer", optional=True, allow_empty=True)
    cands, meta = context_candidates(f, r)
    meta.update(rest_meta(r, {"_id", "question", "answer", "context", "supporting_facts"}))
    meta["dataset"] = dataset
    return make_row(qid, question, [] if answer is None else [answer], cands, None, meta)


def to_row(rec: Record) -> dict:
    return context_row(rec, "hotpotqa")


FORMAT = Format("hotpotqa", "HotpotQA distractor/fullwiki JSON (list or JSONL, .gz ok)",
                read_json_records, to_row)
