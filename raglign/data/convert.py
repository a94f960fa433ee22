"""``convert``: any supported input format → a canonical Parquet dataset plus its summary.

Output (a directory or storage prefix) goes to a hidden staging area inside ``output_dir`` and
is moved into place only when the whole input has been read, so a conversion that fails on a
bad record leaves a previous conversion in ``output_dir`` intact, and a finished one never mixes
its part files with an older one's (those are removed, and the summary says how many).

The swap is: the old ``_summary.json`` removed, ``_manifest.json`` (this conversion) written,
the old parts removed, the staged files moved in, ``_summary.json`` written last. A move is a rename locally but a copy
and a delete on an object store, so the swap is not atomic there; a conversion killed during
it leaves a manifest without a summary, which readers refuse as unfinished
(:func:`raglign.data.io.parquet_files`) until a re-run completes it. An output holding another
job's rows is refused before anything is read (:func:`raglign.data.io.claim_output`).
"""

from __future__ import annotations

import io
import json
import os
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa

from raglign import storage
from raglign.data.io import SUMMARY, claim_output, write_table_atomic
from raglign.data.loaders import Result, get_format, iter_results
from raglign.data.schema import to_table
from raglign.data.summary import CorpusSummary, Summary
from raglign.errors import DataError

REJECTS = "_rejects.jsonl"
# The next step for a rejected record: most datasets have a few bad records a user can drop.
SKIP_HINT = (f"pass --skip-invalid (skip_invalid=True) to write bad records to {REJECTS} with "
             "their reasons and convert the rest")


class StagedOutput:
    """Part files and rejects written to a staging dir, then swapped into ``output_dir``.

    Rows are buffered ``rows_per_file`` at a time and written as ``part-NNNNN.parquet`` with
    ``make_table`` (the canonical :func:`to_table`, or the corpus schema), so memory stays
    bounded for large inputs.
    """

    def __init__(self, output_dir: str | os.PathLike, make_table: Callable[[list[dict]], pa.Table],
                 rows_per_file: int = 50_000, job: str = "data convert",
                 fingerprint: dict[str, Any] | None = None):
        self.out = str(output_dir)
        self.job, self.fingerprint = job, fingerprint or {}
        claim_output(self.out, job, self.fingerprint, replaceable=True, write=False)
        self.created = not storage.is_remote(self.out) and not Path(self.out).exists()
        self.stage = storage.join(self.out, f".staging-{uuid.uuid4().hex}")
        storage.makedirs(self.stage)
        self.make_table, self.rows_per_file = make_table, rows_per_file
        self.buffer: list[dict] = []
        self.parts: list[str] = []
        self.rejects = None

    def add(self, row: dict) -> None:
        self.buffer.append(row)
        if len(self.buffer) >= self.rows_per_file:
            self._flush()

    def reject(self, source: str, record: int, error: DataError, raw: Any) -> None:
        if self.rejects is None:
            fs, path = storage.resolve(storage.join(self.stage, REJECTS))
            self.rejects = io.TextIOWrapper(fs.open_output_stream(path), encoding="utf-8")
        entry = {"source": source, "record": record, "field": error.field, "reason": error.reason,
                 "raw": raw}
        self.rejects.write(json.dumps(entry, ensure_ascii=False, default=str) + "\n")

    def _flush(self) -> None:
        if self.buffer or not self.parts:  # an empty input still gets one (empty) part file
            name = f"part-{len(self.parts):05d}.parquet"
            write_table_atomic(self.make_table(self.buffer), storage.join(self.stage, name))
            self.parts.append(name)
        self.buffer = []

    def commit(self) -> int:
        """Move the staged files into ``output_dir``; returns how many old part files it removed."""
        self._flush()
        self.close()
        storage.delete(storage.join(self.out, SUMMARY))  # from here the output is unfinished
        claim_output(self.out, self.job, self.fingerprint, replaceable=True)
        old = [f for f in storage.list_files(self.out, (".parquet",))
               if storage.name(f).startswith("part-")]
        for f in [*old, storage.join(self.out, REJECTS)]:
            storage.delete(f)
        for f in storage.list_files(self.stage, hidden=True):
            storage.move(f, storage.join(self.out, storage.name(f)))
        storage.delete_dir(self.stage)
        return len(old)

    def close(self) -> None:
        if self.rejects is not None:
            self.rejects.close()
            self.rejects = None

    def abort(self) -> None:
        """Drop the staged files (and ``output_dir`` itself if this run created it)."""
        self.close()
        storage.delete_dir(self.stage)
        if self.created and Path(self.out).is_dir() and not any(Path(self.out).iterdir()):
            Path(self.out).rmdir()


def run_staged(results: Iterable[Result], output: StagedOutput, summary: Summary | CorpusSummary,
               skip_invalid: bool, limit: int | None) -> Summary | CorpusSummary:
    """Drain ``results`` into ``output`` (rejecting or raising on errors), then commit it."""
    try:
        for res in results:
            if limit is not None and summary.count >= limit:
                break
            if res.error is not None:
                if not skip_invalid:
                    raise res.error.with_hint(SKIP_HINT)
                output.reject(res.record.source, res.record.number, res.error, res.record.raw)
                summary.rejected += 1
                continue
            output.add(res.row)
            summary.add(res.row)
        summary.replaced_files = output.commit()
    except BaseException:
        output.abort()
        raise
    summary.files = [storage.join(output.out, p) for p in output.parts]
    summary.write(storage.join(output.out, SUMMARY))
    return summary


def convert(format: str, input: str | os.PathLike, output_dir: str | os.PathLike,
            skip_invalid: bool = False, limit: int | None = None, rows_per_file: int = 50_000,
            **opts: Any) -> Summary:
    """Convert ``input`` (read as ``format``) into canonical Parquet under ``output_dir``.

    Bad records raise :class:`DataError`; with ``skip_invalid`` they go to
    ``output_dir/_rejects.jsonl`` with their reason and are counted in the summary. ``limit``
    stops after that many converted rows. ``opts`` are the format's options (``split``,
    ``columns``, ``hf_split``, ``hf_config``). The summary is also written to ``_summary.json``.
    """
    get_format(format)  # fail on an unknown format before touching output_dir
    results = iter_results(format, input, **opts)
    summary = Summary(format=format, input=str(input), output_dir=str(output_dir))
    output = StagedOutput(output_dir, to_table, rows_per_file, "data convert",
                          {"format": format, "input": str(input)})
    return run_staged(results, output, summary, skip_invalid, limit)

