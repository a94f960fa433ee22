"""Input formats → canonical rows: one module per format, registered in :data:`FORMATS`.

:func:`load_records` is the strict iterator other modules use (first bad record raises);
:func:`iter_results` yields every record with its row or its error, for callers that reject
bad records instead (``convert(..., skip_invalid=True)``). Both validate each row against the
canonical schema and check ids are unique within the input.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from raglign.data.loaders import dpr, flashrag, hf, hotpotqa, mmlu, musique, nq_open, twowiki
from raglign.data.loaders.base import Format, Record
from raglign.data.schema import row_meta, validate_row
from raglign.errors import ConfigError, DataError, did_you_mean

FORMATS: dict[str, Format] = {m.FORMAT.name: m.FORMAT for m in
                              (hotpotqa, twowiki, musique, nq_open, dpr, flashrag, mmlu, hf)}


def get_format(name: str) -> Format:
    try:
        return FORMATS[name]
    except KeyError:
        raise ConfigError(f"unknown format {name!r}{did_you_mean(name, FORMATS)}; choose from "
                          f"{', '.join(FORMATS)}") from None


@dataclass
class Result:
    """One input record and what became of it: a canonical ``row``, or the ``error`` that stops it."""

    record: Record
    row: dict | None
    error: DataError | None


def iter_results(format: str, input: str | os.PathLike, **opts: Any) -> Iterator[Result]:
    """Every record of ``input`` with its validated row or its :class:`DataError`.

    ``opts`` are the format's options (``split`` for all; ``columns``, ``hf_config``,
    ``hf_split`` for ``hf``). File-level problems (missing file, unreadable JSON list) raise.
    """
    fmt = get_format(format)
    unknown = set(opts) - fmt.options - {"split"}
    if unknown:
        raise ConfigError(f"format {fmt.name!r} does not take option(s) {', '.join(sorted(unknown))}")
    split = opts.get("split")
    read_kw = {k: v for k, v in opts.items() if k in fmt.options}
    row_kw = {k: v for k, v in opts.items() if k in fmt.row_options}
    seen: dict[str, str] = {}
    for rec in fmt.read(input, **read_kw):
        if rec.error is not None:
            yield Result(rec, None, rec.error)
            continue
        try:
            row = fmt.to_row(rec, **row_kw)
            if split is not None and "split" not in row_meta(row):
                row["meta"] = json.dumps({**row_meta(row), "split": split}, ensure_ascii=False,
                                         sort_keys=True)
            validate_row(row, rec.source, rec.number)
            if row["id"] in seen:
                raise DataError(rec.source, rec.number, "id",
                                f"duplicate id {row['id']!r} (first seen at {seen[row['id']]})")
        except DataError as e:
            yield Result(rec, None, e)
            continue
        seen[row["id"]] = f"{rec.source}, record {rec.number}"
        yield Result(rec, row, None)


def load_records(format: str, input: str | os.PathLike, **opts: Any) -> Iterator[dict]:
    """Canonical rows of ``input`` read as ``format``; raises :class:`DataError` at the first
    bad record (use :func:`raglign.data.convert` with ``skip_invalid=True`` to reject instead)."""
    for res in iter_results(format, input, **opts):
        if res.error is not None:
            raise res.error
        yield res.row
