"""2WikiMultihopQA: HotpotQA's shape plus ``evidences`` ([subject, relation, object] triples).

Mapped exactly like HotpotQA (:func:`hotpotqa.context_row`); ``type``, ``evidences`` and any
other field (``entity_ids`` in the dev set) are kept in ``meta``.
"""

from __future__ import annotations

from raglign.data.loaders.base import Format, Record, read_json_records
from raglign.data.loaders.hotpotqa import context_row


def to_row(rec: Record) -> dict:
    return context_row(rec, "2wiki")


FORMAT = Format("2wiki", "2WikiMultihopQA JSON (list or JSONL, .gz ok)", read_json_records, to_row)
