"""MuSiQue (JSONL as distributed, or a JSON list): paragraphs become candidates.

Record: ``id, question, answer, answer_aliases, answerable, paragraphs [{idx, title,
paragraph_text, is_supporting}], question_decomposition``. Answers are the answer followed by
its aliases (duplicates removed) — the reference set MuSiQue's own evaluation scores against.
Candidates follow the paragraphs' ``idx`` order; their doc_ids are content hashes, because
MuSiQue titles repeat within a question (several paragraphs of one page). ``meta.paragraph_idx``
keeps each candidate's original ``idx`` so ``question_decomposition[*].paragraph_support_idx``
still resolves.
"""

from __future__ import annotations

from raglign.data.loaders.base import (Fields, Format, Record, read_json_records, rest_meta,
                                       stable_id, unique_ids)
from raglign.data.schema import candidate, make_row


def to_row(rec: Record) -> dict:
    f = Fields(rec)
    r = f.obj(rec.raw)
    qid = f.id(r, "id")
    question = f.str(r, "question")
    answer = f.str(r, "answer", optional=True, allow_empty=True)
    aliases = f.str_list(r, "answer_aliases", optional=True) or []
    answers = list(dict.fromkeys(([] if answer is None else [answer]) + aliases))
    paragraphs = []
    for i, p in enumerate(f.list(r, "paragraphs")):
        where = f"paragraphs[{i}]"
        p = f.obj(p, where)
        idx = f.get(p, "idx", f"{where}.idx")
        if not isinstance(idx, int) or isinstance(idx, bool):
            raise f.error(f"{where}.idx", f"expected an integer, got {idx!r}")
        title = f.str(p, "title", f"{where}.title", allow_empty=True)
        text = f.str(p, "paragraph_text", f"{where}.paragraph_text", allow_empty=True)
        gold = f.bool(p, "is_supporting", f"{where}.is_supporting")
        paragraphs.append((idx, title, text, gold))
    idxs = [p[0] for p in paragraphs]
    if len(set(idxs)) != len(idxs):
        raise f.error("paragraphs", f"duplicate idx values {sorted(idxs)}")
    paragraphs.sort(key=lambda p: p[0])
    doc_ids = unique_ids([stable_id(title, text) for _, title, text, _ in paragraphs])
    cands = [candidate(d, title, text, None, gold)
             for d, (_, title, text, gold) in zip(doc_ids, paragraphs)]
    meta = rest_meta(r, {"id", "question", "answer", "answer_aliases", "paragraphs"})
    meta.update(dataset="musique", paragraph_idx=[p[0] for p in paragraphs])
    return make_row(qid, question, answers, cands, None, meta)


FORMAT = Format("musique", "MuSiQue JSONL or JSON list (.gz ok)", read_json_records, to_row)
