"""Which way a candidate field ranks, and the one function that ranks candidates by it.

Every labelling signal declares on its class whether a higher value means a more useful document
(:attr:`raglign.signals.base.Signal.higher_is_better`): ``answer_logprob`` does, ``loo_logprob``
does not (removing a document the answer needs *lowers* the leave-one-out likelihood). Everything
that orders candidates by a field reads that declaration through :func:`higher_is_better` and
orders with :func:`rank_values`: ``raglign eval --rank-by``, ``raglign signals-eval``, the
G-Rerank mining report, ``raglign mine`` groups and the sign of its soft targets. A direction
written in one place cannot disagree with itself, so a signal's evaluation and the training data
mined from it always rank the same way.

Nulls: a signal writes ``null`` where it has no value — LOOP below rank K (outside the context
the generator reads), a judge output that names no label — never a made-up number. A null is
therefore no evidence either way, and every signal ranks it the same: after all labelled
candidates, in retrieval (candidate) order, the order those candidates had before any signal.
NaN counts as null. Ties keep retrieval order too, so a ranking never depends on sort internals.

Fields no signal declares (``score``, ``is_gold``, a user's own numeric column) rank higher
first, the convention of a score.

This module imports the signal registry only, which loads no model code (no torch): the
evaluation and mining layers use it without pulling in the pipelines.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

from raglign.signals import SIGNALS


def higher_is_better(field: str) -> bool:
    """Whether a larger ``field`` value means a more useful candidate: the declaration of the
    signal that writes ``field``, True for any field no signal writes."""
    signal = SIGNALS.get(field)
    return True if signal is None else signal.higher_is_better


def _is_null(v: Any) -> bool:
    return v is None or (isinstance(v, numbers.Real) and math.isnan(v))


def rank_values(values: Sequence[Any], descending: bool = True) -> list[int]:
    """Indices of ``values``, best first: numbers highest first when ``descending`` (lowest
    first otherwise; ties in input order), then nulls (None, NaN) in input order. Booleans rank
    as 1/0 (``is_gold``: gold first); any other value is a TypeError, since ranking by it would
    be silently meaningless."""
    labelled, nulls = [], []
    for i, v in enumerate(values):
        if _is_null(v):
            nulls.append(i)
        elif isinstance(v, numbers.Real):
            labelled.append(i)
        else:
            raise TypeError(f"value at position {i} is {v!r}, not a number")
    sign = -1 if descending else 1
    labelled.sort(key=lambda i: sign * values[i])  # list.sort is stable: ties keep input order
    return labelled + nulls


def rank_candidates(candidates: Sequence[Mapping[str, Any]], field: str) -> list[int]:
    """Candidate indices ranked by ``field`` in its declared direction (:func:`higher_is_better`),
    candidates without a value last in candidate order (:func:`rank_values`)."""
    try:
        return rank_values([c.get(field) for c in candidates], higher_is_better(field))
    except TypeError as e:
        raise TypeError(f"candidate field {field!r}: {e}") from None
