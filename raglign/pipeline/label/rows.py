"""Labelling a batch of rows, the same on every backend: each signal's requests for the batch
are run together (by the in-process generator, or looked up in the results a ``ray.data.llm``
backend sent back), then each signal turns the results into one value per candidate.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from raglign.pipeline.label.config import LabelConfig
from raglign.pipeline.shards import COUNTS_COL, REJECT_COL
from raglign.signals.base import Models, Signal
from raglign.signals.items import Item, prepare_item


def model_needs(signals: list[Signal], cfg: LabelConfig) -> set[str]:
    return set().union(*(s.needs(cfg) for s in signals))


def load_models(cfg: LabelConfig, needs: set[str]) -> Models:
    """The models ``needs`` asks for; the engine shares the generator's weights."""
    models = Models()
    if needs & {"generator", "engine"}:
        from raglign.models.generator_spec import build_generator

        gen = build_generator(cfg.generator)  # transformers: signals read its model and engine
        models.generator, models.tokenizer = gen, gen.tokenizer
        if "engine" in needs:
            from raglign.engine import DocumentEngine

            models.engine = DocumentEngine(gen.model, gen.tokenizer)
    if "encoder" in needs:
        from raglign.models.encoders import load_encoder

        device = cfg.generator.device
        models.encoder = load_encoder(cfg.encoder, device=None if device == "auto" else device)
    return models


def label_rows(rows: list[dict], signals: list[Signal], models: Models, cfg: LabelConfig,
               run: Callable | None = None) -> list[dict]:
    """Label a batch of canonical rows; each output row carries ``_reject`` (a reason or None)
    and ``_counts`` (JSON counters such as unparseable judge outputs).

    ``run(requests) -> {request: result}`` executes the generator requests; by default the
    in-process generator of ``models`` (see :func:`raglign.signals.execute.run_requests`).
    """
    items = [prepare_item(r, cfg.answer_alias) for r in rows]
    requests = [q for it in items if isinstance(it, Item) for s in signals for q in s.requests(it, cfg)]
    if run is None:
        from raglign.signals.execute import run_requests

        def run(reqs):
            return run_requests(reqs, models.generator)
    results = run(requests) if requests else {}
    out = []
    for row, it in zip(rows, items):
        if isinstance(it, str):
            out.append({**row, REJECT_COL: it, COUNTS_COL: None})
            continue
        cands = [dict(c) for c in row["candidates"]]
        extra: dict[str, Any] = {}
        counts: dict[str, int] = {}
        for s in signals:
            labels = s.compute(it, results, models, cfg)
            for c, v in zip(cands, labels.values, strict=True):
                c[s.name] = v
            extra.update(labels.columns)
            for k, v in labels.counts.items():
                counts[k] = counts.get(k, 0) + v
        models.release()
        out.append({**row, "candidates": cands, **extra, REJECT_COL: None,
                    COUNTS_COL: json.dumps(counts, sort_keys=True)})
    return out


def output_schema(schema: pa.Schema, signals: list[Signal]) -> pa.Schema:
    """``schema`` with one float64 candidate field per signal, the signals' top-level columns
    and the helper columns. Fixed up front (not inferred per batch) so that every block of a
    job has one schema, even when a batch's values are all null."""
    idx = schema.get_field_index("candidates")
    struct = schema.field(idx).type.value_type
    fields = [f for f in struct if f.name not in {s.name for s in signals}]
    fields += [pa.field(s.name, pa.float64()) for s in signals]
    schema = schema.set(idx, pa.field("candidates", pa.list_(pa.struct(fields))))
    for s in signals:
        for name, typ in s.columns.items():
            if name in schema.names:
                schema = schema.remove(schema.get_field_index(name))
            schema = schema.append(pa.field(name, typ))
    for name, typ in ((REJECT_COL, pa.string()), (COUNTS_COL, pa.string())):
        if name not in schema.names:
            schema = schema.append(pa.field(name, typ))
    return schema
