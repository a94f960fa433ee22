"""Training rows for the objectives that run a frozen generator (``gumbel``, ``rrpo``).

They read *canonical* rows (question, answers, candidates: the output of ``raglign data
convert`` or ``raglign retrieve``), not mined rows: the supervision is the gold answer itself,
so there is nothing to mine. The table keeps the reranker's texts (``docs``, as in every
training table) plus what the generator's prompt needs (titles, texts, choices), the answer
alias a likelihood scores and every gold alias (for answer-quality rewards).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyarrow as pa

from raglign.data.io import parquet_files, read_file
from raglign.data.schema import validate_row
from raglign.errors import DataError


def load_lm_table(path: str, options: Any, objective: str, limit: int | None = None,
                  min_candidates: int = 1, exclude: Callable[[str], bool] | None = None,
                  ) -> tuple[pa.Table, dict[str, list]]:
    """Validated canonical rows as ``{id, question, docs: [str], titles, texts, choices,
    answer, answers}`` over each row's first ``options.n`` candidates (``options``: the
    objective's block, with ``n``, ``answer_alias`` and ``generator``).

    Every row must have at least ``min_candidates`` candidates and a non-empty answer: a row
    without them cannot train the reranker, and dropping it silently would change what a run
    means. The second value is the model card's provenance (the generator the reranker was
    trained through). Rows whose id ``exclude`` accepts (held out for validation) are skipped
    before ``limit`` counts.
    """
    from raglign.models.rerankers import doc_text
    from raglign.signals.items import Item, gold_answers, prepare_item

    cols: dict[str, list[Any]] = {k: [] for k in ("id", "question", "docs", "titles", "texts",
                                                  "choices", "answer", "answers")}
    for f in parquet_files(path):
        src = str(f)
        for i, row in enumerate(read_file(f).to_pylist()):
            rec = row.get("id") or i
            validate_row(row, src, rec)
            if exclude is not None and exclude(str(row["id"])):
                continue
            cands = (row.get("candidates") or [])[:options.n]
            item = prepare_item({**row, "candidates": cands}, options.answer_alias)
            if not isinstance(item, Item):  # the reason: "no candidates" / "no answers"
                field = "candidates" if item == "no candidates" else "answers"
                raise DataError(src, rec, field, f"{item}: objective {objective!r} trains on "
                                                 "rows with candidates and a gold answer")
            if len(cands) < min_candidates:
                raise DataError(src, rec, "candidates",
                                f"{len(cands)} candidates; objective {objective!r} needs at "
                                f"least {min_candidates}")
            cols["id"].append(str(row["id"]))
            cols["question"].append(item.question)
            cols["docs"].append([doc_text(t, x) for t, x in item.docs])
            cols["titles"].append([t for t, _ in item.docs])
            cols["texts"].append([x for _, x in item.docs])
            cols["choices"].append(list(item.choices) if item.choices else None)
            cols["answer"].append(item.answer)
            cols["answers"].append(gold_answers(row))
            if limit is not None and len(cols["id"]) >= limit:
                break
        if limit is not None and len(cols["id"]) >= limit:
            break
    schema = pa.schema([("id", pa.string()), ("question", pa.string()),
                        ("docs", pa.list_(pa.string())), ("titles", pa.list_(pa.string())),
                        ("texts", pa.list_(pa.string())), ("choices", pa.list_(pa.string())),
                        ("answer", pa.string()), ("answers", pa.list_(pa.string()))])
    return pa.table(cols, schema=schema), {"generator": [options.generator.name]}
