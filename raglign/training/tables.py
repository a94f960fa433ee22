"""Mined training rows (``raglign mine`` output) as one validated table, for the objectives whose
registry line names a per-document field (``labels``, ``target``, ``lm_logprob``).

The whole table is read and checked in the driver before any worker starts, so a bad row stops
the job with its file, record and field instead of failing a worker mid-run. A field's checks
hold for every objective that reads it; an objective's own rule is its
:meth:`~raglign.training.losses.score.ScoreLoss.row_error` (InfoNCE: exactly one positive).
(Canonical rows, for the objectives that run a generator, are
:func:`raglign.pipeline.lm_table.load_lm_table`.)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from raglign import storage
from raglign.data.io import parquet_files, read_file
from raglign.errors import DataError
from raglign.training.loss import SCORE_LOSSES
from raglign.training_config import OBJECTIVES

LABEL_TOLERANCE = 1e-3  # how far a target row may sum from 1 (float32 writers round)

# What a missing field means: which `raglign mine` output the objective trains on.
_WRITTEN_BY = {"labels": "groups (`raglign mine LABELLED OUT --signal FIELD`)",
               "target": "soft targets (`raglign mine LABELLED OUT --targets "
                         "pdist|loop|adist|replug`)",
               "lm_logprob": "per-document answer log-probabilities (`raglign mine "
                             "LABELLED OUT --lm-logprobs`)"}


def _check_values(values: Any, n_docs: int, objective: str, field: str, src: str, rec) -> list[float]:
    if not isinstance(values, list) or len(values) != n_docs:
        got = len(values) if isinstance(values, list) else type(values).__name__
        raise DataError(src, rec, field, f"expected a list of {n_docs} numbers (one per doc), got {got}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise DataError(src, rec, field, f"expected finite numbers, got {v!r}")
        out.append(float(v))
    if field == "labels":
        if any(v < 0 or v > 1 for v in out):
            raise DataError(src, rec, field, "labels must lie in [0, 1]")
    elif field == "target":
        if any(v < 0 for v in out) or abs(sum(out) - 1.0) > LABEL_TOLERANCE:
            raise DataError(src, rec, field, f"a target must be a distribution (>= 0, sums to 1; "
                                             f"sums to {sum(out):.6f})")
    elif field == "lm_logprob" and any(v > 1e-6 for v in out):
        raise DataError(src, rec, field, "log-probabilities must be <= 0")
    error = SCORE_LOSSES[objective].row_error(out)
    if error is not None:
        raise DataError(src, rec, field, error)
    return out


def load_train_table(path: str, objective: str, limit: int | None = None,
                     exclude: Callable[[str], bool] | None = None,
                     ) -> tuple[pa.Table, dict[str, list]]:
    """Validated training rows as a compact table ``{id, question, docs: [str], values: [float]}``.

    ``docs`` are the texts the reranker sees (:func:`~raglign.models.rerankers.doc_text`);
    ``values`` is the objective's per-document field (``labels``, ``target`` or
    ``lm_logprob``). Rows whose id ``exclude`` accepts (held out for validation) are skipped
    before ``limit`` counts. The second value is provenance for the model card: the distinct
    values of the mining columns ``method``/``signal``/``temperature`` where the rows carry them.
    """
    from raglign.models.rerankers import doc_text

    field = OBJECTIVES[objective].rows
    ids, questions, docs, values = [], [], [], []
    provenance: dict[str, list] = {}
    for f in parquet_files(path):
        src = str(f)
        table = read_file(f)
        for col in ("question", "docs", field):
            if col not in table.column_names:
                raise DataError(src, None, col, f"missing column; objective {objective!r} trains "
                                                f"on {_WRITTEN_BY[field]}; columns are "
                                                f"{table.column_names}")
        for col in ("method", "signal", "temperature"):
            if col in table.column_names:
                seen = provenance.setdefault(col, [])
                seen.extend(v for v in table.column(col).unique().to_pylist() if v not in seen)
        for i, row in enumerate(table.select(
                [c for c in ("id", "question", "docs", field) if c in table.column_names]).to_pylist()):
            rec = row.get("id") or i
            rid = str(row.get("id") if row.get("id") is not None else f"{storage.name(f)}:{i}")
            if exclude is not None and exclude(rid):
                continue
            q = row["question"]
            if not isinstance(q, str) or not q.strip():
                raise DataError(src, rec, "question", "must be a non-empty string")
            ds = row["docs"]
            if not isinstance(ds, list) or not ds:
                raise DataError(src, rec, "docs", "expected a non-empty list of documents")
            texts = []
            for j, d in enumerate(ds):
                if not isinstance(d, dict) or not isinstance(d.get("text"), str):
                    raise DataError(src, rec, f"docs[{j}].text", "missing or not a string")
                texts.append(doc_text(d.get("title"), d["text"]))
            values.append(_check_values(row[field], len(ds), objective, field, src, rec))
            ids.append(rid)
            questions.append(q)
            docs.append(texts)
            if limit is not None and len(ids) >= limit:
                break
        if limit is not None and len(ids) >= limit:
            break
    table = pa.table({"id": ids, "question": questions, "docs": docs, "values": values})
    return table, provenance
