"""What every loader shares: reading records from files, and checked field access.

A loader is two functions: ``read`` turns a file into :class:`Record` s (a record that cannot even
be parsed is still yielded, carrying its error, so ``--skip-invalid`` can reject it with its raw
text instead of aborting the file), and ``to_row`` maps one parsed record to a canonical row,
raising :class:`DataError` that names the file, the 1-based record number and the field.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from raglign import storage
from raglign.errors import DataError, MissingInputError


@dataclass
class Record:
    """One input record: where it came from, its parsed value (or raw text) and a parse error."""

    source: str
    number: int
    raw: Any
    error: DataError | None = None


@dataclass(frozen=True)
class Format:
    """A registered input format: its reader, its record → row mapping and the options they take.

    ``options`` are passed to ``read`` as keyword arguments, ``row_options`` (a subset) to
    ``to_row`` as well; ``split`` is accepted by every format (it is recorded in ``meta``).
    """

    name: str
    help: str
    read: Callable[..., Iterator[Record]]
    to_row: Callable[..., dict]
    options: frozenset[str] = field(default_factory=frozenset)
    row_options: frozenset[str] = field(default_factory=frozenset)


def open_text(path: str | os.PathLike) -> TextIO:
    """Open a text file, gunzipping transparently (by magic bytes, so a misnamed file works too).
    A storage URI (``s3://…``) is streamed through its pyarrow filesystem."""
    if storage.is_remote(path):
        if not storage.is_file(path):
            raise MissingInputError(str(path), None, None, "no such object")
        f = storage.open_input(path)
        magic = f.read(2)
        f.seek(0)
        raw = gzip.GzipFile(fileobj=f, mode="rb") if magic == b"\x1f\x8b" else f
        return io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
    p = Path(path)
    if not p.is_file():
        raise DataError(str(path), None, None, "no such file" if not p.exists() else "not a file")
    with open(p, "rb") as f:
        magic = f.read(2)
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.open(p, "rb"), encoding="utf-8-sig", newline="")
    return open(p, encoding="utf-8-sig", newline="")


def _peek_first_char(f: TextIO) -> str:
    """The first non-whitespace character of a file (the file is rewound afterwards)."""
    while True:
        chunk = f.read(4096)
        if not chunk:
            f.seek(0)
            return ""
        stripped = chunk.lstrip()
        if stripped:
            f.seek(0)
            return stripped[0]


def read_json_records(path: str | os.PathLike) -> Iterator[Record]:
    """Records of a JSON list file or a JSON Lines file (either possibly gzipped).

    A file whose first character is ``[`` is a JSON list (record = 1-based list position);
    anything else is JSON Lines (record = 1-based line number, blank lines skipped). A malformed
    line becomes a record with an error; a malformed JSON list is fatal, as no record boundary
    can be trusted after it.
    """
    source = str(path)
    with open_text(path) as f:
        if _peek_first_char(f) == "[":
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                if e.msg != "Extra data":  # "Extra data": JSON Lines that start with an array
                    raise DataError(source, None, None, f"not valid JSON: {e.msg} at line "
                                    f"{e.lineno} column {e.colno}") from None
                f.seek(0)
            else:
                for i, value in enumerate(data, 1):
                    yield Record(source, i, value)
                return
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield Record(source, lineno, json.loads(line))
            except json.JSONDecodeError as e:
                yield Record(source, lineno, line.rstrip("\n"),
                             DataError(source, lineno, None, f"malformed JSON: {e.msg} at column {e.colno}"))


def stable_id(*parts: str) -> str:
    """A 16-hex-digit SHA-1 of ``parts``: the same text gets the same id in every file and run."""
    h = hashlib.sha1("\x1f".join(parts).encode("utf-8"))
    return h.hexdigest()[:16]


def unique_ids(ids: list[str]) -> list[str]:
    """Make ids unique within one row: the k-th repeat of ``x`` becomes ``x#k`` (k ≥ 2)."""
    seen: dict[str, int] = {}
    out = []
    for i in ids:
        seen[i] = seen.get(i, 0) + 1
        out.append(i if seen[i] == 1 else f"{i}#{seen[i]}")
    return out


class Fields:
    """Checked access to a record's fields; every failure names the file, record and field."""

    def __init__(self, rec: Record):
        self.source, self.number = rec.source, rec.number

    def error(self, field: str | None, reason: str) -> DataError:
        return DataError(self.source, self.number, field, reason)

    def obj(self, value: Any, field: str | None = None) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.error(field, f"expected a JSON object, got {_kind(value)}")
        return value

    def get(self, obj: Mapping, key: str, path: str | None = None, optional: bool = False) -> Any:
        path = path or key
        if key not in obj or obj[key] is None:
            if optional:
                return None
            raise self.error(path, "missing")
        return obj[key]

    def str(self, obj: Mapping, key: str, path: str | None = None, optional: bool = False,
            allow_empty: bool = False) -> str | None:
        value = self.get(obj, key, path, optional)
        if value is None:
            return None
        return self.check_str(value, path or key, allow_empty)

    def check_str(self, value: Any, path: str, allow_empty: bool = False) -> str:
        if not isinstance(value, str):
            raise self.error(path, f"expected a string, got {_kind(value)}")
        if not allow_empty and not value.strip():
            raise self.error(path, "must not be empty")
        return value

    def id(self, obj: Mapping, key: str, path: str | None = None, optional: bool = False,
           ) -> str | None:
        """An id field: a non-empty string, or an integer (rendered as a string)."""
        value = self.get(obj, key, path, optional)
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return None if value is None else self.check_str(value, path or key)

    def list(self, obj: Mapping, key: str, path: str | None = None, optional: bool = False) -> list | None:
        value = self.get(obj, key, path, optional)
        if value is not None and not isinstance(value, list):
            raise self.error(path or key, f"expected a list, got {_kind(value)}")
        return value

    def str_list(self, obj: Mapping, key: str, optional: bool = False, allow_single: bool = False,
                 ) -> list[str] | None:
        """A list of strings; ``allow_single`` also accepts one bare string (→ a one-item list)."""
        value = self.get(obj, key, optional=optional)
        if value is None:
            return None
        if allow_single and isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise self.error(key, f"expected a list of strings, got {_kind(value)}")
        for i, v in enumerate(value):
            if not isinstance(v, str):
                raise self.error(f"{key}[{i}]", f"expected a string, got {_kind(v)}")
        return value

    def bool(self, obj: Mapping, key: str, path: str, optional: bool = True) -> bool | None:
        value = self.get(obj, key, path, optional)
        if value is not None and not isinstance(value, bool):
            raise self.error(path, f"expected true/false, got {value!r}")
        return value


def _kind(value: Any) -> str:
    """A JSON-flavoured name for a Python value's type, for error messages."""
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def rest_meta(obj: Mapping[str, Any], used: set[str]) -> dict[str, Any]:
    """The fields a loader did not map, kept in ``meta`` so nothing is dropped silently."""
    return {k: v for k, v in obj.items() if k not in used}


def question_id(question: str) -> str:
    """The id of a question that has none: a hash of its text, so the same NQ question gets the
    same id in NQ-open, the NQ oracle file and a FlashRAG copy, and rows can be joined."""
    return stable_id(question.strip())
