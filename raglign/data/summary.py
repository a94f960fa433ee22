"""What a conversion produced, counted while rows stream past (no second pass over the output).

The counts are the ones to check before spending GPU time on a dataset: how many rows, how many
candidates each (a retriever that returned nothing shows up as min 0), how many rows have a gold
candidate (training signals and recall metrics need them), and how many records were rejected.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from raglign import storage


@dataclass
class Summary:
    """Counts of one ``convert`` run; ``str()`` is the text the CLI prints."""

    format: str
    input: str
    output_dir: str
    rows: int = 0
    rejected: int = 0
    candidates_min: int | None = None
    candidates_mean: float | None = None
    candidates_max: int | None = None
    rows_with_candidates: int = 0
    rows_with_gold: int = 0
    rows_with_choices: int = 0
    replaced_files: int = 0
    files: list[str] = field(default_factory=list)
    _candidates_total: int = field(default=0, repr=False)

    @property
    def count(self) -> int:
        return self.rows

    def add(self, row: dict[str, Any]) -> None:
        cands = row.get("candidates") or []
        n = len(cands)
        self.rows += 1
        self._candidates_total += n
        self.candidates_min = n if self.candidates_min is None else min(self.candidates_min, n)
        self.candidates_max = n if self.candidates_max is None else max(self.candidates_max, n)
        self.candidates_mean = self._candidates_total / self.rows
        self.rows_with_candidates += n > 0
        self.rows_with_gold += any(c.get("is_gold") is True for c in cands)
        self.rows_with_choices += row.get("choices") is not None

    def to_dict(self) -> dict[str, Any]:
        return _public_dict(self)

    def write(self, path: str | Path) -> None:
        _write_json(self, path)

    def __str__(self) -> str:
        lines = [f"{self.format}: {self.input} -> {self.output_dir}",
                 f"  rows:                    {self.rows}"]
        if self.rows:
            lines.append(f"  candidates per row:      min {self.candidates_min}  "
                         f"mean {self.candidates_mean:.2f}  max {self.candidates_max}")
        lines += [f"  rows with candidates:    {self.rows_with_candidates}",
                  f"  rows with a gold:        {self.rows_with_gold}",
                  f"  rows with choices:       {self.rows_with_choices}",
                  f"  rejected:                {self.rejected}"
                  + (" (see _rejects.jsonl)" if self.rejected else "")]
        return "\n".join(lines + _replaced_line(self))


@dataclass
class CorpusSummary:
    """Counts of one corpus conversion: documents and their length in whitespace words."""

    format: str
    input: str
    output_dir: str
    documents: int = 0
    rejected: int = 0
    mean_words: float | None = None
    max_words: int | None = None
    replaced_files: int = 0
    files: list[str] = field(default_factory=list)
    _words_total: int = field(default=0, repr=False)

    @property
    def count(self) -> int:
        return self.documents

    def add(self, doc: dict[str, Any]) -> None:
        n = len(doc["text"].split())
        self.documents += 1
        self._words_total += n
        self.max_words = n if self.max_words is None else max(self.max_words, n)
        self.mean_words = self._words_total / self.documents

    def to_dict(self) -> dict[str, Any]:
        return _public_dict(self)

    def write(self, path: str | Path) -> None:
        _write_json(self, path)

    def __str__(self) -> str:
        lines = [f"{self.format}: {self.input} -> {self.output_dir}",
                 f"  documents:               {self.documents}"]
        if self.documents:
            lines.append(f"  words per document:      mean {self.mean_words:.1f}  max {self.max_words}")
        lines.append(f"  rejected:                {self.rejected}"
                     + (" (see _rejects.jsonl)" if self.rejected else ""))
        return "\n".join(lines + _replaced_line(self))


def _replaced_line(summary: Summary | CorpusSummary) -> list[str]:
    if not summary.replaced_files:
        return []
    return [f"  replaced {summary.replaced_files} part file(s) of a previous conversion in "
            f"{summary.output_dir}"]


def _public_dict(summary: Summary | CorpusSummary) -> dict[str, Any]:
    """The summary's public fields, floats rounded for reading (``_summary.json``)."""
    return {k: round(v, 3) if isinstance(v, float) else v
            for k, v in asdict(summary).items() if not k.startswith("_")}


def _write_json(summary: Summary | CorpusSummary, path: str | Path) -> None:
    storage.write_text(path, json.dumps(summary.to_dict(), indent=2, ensure_ascii=False) + "\n")
