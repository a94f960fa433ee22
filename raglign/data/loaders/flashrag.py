"""FlashRAG's dataset format: ``{id, question, golden_answers, choices?, metadata?}`` JSONL.

``metadata`` is merged into ``meta``. For multiple-choice sets FlashRAG may store a golden answer
as the index of the right choice; with ``choices`` present an integer answer is turned into the
choice's letter (A, B, …), the same answer convention as the ``mmlu`` loader.
"""

from __future__ import annotations

from raglign.data.loaders.base import Fields, Format, Record, question_id, read_json_records, rest_meta
from raglign.data.schema import make_row

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def to_row(rec: Record) -> dict:
    f = Fields(rec)
    r = f.obj(rec.raw)
    question = f.str(r, "question")
    qid = f.id(r, "id", optional=True) or question_id(question)
    choices = f.str_list(r, "choices", optional=True)
    raw_answers = f.get(r, "golden_answers")
    if isinstance(raw_answers, (str, int)) and not isinstance(raw_answers, bool):
        raw_answers = [raw_answers]
    if not isinstance(raw_answers, list):
        raise f.error("golden_answers", "expected a list of strings")
    answers = []
    for i, a in enumerate(raw_answers):
        if isinstance(a, int) and not isinstance(a, bool) and choices is not None:
            if not 0 <= a < len(choices):
                raise f.error(f"golden_answers[{i}]", f"choice index {a} out of range for "
                              f"{len(choices)} choices")
            a = LETTERS[a]
        answers.append(f.check_str(a, f"golden_answers[{i}]", allow_empty=True))
    meta = rest_meta(r, {"id", "question", "golden_answers", "choices", "metadata"})
    metadata = f.get(r, "metadata", optional=True)
    if metadata is not None:
        meta.update(f.obj(metadata, "metadata"))
    meta["dataset"] = "flashrag"
    return make_row(qid, question, answers, [], choices, meta)


FORMAT = Format("flashrag", "FlashRAG {id, question, golden_answers, choices?, metadata?} JSONL",
                read_json_records, to_row)
