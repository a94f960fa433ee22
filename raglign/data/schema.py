"""The canonical row format every raglign stage reads and writes.

One row per query. ``candidates`` is a list of structs whose five base fields are fixed; labelling
signals append one field each (``answer_logprob``, ``rationale_score`` …), so readers must accept
extra candidate fields. ``meta`` is a JSON object serialised as a string: datasets carry different
metadata (HotpotQA type/level, MMLU subject/category, MuSiQue decomposition) and a string column
survives Parquet, pandas and Ray Data alike, where a ``map`` or a union struct does not.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa

from raglign.errors import DataError

CANDIDATE_TYPE = pa.struct(
    [
        pa.field("doc_id", pa.string()),
        pa.field("title", pa.string()),
        pa.field("text", pa.string()),
        pa.field("score", pa.float64()),
        pa.field("is_gold", pa.bool_()),
    ]
)

SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("question", pa.string(), nullable=False),
        pa.field("answers", pa.list_(pa.string())),
        pa.field("choices", pa.list_(pa.string())),
        pa.field("candidates", pa.list_(CANDIDATE_TYPE)),
        pa.field("meta", pa.string()),
    ]
)

CORPUS_SCHEMA = pa.schema(
    [
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("title", pa.string()),
        pa.field("text", pa.string(), nullable=False),
    ]
)


def candidate(doc_id: str, title: str, text: str, score: float | None = None,
              is_gold: bool | None = None) -> dict[str, Any]:
    """A candidate dict with the five base fields in schema order."""
    return {"doc_id": doc_id, "title": title, "text": text, "score": score, "is_gold": is_gold}


def make_row(id: str, question: str, answers: list[str], candidates: list[dict] | None = None,
             choices: list[str] | None = None, meta: Mapping[str, Any] | None = None) -> dict:
    """A canonical row; ``meta`` is given as a mapping and stored as JSON."""
    return {
        "id": id,
        "question": question,
        "answers": list(answers),
        "choices": None if choices is None else list(choices),
        "candidates": [] if candidates is None else list(candidates),
        "meta": json.dumps(dict(meta or {}), ensure_ascii=False, sort_keys=True),
    }


def row_meta(row: Mapping[str, Any]) -> dict[str, Any]:
    """The row's ``meta`` as a dict (empty when absent)."""
    raw = row.get("meta")
    if raw is None or raw == "":
        return {}
    return json.loads(raw) if isinstance(raw, str) else dict(raw)


def _require_str(value: Any, source: str, record: int | str, field: str, allow_empty=False) -> None:
    if not isinstance(value, str):
        raise DataError(source, record, field, f"expected a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise DataError(source, record, field, "must not be empty")


def validate_row(row: Mapping[str, Any], source: str, record: int | str) -> None:
    """Raise :class:`DataError` naming the first field of ``row`` that breaks the schema."""
    for key in ("id", "question"):
        if key not in row:
            raise DataError(source, record, key, "missing")
        _require_str(row[key], source, record, key)
    answers = row.get("answers")
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        raise DataError(source, record, "answers", "expected a list of strings")
    choices = row.get("choices")
    if choices is not None and (not isinstance(choices, list)
                                or not all(isinstance(c, str) for c in choices)):
        raise DataError(source, record, "choices", "expected a list of strings or null")
    cands = row.get("candidates")
    if cands is None:
        cands = []
    if not isinstance(cands, list):
        raise DataError(source, record, "candidates", "expected a list")
    seen: set[str] = set()
    for j, c in enumerate(cands):
        where = f"candidates[{j}]"
        if not isinstance(c, Mapping):
            raise DataError(source, record, where, "expected an object")
        for key in ("doc_id", "text"):
            if key not in c or c[key] is None:
                raise DataError(source, record, f"{where}.{key}", "missing")
        _require_str(c["doc_id"], source, record, f"{where}.doc_id")
        _require_str(c["text"], source, record, f"{where}.text", allow_empty=True)
        if c.get("title") is not None:
            _require_str(c["title"], source, record, f"{where}.title", allow_empty=True)
        score = c.get("score")
        if score is not None and (not isinstance(score, (int, float)) or isinstance(score, bool)
                                  or math.isnan(float(score))):
            raise DataError(source, record, f"{where}.score", f"expected a number, got {score!r}")
        gold = c.get("is_gold")
        if gold is not None and not isinstance(gold, bool):
            raise DataError(source, record, f"{where}.is_gold", f"expected true/false/null, got {gold!r}")
        if c["doc_id"] in seen:
            raise DataError(source, record, f"{where}.doc_id", f"duplicate doc_id {c['doc_id']!r}")
        seen.add(c["doc_id"])
    meta = row.get("meta")
    if meta is not None:
        try:
            parsed = json.loads(meta) if isinstance(meta, str) else meta
        except json.JSONDecodeError as e:
            raise DataError(source, record, "meta", f"not valid JSON: {e}") from None
        if not isinstance(parsed, Mapping):
            raise DataError(source, record, "meta", "expected a JSON object")


def to_table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Rows → an Arrow table in the canonical schema.

    Candidate fields beyond the base five (signals add them) and top-level columns beyond the
    canonical six (a row's ``rationale``, say) are kept, with types inferred from their values.
    """
    rows = list(rows)
    cand_extra: dict[str, pa.DataType] = {}
    top_extra: dict[str, pa.DataType | None] = {}
    for r in rows:
        for k, v in r.items():
            if k not in SCHEMA.names and top_extra.get(k) is None:
                top_extra[k] = None if v is None else pa.scalar(v).type
        for c in r.get("candidates") or []:
            for k, v in c.items():
                if k not in CANDIDATE_TYPE.names and k not in cand_extra and v is not None:
                    cand_extra[k] = pa.scalar(v).type
    schema = SCHEMA
    if cand_extra:
        cand_type = pa.struct(list(CANDIDATE_TYPE) + [pa.field(k, t) for k, t in cand_extra.items()])
        schema = schema.set(schema.get_field_index("candidates"),
                            pa.field("candidates", pa.list_(cand_type)))
    for k, t in top_extra.items():
        schema = schema.append(pa.field(k, t if t is not None else pa.null()))
    return pa.Table.from_pylist(rows, schema=schema)
