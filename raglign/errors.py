"""Errors that name where bad input is, so a user can fix the file rather than debug raglign,
and, where raglign knows it, what to do next (``hint``)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class RaglignError(Exception):
    """Base class for errors raglign reports to users (the CLI prints them without a traceback)."""


class DataError(RaglignError):
    """A record that cannot be read or validated: says which file, which record and which field.

    ``hint`` is the next step (a flag to pass, the command that makes a missing input); it is
    kept apart from ``reason`` so code that checks the reason is not affected by it.
    """

    def __init__(self, source: str, record: int | str | None, field: str | None, reason: str,
                 hint: str | None = None):
        self.source, self.record, self.field, self.reason = source, record, field, reason
        self.hint = hint
        where = str(source)
        if record is not None:
            where += f", record {record}"
        if field:
            where += f", field '{field}'"
        super().__init__(f"{where}: {reason}" + (f"\n  {hint}" if hint else ""))

    def with_hint(self, hint: str) -> DataError:
        """The same error (same class and fields) with ``hint`` as its next step; the layer
        that knows the next step (the CLI, the converter) adds it where it catches the error."""
        return type(self)(self.source, self.record, self.field, self.reason, hint)


class MissingInputError(DataError):
    """An input dataset that does not exist or holds no Parquet files: usually the output of an
    earlier step that has not run, so the CLI adds which command makes it."""


class StorageError(DataError):
    """A path or storage URI that cannot be reached, listed, read or written (an unreachable
    endpoint, a missing or forbidden bucket): the message names the URI and the cause."""


class ConfigError(RaglignError):
    """An invalid job configuration; the message lists each bad field's path and the reason."""


def did_you_mean(word: object, choices: Iterable[str], prefix: str = "") -> str:
    """`` (did you mean `x`?)`` with the valid names closest to a misspelt ``word``, or ``""``
    when none is close: a typo's fix is usually one of two or three names, not the whole list.
    ``prefix`` goes before each name shown (``ray.`` for a nested key)."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=3, cutoff=0.6)
    if not close:
        return ""
    return " (did you mean " + " or ".join(f"`{prefix}{c}`" for c in close) + "?)"
