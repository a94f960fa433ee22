"""The signals' requests as rows of a Ray Dataset, for the ``ray.data.llm`` backends.

A request row carries what the backends' preprocess functions read (``question``,
``candidates``, ``answer``, ``choices``; :func:`raglign.models.vllm_backend.task_inputs`), its
kind (``score`` or a generation task of :data:`raglign.prompts.TASKS`), the request's own
sampling settings (:attr:`raglign.signals.base.Generate.sampling`, one struct column) and where
its result goes: the shard, a stable key, and how many requests the shard sent.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from typing import Any

import pyarrow as pa

from raglign.pipeline.label.config import LabelConfig
from raglign.pipeline.shards import SHARD_COL
from raglign.signals.base import Generate, Request, Score, Signal
from raglign.signals.items import Item, prepare_item

# Request-row columns (besides question, candidates, answer, choices, id).
KIND, KEY, TOTAL, PARAMS = "_raglign_kind", "_raglign_key", "_raglign_total", "_raglign_params"

REQUEST_SCHEMA = pa.schema([
    ("id", pa.string()), ("question", pa.string()),
    ("candidates", pa.list_(pa.struct([("title", pa.string()), ("text", pa.string())]))),
    ("answer", pa.string()), ("choices", pa.list_(pa.string())),
    (SHARD_COL, pa.string()), (KEY, pa.string()), (TOTAL, pa.int64()), (KIND, pa.string()),
    (PARAMS, pa.struct([("max_new_tokens", pa.int64()), ("temperature", pa.float64()),
                        ("top_p", pa.float64()), ("seed", pa.int64())])),
])


def request_key(req: Request) -> str:
    """A stable digest of a request: the same prompt and parameters give the same key in the
    expansion task and in the finishing actor (Python's ``hash`` is salted per process)."""
    blob = json.dumps([type(req).__name__, asdict(req)], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def request_row(req: Request, row_id: str, shard: str, key: str, total: int) -> dict[str, Any]:
    """The request as a row for the backends' preprocess functions (their column names:
    question, candidates, answer, choices; ``id`` names the first row that asked for it)."""
    gen = isinstance(req, Generate)
    return {
        "id": row_id, "question": req.question,
        "candidates": [{"title": t, "text": x} for t, x in req.docs],
        "answer": req.answer, "choices": list(req.choices) if req.choices else None,
        SHARD_COL: shard, KEY: key, TOTAL: total, KIND: req.task if gen else "score",
        PARAMS: req.sampling if gen else None,
    }


def expand(rows: list[dict], shard: str, signals: list[Signal], cfg: LabelConfig) -> list[dict]:
    """One row per unique request of ``rows`` (rows that will be rejected ask for nothing)."""
    unique: dict[str, tuple[Request, str]] = {}
    for row in rows:
        item = prepare_item(row, cfg.answer_alias)
        if isinstance(item, Item):
            for s in signals:
                for req in s.requests(item, cfg):
                    unique.setdefault(request_key(req), (req, row["id"]))
    return [request_row(req, rid, shard, key, len(unique)) for key, (req, rid) in unique.items()]


def request_kinds(signals: list[Signal], cfg: LabelConfig) -> set[str]:
    """Which request kinds the job sends ("score" and/or generation tasks), asked of the
    signals on a one-document probe item: a signal's request kinds depend on the config, not
    on the data. Used to start only the processors a job needs (each holds its own actors)."""
    probe = Item({"id": "probe", "question": "q", "answers": ["a"],
                  "candidates": [{"title": None, "text": "d"}]}, "a", [(None, "d")])
    return {"score" if isinstance(r, Score) else r.task
            for s in signals for r in s.requests(probe, cfg)}
