"""Any Hugging Face ``datasets`` dataset: a hub id, a ``save_to_disk`` directory, or a local
data file / directory, with a column mapping onto the canonical fields.

``columns`` maps canonical targets (``id, question, answers, choices, candidates``) to the
dataset's column names; an unmapped target uses the column of the same name when there is one
(``answers`` also tries ``answer`` and ``golden_answers``). Answers may be a string, a list of
strings, or SQuAD's ``{"text": [...], "answer_start": [...]}``. ``candidates`` must be a list of
DPR-style passage objects (``title, text, id?, score?, isgold?, hasanswer?``). Every other
column is kept in ``meta``. The record number is the 1-based row index in the loaded split.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from raglign.data.loaders.base import Fields, Format, Record, question_id
from raglign.data.loaders.dpr import ctx_candidates
from raglign.data.schema import make_row
from raglign.errors import ConfigError, DataError

TARGETS = ("id", "question", "answers", "choices", "candidates")
_FALLBACKS = {"answers": ("answers", "answer", "golden_answers")}
_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet",
             ".txt": "text", ".arrow": "arrow"}
_SAVED_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


def check_columns(columns: Mapping[str, str] | None) -> dict[str, str]:
    """The mapping, after checking every key is a canonical target."""
    columns = dict(columns or {})
    bad = sorted(set(columns) - set(TARGETS))
    if bad:
        raise ConfigError(f"--column: unknown target(s) {', '.join(bad)}; targets are "
                          f"{', '.join(TARGETS)}")
    return columns


def _pick_split(obj: Any, source: str, hf_split: str | None, split: str | None):
    """A ``Dataset`` from a ``DatasetDict``: ``hf_split`` if given, else the split named like
    the ``split`` label, else the only split."""
    import datasets

    if not isinstance(obj, datasets.DatasetDict):
        return obj
    names = list(obj)
    choice = hf_split or (split if split in obj else names[0] if len(names) == 1 else None)
    if choice not in obj:
        raise DataError(source, None, None, f"choose a split with --hf-split: {', '.join(names)}"
                        if choice is None else f"no split {choice!r}; it has {', '.join(names)}")
    return obj[choice]


def load_dataset(path: str | os.PathLike, hf_config: str | None = None,
                 hf_split: str | None = None, split: str | None = None):
    """Load ``path`` as a ``datasets.Dataset`` from disk, a local file/dir, or the hub
    (see :func:`_pick_split` for which split)."""
    import datasets

    source, p = str(path), Path(path)
    try:
        if p.is_dir() and any((p / m).exists() for m in _SAVED_MARKERS):
            return _pick_split(datasets.load_from_disk(str(p)), source, hf_split, split)
        if p.is_file():
            suffix = "".join(p.suffixes[-2:-1]) if p.suffix == ".gz" else p.suffix
            if suffix not in _BUILDERS:
                raise DataError(source, None, None, f"unknown data file type {suffix!r}; "
                                f"expected one of {', '.join(_BUILDERS)}")
            ds = datasets.load_dataset(_BUILDERS[suffix], data_files=str(p))
            return _pick_split(ds, source, hf_split, split)
        ds = datasets.load_dataset(source, hf_config, split=hf_split)
        return _pick_split(ds, source, hf_split, split)
    except (DataError, ConfigError):
        raise
    except Exception as e:  # noqa: BLE001 - datasets raises many types; report them uniformly
        raise DataError(source, None, None, f"cannot load dataset: {type(e).__name__}: {e}") from None


def read(path: str | os.PathLike, columns: Mapping[str, str] | None = None,
         hf_config: str | None = None, hf_split: str | None = None,
         split: str | None = None) -> Iterator[Record]:
    check_columns(columns)
    ds = load_dataset(path, hf_config, hf_split, split)
    for i, row in enumerate(ds, 1):
        yield Record(str(path), i, row)


def _column(row: Mapping, target: str, columns: Mapping[str, str]) -> str | None:
    if target in columns:
        return columns[target]
    return next((c for c in _FALLBACKS.get(target, (target,)) if c in row), None)


def _answers(f: Fields, value: Any, key: str) -> list[str]:
    if isinstance(value, Mapping) and "text" in value:  # SQuAD: {"text": [...], "answer_start": [...]}
        value, key = value["text"], f"{key}.text"
    return f.str_list({key: value}, key, allow_single=True)


def to_row(rec: Record, columns: Mapping[str, str] | None = None) -> dict:
    f = Fields(rec)
    row = f.obj(rec.raw)
    columns = check_columns(columns)
    used = {t: _column(row, t, columns) for t in TARGETS}
    for target, col in used.items():
        if target in columns and col not in row:
            raise f.error(col, f"no such column (mapped to {target}); columns are {', '.join(row)}")
    if used["question"] is None:
        raise f.error("question", "missing; map it with --column question=COLUMN")
    question = f.str(row, used["question"])
    qid = (f.id(row, used["id"], optional=True) if used["id"] else None) or question_id(question)
    answers = [] if used["answers"] is None or row[used["answers"]] is None else \
        _answers(f, row[used["answers"]], used["answers"])
    choices = f.str_list(row, used["choices"], optional=True) if used["choices"] else None
    ctxs = f.list(row, used["candidates"], optional=True) if used["candidates"] else None
    cands = ctx_candidates(f, ctxs, used["candidates"]) if ctxs else []
    meta = json.loads(json.dumps({k: v for k, v in row.items() if k not in used.values()},
                                 default=str))
    meta["dataset"] = "hf"
    return make_row(qid, question, answers, cands, choices, meta)


FORMAT = Format("hf", "a Hugging Face datasets id, save_to_disk dir or local data file, with "
                "--column target=column mappings", read, to_row,
                frozenset({"columns", "hf_config", "hf_split", "split"}), frozenset({"columns"}))
