"""Labelled candidates → training data: contrastive groups (RADIO) or soft targets (distillation).

Input is canonical rows (:mod:`raglign.data.schema`) whose candidates carry a signal field
written by a labelling stage (``rationale_score``, ``answer_logprob``, ``loo_logprob``,
``attention`` …). Two outputs:

* **groups** for InfoNCE: RADIO's "top-k shifted by N" — the top candidate by the signal is the
  positive, ``m`` negatives come from 0-based rank positions ``>= n``. Which *positions* are
  sampled depends only on ``seed`` and the row id, never on the signal, so every method is
  trained on negatives drawn from the same rank positions of its own ranking (RADIO §4.4: "the
  sampling index is fixed and remains unchanged across methods").
* **soft targets** for KL distillation (PDist, LOOP, ADist, REPLUG): a softmax with temperature
  over the signal of the first ``k`` candidates.
* **LM log-probabilities** for EMDR² and REPLUG's own loss: the raw ``log p(a | q, d_k)``
  (``answer_logprob``) of the first ``k`` candidates, untransformed, since those objectives
  apply their own softmax / marginal (and a β = 0.01 target would underflow to zeros).

Plain Python and numpy: the functions map over rows, so a Ray Data ``map_batches`` or a plain
loop can call them alike. Rows that cannot yield a group are returned as rejects with a reason,
never dropped silently.
"""

from __future__ import annotations

import hashlib
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np

from raglign.errors import DataError
# minmax and mix_scores live beside the signals (the rationale signal mixes with them too);
# they are re-exported here, where users and docs import them.
from raglign.signals.mixing import minmax, mix_scores  # noqa: F401 (minmax: re-export)
from raglign.signals.ranking import higher_is_better, rank_values

DOC_FIELDS = ("doc_id", "title", "text")


class Mined(NamedTuple):
    """What a mining pass produced: output records and ``{"id", "reason"}`` for rows left out."""

    records: list[dict[str, Any]]
    rejects: list[dict[str, Any]]


def candidate_scores(row: Mapping[str, Any], field: str, source: str = "rows") -> np.ndarray:
    """The ``field`` value of every candidate of ``row`` as float64, in candidate order.

    A missing, null, non-numeric or NaN value is a :class:`DataError` naming the row id and the
    candidate field, because ranking on a partly labelled row would be silently wrong.
    """
    rid = row.get("id")
    cands = row.get("candidates") or []
    out = np.empty(len(cands), dtype=np.float64)
    for j, c in enumerate(cands):
        v = c.get(field)
        if v is None or isinstance(v, bool) or not isinstance(v, numbers.Real) or math.isnan(v):
            raise DataError(source, rid, f"candidates[{j}].{field}",
                            "missing" if v is None else f"expected a number, got {v!r}")
        out[j] = v
    return out


def _descending(signal: str, descending: bool | None) -> bool:
    """An explicit direction, else the one ``signal`` declares (:mod:`raglign.signals.ranking`),
    so mining ranks a signal exactly as its evaluation does."""
    return higher_is_better(signal) if descending is None else descending


def rank_by(row: Mapping[str, Any], signal: str, descending: bool | None = None,
            source: str = "rows") -> list[int]:
    """Candidate indices of ``row`` sorted by the candidate field ``signal``, best first, in the
    signal's declared direction unless ``descending`` overrides it (ties: input order)."""
    return rank_values(candidate_scores(row, signal, source), _descending(signal, descending))


def _row_rng(seed: int, row_id: str) -> np.random.Generator:
    # sha256, not hash(): Python salts str hashes per process, which would change the sample on
    # every run and across Ray workers.
    digest = hashlib.sha256(str(row_id).encode("utf-8")).digest()
    return np.random.default_rng([seed, int.from_bytes(digest[:8], "little")])


def negative_positions(row_id: str, n_candidates: int, n: int = 3, m: int = 6, seed: int = 42,
                       fixed_ranks: Sequence[int] | None = None) -> list[int]:
    """The 0-based rank positions whose candidates become negatives for ``row_id``, ascending.

    ``fixed_ranks`` are used as given; otherwise ``m`` distinct positions are drawn uniformly
    without replacement from ``n .. n_candidates-1`` by a generator seeded with
    ``(seed, first 8 bytes of sha256(row_id))``. Raises ValueError if the row is too short.
    """
    if fixed_ranks is not None:
        need = max(fixed_ranks) + 1
        if n_candidates < need:
            raise ValueError(f"{n_candidates} candidates, fixed rank {need - 1} needs {need}")
        return sorted(fixed_ranks)
    if n_candidates < n + m:
        raise ValueError(f"{n_candidates} candidates, n={n} and m={m} need at least {n + m}")
    picked = _row_rng(seed, row_id).choice(np.arange(n, n_candidates), size=m, replace=False)
    return sorted(int(p) for p in picked)


def _doc(c: Mapping[str, Any]) -> dict[str, Any]:
    return {k: c.get(k) for k in DOC_FIELDS}


