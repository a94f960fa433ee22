"""Corpora (``doc_id, title, text``) for retrieval: from JSONL passages, HotpotQA's title →
sentences dict, or the distinct passages of a DPR-style file.

Formats:

- ``jsonl`` — ``{id, contents}`` (FlashRAG / DPR-Wikipedia: the first line of ``contents`` is the
  title, often in double quotes, which are stripped; the rest is the text) or
  ``{id, title, text}``; ``doc_id``/``_id`` are accepted for ``id``. JSON lists and .gz work too.
- ``hotpotqa-corpus`` — one JSON object ``{title: [sentences]}``; doc_id = title and text =
  sentences joined with "", exactly the candidates the ``hotpotqa`` loader builds, so retrieved
  documents and gold labels share ids.
- ``dpr-ctxs`` — the distinct ``ctxs`` passages of a ``dpr`` input, with the doc_ids the ``dpr``
  loader gives them (e.g. a corpus holding every NQ-oracle gold passage).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from raglign.data.convert import StagedOutput, run_staged
from raglign.data.loaders import Result, load_records
from raglign.data.loaders.base import Fields, Record, open_text, read_json_records
from raglign.data.schema import CORPUS_SCHEMA
from raglign.data.summary import CorpusSummary
from raglign.errors import ConfigError, DataError, did_you_mean


def split_contents(contents: str) -> tuple[str, str]:
    """``'"Title"\\nText…'`` → ``("Title", "Text…")``: FlashRAG/DPR-Wikipedia ``contents``."""
    title, _, text = contents.partition("\n")
    title = title.strip()
    if len(title) >= 2 and title[0] == title[-1] == '"':
        title = title[1:-1]
    return title, text


def _jsonl_doc(rec: Record) -> dict:
    f = Fields(rec)
    r = f.obj(rec.raw)
    key = next((k for k in ("id", "doc_id", "_id") if k in r), "id")
    doc_id = f.id(r, key)
    if "contents" in r:
        title, text = split_contents(f.str(r, "contents", allow_empty=True))
    else:
        title = f.str(r, "title", optional=True, allow_empty=True) or ""
        text = f.str(r, "text", allow_empty=True)
    return {"doc_id": doc_id, "title": title, "text": text}


def _read_jsonl(path: str | os.PathLike) -> Iterator[Result]:
    for rec in read_json_records(path):
        if rec.error is not None:
            yield Result(rec, None, rec.error)
            continue
        try:
            yield Result(rec, _jsonl_doc(rec), None)
        except DataError as e:
            yield Result(rec, None, e)


def _read_hotpotqa_corpus(path: str | os.PathLike) -> Iterator[Result]:
    source = str(path)
    with open_text(path) as fh:
        try:
            data = json.load(fh)
        except json.JSONDecodeError as e:
            raise DataError(source, None, None,
                            f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    if not isinstance(data, dict):
        raise DataError(source, None, None, "expected a JSON object {title: [sentences]}")
    for i, (title, sentences) in enumerate(data.items(), 1):
        rec = Record(source, i, {title: sentences})
        f = Fields(rec)
        if isinstance(sentences, str):
            sentences = [sentences]
        if not isinstance(sentences, list):
            yield Result(rec, None, f.error(title, "expected a list of sentences"))
            continue
        try:
            text = "".join(f.check_str(s, f"{title}[{j}]", allow_empty=True)
                           for j, s in enumerate(sentences))
        except DataError as e:
            yield Result(rec, None, e)
            continue
        yield Result(rec, {"doc_id": title, "title": title, "text": text}, None)


def _read_dpr_ctxs(path: str | os.PathLike) -> Iterator[Result]:
    seen: set[str] = set()
    n = 0
    for row in load_records("dpr", path):
        for c in row["candidates"]:
            if c["doc_id"] not in seen:
                seen.add(c["doc_id"])
                n += 1
                yield Result(Record(str(path), n, c), {k: c[k] for k in ("doc_id", "title", "text")},
                             None)


CORPUS_FORMATS = {"jsonl": _read_jsonl, "hotpotqa-corpus": _read_hotpotqa_corpus,
                  "dpr-ctxs": _read_dpr_ctxs}


def check_corpus_format(format: str) -> None:
    """Fail on an unknown corpus format before any output is touched, naming the closest."""
    if format not in CORPUS_FORMATS:
        raise ConfigError(f"unknown corpus format {format!r}"
                          f"{did_you_mean(format, CORPUS_FORMATS)}; choose from "
                          f"{', '.join(CORPUS_FORMATS)}")


def iter_documents(format: str, input: str | os.PathLike) -> Iterator[Result]:
    """Every document of a corpus input with its error, if any; duplicate doc_ids are errors."""
    check_corpus_format(format)
    seen: dict[str, int] = {}
    for res in CORPUS_FORMATS[format](input):
        if res.row is not None:
            d = res.row["doc_id"]
            if d in seen:
                res = Result(res.record, None, DataError(res.record.source, res.record.number, "id",
                             f"duplicate doc_id {d!r} (first seen at record {seen[d]})"))
            else:
                seen[d] = res.record.number
        yield res


def load_corpus(format: str, input: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Documents ``{doc_id, title, text}`` of a corpus input; the first bad one raises."""
    for res in iter_documents(format, input):
        if res.error is not None:
            raise res.error
        yield res.row


def convert_corpus(format: str, input: str | os.PathLike, output_dir: str | os.PathLike,
                   skip_invalid: bool = False, limit: int | None = None,
                   rows_per_file: int = 200_000) -> CorpusSummary:
    """Write a corpus input as Parquet (:data:`CORPUS_SCHEMA`) under ``output_dir``, with
    ``_summary.json`` (documents, mean/max words) and, with ``skip_invalid``, ``_rejects.jsonl``."""
    check_corpus_format(format)
    summary = CorpusSummary(format=format, input=str(input), output_dir=str(output_dir))
    output = StagedOutput(output_dir, lambda docs: pa.Table.from_pylist(docs, schema=CORPUS_SCHEMA),
                          rows_per_file, "data corpus", {"format": format, "input": str(input)})
    return run_staged(iter_documents(format, input), output, summary, skip_invalid, limit)
