"""RADIO's score integration: min-max normalisation and the α-mix of a signal with retrieval.

Used by the ``rationale_score`` signal (:mod:`raglign.signals.rationale`, which writes the mixed
score) and by ``raglign mine --alpha`` (:func:`raglign.mining.mine_groups`, which mixes any
signal). It lives here, beside the signals, so that a signal never imports the mining layer
above it (docs/architecture.md); :mod:`raglign.mining` re-exports both names. Plain numpy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def minmax(x: Sequence[float] | np.ndarray) -> np.ndarray:
    """Min-max normalise to [0, 1]; a constant vector (no ranking information) becomes zeros."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return x
    lo, hi = x.min(), x.max()
    return np.zeros_like(x) if hi == lo else (x - lo) / (hi - lo)


def mix_scores(signal_scores: Sequence[float] | np.ndarray,
               retrieval_scores: Sequence[float] | np.ndarray | None,
               alpha: float = 0.5) -> np.ndarray:
    """RADIO's score integration for one query: α·minmax(signal) + (1-α)·minmax(retrieval).

    ``alpha = 1`` is the paper's "w/o retrieval" ablation and is the only value for which
    ``retrieval_scores`` may be None (the retrieval term has weight 0); any other alpha without
    retrieval scores is an error rather than a silent fallback to the signal alone.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    s = minmax(signal_scores)
    if retrieval_scores is None:
        if alpha != 1.0:
            raise ValueError(f"retrieval scores are None but alpha={alpha}; they are needed "
                             "unless alpha == 1 (signal only)")
        return s
    r = np.asarray(retrieval_scores, dtype=np.float64)
    if r.shape != s.shape:
        raise ValueError(f"signal and retrieval scores differ in length: {s.size} vs {r.size}")
    return alpha * s + (1.0 - alpha) * minmax(r)