def _check_mining_args(n: int, m: int | None, fixed_ranks: Sequence[int] | None) -> int:
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1 (rank 0 is the positive), got {n!r}")
    if fixed_ranks is None:
        m = 6 if m is None else m
        if not isinstance(m, int) or m < 1:
            raise ValueError(f"m must be a positive integer, got {m!r}")
        return m
    ranks = list(fixed_ranks)
    if not ranks or any(not isinstance(r, int) for r in ranks) or len(set(ranks)) != len(ranks):
        raise ValueError(f"fixed_ranks must be distinct integers, got {ranks}")
    if min(ranks) < n:
        raise ValueError(f"fixed_ranks {ranks} include positions < n={n}, which the shift excludes")
    if m is not None and m != len(ranks):
        raise ValueError(f"m={m} but fixed_ranks has {len(ranks)} entries")
    return len(ranks)


def mine_groups(rows: Iterable[Mapping[str, Any]], signal: str, n: int = 3, m: int | None = None,
                seed: int = 42, fixed_ranks: Sequence[int] | None = None,
                alpha: float | None = None, retrieval_field: str = "score",
                descending: bool | None = None, on_short: Literal["reject", "error"] = "reject",
                source: str = "rows") -> Mined:
    """RADIO's "top-k shifted by N": one positive and ``m`` (default 6) negatives per row.

    Candidates are ranked by ``signal`` (or, with ``alpha``, by :func:`mix_scores` of the signal
    and ``retrieval_field``); the positive is rank 0 and the negatives are the candidates at
    :func:`negative_positions` — 0-based positions ``>= n``, i.e. 1-based ranks ``> n``. The
    reference code's fixed positions are ``fixed_ranks=[3, 4, 6, 9, 13, 18]`` (with ``n=3``).
    The direction is the signal's declared one (``loo_logprob`` lowest first); ``descending``
    overrides it. With ``alpha`` the signal is mixed in its "more useful" direction (negated
    when lower is better) and the mix ranks highest first, so the retrieval term always favours
    the retriever's top candidates.

    Rows with too few candidates become ``rejects`` (``on_short="reject"``) or raise
    :class:`DataError` (``"error"``). Each group is ``{"id", "question", "positive",
    "negatives", "negative_ranks", "signal", "alpha"}``; see :func:`flatten_group`.
    """
    m = _check_mining_args(n, m, fixed_ranks)
    if on_short not in ("reject", "error"):
        raise ValueError(f"on_short must be 'reject' or 'error', got {on_short!r}")
    groups, rejects = [], []
    for row in rows:
        rid, cands = row.get("id"), row.get("candidates") or []
        try:
            positions = negative_positions(rid, len(cands), n, m, seed, fixed_ranks)
        except ValueError as e:
            if on_short == "error":
                raise DataError(source, rid, "candidates", f"too few candidates: {e}") from None
            rejects.append({"id": rid, "reason": f"too few candidates: {e}"})
            continue
        scores = candidate_scores(row, signal, source)
        higher = _descending(signal, descending)
        if alpha is not None:
            retrieval = None if alpha == 1.0 else candidate_scores(row, retrieval_field, source)
            scores, higher = mix_scores(scores if higher else -scores, retrieval, alpha), True
        order = rank_values(scores, higher)
        groups.append({
            "id": rid,
            "question": row.get("question"),
            "positive": _doc(cands[order[0]]),
            "negatives": [_doc(cands[order[p]]) for p in positions],
            "negative_ranks": positions,
            "signal": signal,
            "alpha": alpha,
        })
    return Mined(groups, rejects)


def flatten_group(group: Mapping[str, Any]) -> dict[str, Any]:
    """A group as ``{"id", "question", "docs": [positive, *negatives], "labels": [1, 0, …]}``:
    fixed-shape lists that Arrow/Parquet store natively and an InfoNCE loop reads directly
    (positive at index 0, as the RADIO reference trains)."""
    docs = [dict(group["positive"])] + [dict(d) for d in group["negatives"]]
    return {"id": group["id"], "question": group["question"], "docs": docs,
            "labels": [1] + [0] * (len(docs) - 1)}


# ---------------------------------------------------------------------------------------------
# Soft targets for distillation
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TargetSpec:
    """How a distillation method turns a candidate field into a target distribution.

    ``target = softmax(sign · field / temperature)`` over the first ``k`` candidates. ``sign``
    is the field's declared direction (:mod:`raglign.signals.ranking`), not a second copy of it:
    the most useful document gets the most target mass.
    """

    field: str
    temperature: float = 0.01

    @property
    def sign(self) -> int:
        return 1 if higher_is_better(self.field) else -1


