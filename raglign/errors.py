"""Errors that name where bad input is, so a user can fix the file rather than debug raglign."""

from __future__ import annotations


class RaglignError(Exception):
    """Base class for errors raglign reports to users (the CLI prints them without a traceback)."""


class DataError(RaglignError):
    """A record that cannot be read or validated: says which file, which record and which field."""

    def __init__(self, source: str, record: int | str | None, field: str | None, reason: str):
        self.source, self.record, self.field, self.reason = source, record, field, reason
        where = str(source)
        if record is not None:
            where += f", record {record}"
        if field:
            where += f", field '{field}'"
        super().__init__(f"{where}: {reason}")


class ConfigError(RaglignError):
    """An invalid job configuration; the message lists each bad field's path and the reason."""
