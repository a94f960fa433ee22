"""MMLU CSVs (Hendrycks et al.): ``question, A, B, C, D, answer letter`` without a header.

Input is one CSV, a directory of per-subject CSVs (``<subject>_<split>.csv``), or a directory of
such directories (``data/dev``, ``data/val`` …, searched recursively); ``split`` keeps only the
files of that split. Answers are ``[letter]``, choices the option texts, and ``meta`` holds the
subject, its standard category (MMLU's own subject → subcategory → category tables, all 57
subjects) and the split. The record number is the 1-based CSV record in its file.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterator
from pathlib import Path

from raglign.data.loaders.base import Fields, Format, Record, open_text
from raglign.data.schema import make_row
from raglign.errors import DataError

#: MMLU's subject → subcategory table (hendrycks/test, ``categories.py``).
SUBCATEGORIES = {
    "abstract_algebra": "math", "anatomy": "health", "astronomy": "physics",
    "business_ethics": "business", "clinical_knowledge": "health", "college_biology": "biology",
    "college_chemistry": "chemistry", "college_computer_science": "computer science",
    "college_mathematics": "math", "college_medicine": "health", "college_physics": "physics",
    "computer_security": "computer science", "conceptual_physics": "physics",
    "econometrics": "economics", "electrical_engineering": "engineering",
    "elementary_mathematics": "math", "formal_logic": "philosophy", "global_facts": "other",
    "high_school_biology": "biology", "high_school_chemistry": "chemistry",
    "high_school_computer_science": "computer science",
    "high_school_european_history": "history", "high_school_geography": "geography",
    "high_school_government_and_politics": "politics", "high_school_macroeconomics": "economics",
    "high_school_mathematics": "math", "high_school_microeconomics": "economics",
    "high_school_physics": "physics", "high_school_psychology": "psychology",
    "high_school_statistics": "math", "high_school_us_history": "history",
    "high_school_world_history": "history", "human_aging": "health",
    "human_sexuality": "culture", "international_law": "law", "jurisprudence": "law",
    "logical_fallacies": "philosophy", "machine_learning": "computer science",
    "management": "business", "marketing": "business", "medical_genetics": "health",
    "miscellaneous": "other", "moral_disputes": "philosophy", "moral_scenarios": "philosophy",
    "nutrition": "health", "philosophy": "philosophy", "prehistory": "history",
    "professional_accounting": "other", "professional_law": "law",
    "professional_medicine": "health", "professional_psychology": "psychology",
    "public_relations": "politics", "security_studies": "politics", "sociology": "culture",
    "us_foreign_policy": "politics", "virology": "health", "world_religions": "philosophy",
}

#: MMLU's subcategory → category table (the four groups MMLU reports accuracy by).
CATEGORIES = {
    "STEM": ("physics", "chemistry", "biology", "computer science", "math", "engineering"),
    "Humanities": ("history", "philosophy", "law"),
    "Social Sciences": ("politics", "culture", "economics", "geography", "psychology"),
    "Other": ("other", "business", "health"),
}

SUBJECT_CATEGORY = {subject: next(cat for cat, subs in CATEGORIES.items() if sub in subs)
                    for subject, sub in SUBCATEGORIES.items()}

_NAME = re.compile(r"^(?P<subject>.+?)(?:_(?P<split>dev|val|test|train|auxiliary_train))?$")
LETTERS = "ABCDEFGHIJ"


def subject_and_split(path: str | os.PathLike) -> tuple[str, str | None]:
    """``anatomy_dev.csv`` → ``("anatomy", "dev")``; a name without a split suffix → no split."""
    m = _NAME.match(Path(path).name.removesuffix(".gz").removesuffix(".csv"))
    return m["subject"], m["split"]


def csv_files(path: str | os.PathLike, split: str | None) -> list[Path]:
    """The CSV files to read: ``path`` itself, or those under it (of ``split`` if given)."""
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise DataError(str(path), None, None, "no such file or directory")
    files = sorted(f for f in p.rglob("*.csv*") if f.name.endswith((".csv", ".csv.gz")))
    if split is not None:
        files = [f for f in files if subject_and_split(f)[1] == split]
    if not files:
        raise DataError(str(path), None, None, "contains no MMLU .csv files"
                        + (f" of split {split!r}" if split else ""))
    return files


def read(path: str | os.PathLike, split: str | None = None) -> Iterator[Record]:
    for file in csv_files(path, split):
        source = str(file)
        with open_text(file) as f:
            reader = csv.reader(f)
            number = 0
            while True:
                try:
                    cells = next(reader)
                except StopIteration:
                    break
                except csv.Error as e:
                    number += 1
                    yield Record(source, number, None, DataError(source, number, None,
                                                                 f"malformed CSV: {e}"))
                    continue
                number += 1
                if cells:
                    yield Record(source, number, cells)


def to_row(rec: Record, split: str | None = None) -> dict:
    f = Fields(rec)
    cells = rec.raw
    if len(cells) < 4:
        raise f.error(None, f"expected question, ≥2 choices and an answer letter; got {len(cells)} "
                      "columns")
    question, choices, letter = cells[0], cells[1:-1], cells[-1].strip()
    f.check_str(question, "question")
    valid = LETTERS[:len(choices)]
    if len(letter) != 1 or letter.upper() not in valid:
        raise f.error("answer", f"expected one of {', '.join(valid)}, got {letter!r}")
    subject, file_split = subject_and_split(rec.source)
    row_split = file_split or split
    qid = f"{subject}_{row_split}_{rec.number}" if row_split else f"{subject}_{rec.number}"
    meta = {"dataset": "mmlu", "subject": subject, "category": SUBJECT_CATEGORY.get(subject),
            "split": row_split}
    return make_row(qid, question, [letter.upper()], [], choices, meta)


FORMAT = Format("mmlu", "MMLU per-subject CSVs (a file, a directory, or a tree of split dirs)",
                read, to_row, frozenset({"split"}), frozenset({"split"}))
