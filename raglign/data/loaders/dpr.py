"""DPR / FiD-style retrieval results: ``{id?, question, answers | answer, ctxs[...]}``.

Each ``ctxs`` entry ``{id?, title, text, score?, hasanswer?, isgold?}`` becomes a candidate in
file order (the retriever's rank). ``is_gold`` is ``isgold`` when present and null otherwise:
``hasanswer`` is only a string match of an answer in the passage, so it is kept separately as
the extra candidate field ``has_answer`` instead of being passed off as gold. Scores may be
numbers or numeric strings (DPR's retriever writes strings). A context without an ``id`` gets a
content hash, so the same passage has the same doc_id in every row. Rows without an ``id`` get
the hash of their question (:func:`base.question_id`). Other fields (``nq_annotated_gold`` …)
stay in ``meta``.
"""

from __future__ import annotations

import math
from typing import Any

from raglign.data.loaders.base import (Fields, Format, Record, question_id, read_json_records,
                                       rest_meta, stable_id, unique_ids)
from raglign.data.schema import candidate, make_row


def ctx_candidates(f: Fields, ctxs: list, key: str = "ctxs") -> list[dict]:
    """Candidates from a DPR-style list of passage objects (also used by the ``hf`` loader)."""
    out, ids = [], []
    for j, c in enumerate(ctxs):
        where = f"{key}[{j}]"
        c = f.obj(c, where)
        title = f.str(c, "title", f"{where}.title", optional=True, allow_empty=True) or ""
        text = f.str(c, "text", f"{where}.text", allow_empty=True)
        ids.append(f.id(c, "id", f"{where}.id", optional=True) or stable_id(title, text))
        cand = candidate("", title, text, _score(f, c.get("score"), f"{where}.score"),
                         f.bool(c, "isgold", f"{where}.isgold"))
        has_answer = f.bool(c, "hasanswer", f"{where}.hasanswer")
        if has_answer is not None:
            cand["has_answer"] = has_answer
        out.append(cand)
    for cand, doc_id in zip(out, unique_ids(ids)):
        cand["doc_id"] = doc_id
    return out


def _score(f: Fields, value: Any, path: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise f.error(path, f"expected a number, got {value!r}")
    try:
        score = float(value)
    except ValueError:
        raise f.error(path, f"expected a number, got {value!r}") from None
    if math.isnan(score):
        raise f.error(path, "is NaN")
    return score


def to_row(rec: Record) -> dict:
    f = Fields(rec)
    r = f.obj(rec.raw)
    question = f.str(r, "question")
    key = "answers" if "answers" in r else "answer"
    answers = f.str_list(r, key, allow_single=True)
    qid = f.id(r, "id", optional=True) or question_id(question)
    cands = ctx_candidates(f, f.list(r, "ctxs"))
    meta = rest_meta(r, {"id", "question", "answers", "answer", "ctxs"})
    meta["dataset"] = "dpr"
    return make_row(qid, question, answers, cands, None, meta)


FORMAT = Format("dpr", "DPR/FiD retrieval results with ctxs (JSONL or JSON list, .gz ok)",
                read_json_records, to_row)
