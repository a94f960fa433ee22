"""A fixed train/test split by question id, so that no method is ever evaluated on a question it
was trained on, and every run (demo, benchmarks, a user's sweep) sees the same split.

Membership depends only on (id, seed): adding rows to a dataset never moves old rows across.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any


def is_test(row_id: str, test_fraction: float, seed: int = 0) -> bool:
    """Whether ``row_id`` falls in the test part (a stable hash, uniform in [0, 1))."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    digest = hashlib.sha256(f"{seed}:{row_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < test_fraction


def split_rows(rows: Iterable[Mapping[str, Any]], test_fraction: float = 0.3,
               seed: int = 0) -> tuple[list[dict], list[dict]]:
    """``(train, test)`` lists, input order kept within each."""
    train, test = [], []
    for r in rows:
        (test if is_test(str(r["id"]), test_fraction, seed) else train).append(dict(r))
    return train, test