# Atlas (Izacard et al. 2023) trains with temperature_gold = 0.01 on per-token mean answer
# log-likelihoods; REPLUG's β is a free hyperparameter, given Atlas's value so that REPLUG and
# PDist share the target and differ only in the KL direction of their objectives.
TARGETS: dict[str, TargetSpec] = {
    # PDist: p_k ∝ exp(log p(a | q, d_k) / T)
    "pdist": TargetSpec("answer_logprob"),
    # REPLUG LSR: Q_k ∝ exp(log p(a | q, d_k) / β)
    "replug": TargetSpec("answer_logprob"),
    # LOOP: p_k ∝ exp(-log p(a | D \ d_k, q) / T): the document whose removal hurts most wins
    "loop": TargetSpec("loo_logprob"),
    # ADist: p_k ∝ exp(attention mass on d_k / T)
    "adist": TargetSpec("attention"),
}


def softmax(x: Sequence[float] | np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax(x / temperature), computed stably (the maximum is subtracted first)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z = np.asarray(x, dtype=np.float64) / temperature
    z = np.exp(z - z.max())
    return z / z.sum()


def soft_targets(row: Mapping[str, Any], signal: str, temperature: float, k: int | None = None,
                 negate: bool = False, source: str = "rows") -> list[float]:
    """softmax over the first ``k`` candidates (all when None) of ``±signal / temperature``.

    The first ``k`` in *candidate order* — the retriever's top-k, the set Atlas distils over —
    not the top-k by the signal, which would bias the target towards its own favourites.
    ``negate=True`` scores ``-signal`` (LOOP's ``loo_logprob``). A row with fewer than ``k``
    candidates is a :class:`DataError`.
    """
    cands = row.get("candidates") or []
    k = len(cands) if k is None else k
    if k < 1 or len(cands) < k:
        raise DataError(source, row.get("id"), "candidates",
                        f"{len(cands)} candidates, soft targets over k={k} need at least "
                        f"{max(k, 1)}")
    scores = candidate_scores({"id": row.get("id"), "candidates": cands[:k]}, signal, source)
    return softmax(-scores if negate else scores, temperature).tolist()


def _over_first_k(rows: Iterable[Mapping[str, Any]], k: int | None, on_short: str, source: str,
                  values: Any) -> Mined:
    """``{"id", "question", "docs"} | values(row, k)`` for every row with at least ``k``
    candidates (all when None); shorter rows are rejects or, with ``on_short="error"``, a
    :class:`DataError`."""
    if on_short not in ("reject", "error"):
        raise ValueError(f"on_short must be 'reject' or 'error', got {on_short!r}")
    records, rejects = [], []
    for row in rows:
        rid, cands = row.get("id"), row.get("candidates") or []
        kk = len(cands) if k is None else k
        if kk < 1 or len(cands) < kk:
            reason = f"too few candidates: {len(cands)} < k={max(kk, 1)}"
            if on_short == "error":
                raise DataError(source, rid, "candidates", reason)
            rejects.append({"id": rid, "reason": reason})
            continue
        records.append({"id": rid, "question": row.get("question"),
                        "docs": [_doc(c) for c in cands[:kk]], **values(row, kk)})
    return Mined(records, rejects)


def mine_targets(rows: Iterable[Mapping[str, Any]], method: str, temperature: float | None = None,
                 k: int | None = None, on_short: Literal["reject", "error"] = "reject",
                 source: str = "rows") -> Mined:
    """Soft-target records ``{"id", "question", "docs", "target", "method", "temperature"}``.

    ``method`` is a key of :data:`TARGETS`; ``temperature`` defaults to its spec's (0.01).
    ``docs[i]`` is the candidate whose target probability is ``target[i]``. Rows with fewer
    than ``k`` candidates are rejected (or raise, with ``on_short="error"``).
    """
    if method not in TARGETS:
        raise ValueError(f"unknown distillation method {method!r}; known: {', '.join(TARGETS)}")
    spec = TARGETS[method]
    temperature = spec.temperature if temperature is None else temperature
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return _over_first_k(rows, k, on_short, source, lambda row, kk: {
        "target": soft_targets(row, spec.field, temperature, kk, negate=spec.sign < 0,
                               source=source),
        "method": method, "temperature": temperature})


# The labelled field that holds log p(a | q, d_k), one document at a time.
LM_LOGPROB_FIELD = "answer_logprob"


def mine_lm_logprobs(rows: Iterable[Mapping[str, Any]], k: int | None = None,
                     on_short: Literal["reject", "error"] = "reject",
                     source: str = "rows") -> Mined:
    """EMDR² / REPLUG rows ``{"id", "question", "docs", "lm_logprob", "signal"}``.

    ``lm_logprob[i]`` is candidate i's labelled ``answer_logprob`` as it is, for the first
    ``k`` candidates in candidate order (the retriever's top-k, as for soft targets). A
    missing or non-numeric value is a :class:`DataError` naming the row and
    ``candidates[i].answer_logprob``; rows with fewer than ``k`` candidates are rejected (or
    raise, with ``on_short="error"``).
    """
    def values(row, kk):
        head = {"id": row.get("id"), "candidates": (row.get("candidates") or [])[:kk]}
        return {"lm_logprob": candidate_scores(head, LM_LOGPROB_FIELD, source).tolist(),
                "signal": LM_LOGPROB_FIELD}

    return _over_first_k(rows, k, on_short, source, values)
