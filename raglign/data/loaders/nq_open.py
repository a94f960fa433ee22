"""NQ-open (``{question, answer[]}`` JSONL): questions and answer sets, no candidates.

NQ-open has no ids; a row's id is the hash of its question text (:func:`base.question_id`),
not its line number, so it survives filtering and re-ordering and equals the id the ``dpr``
loader gives the same question in the NQ oracle file.
"""

from __future__ import annotations

from raglign.data.loaders.base import Fields, Format, Record, question_id, read_json_records, rest_meta
from raglign.data.schema import make_row


def to_row(rec: Record) -> dict:
    f = Fields(rec)
    r = f.obj(rec.raw)
    question = f.str(r, "question")
    answers = f.str_list(r, "answer", allow_single=True)
    meta = rest_meta(r, {"question", "answer"})
    meta["dataset"] = "nq-open"
    return make_row(question_id(question), question, answers, [], None, meta)


FORMAT = Format("nq-open", "NQ-open {question, answer[]} JSONL (.gz ok)", read_json_records, to_row)
