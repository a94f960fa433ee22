"""Dataset-level numbers from per-row metric dicts: means, bootstrap CIs, per-category breakdowns.

Per-row metrics come from :mod:`raglign.metrics` as flat dicts (``{"em": 1.0, "recall@5": None}``).
A value of ``None`` or NaN means "undefined for this row" (no gold documents, no gold answer):
it is left out of that metric's mean and counted under ``skipped``, so a report always says how
many rows a number rests on. Results are flat, JSON-ready dicts keyed like sentence-transformers'
evaluators (``recall@5``, ``recall@5_ci``).

Confidence intervals are percentile bootstraps over rows with a fixed seed, so a report is
reproducible; comparisons between two systems use a *paired* bootstrap over the same rows,
which is far tighter than comparing two independent intervals.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from raglign.data.schema import row_meta
from raglign.errors import DataError

ALL = "ALL"
_CHUNK_CELLS = 4_000_000  # resample indices drawn per chunk: bounds memory at ~32 MB


def _as_array(values: Sequence[float], name: str = "values") -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise ValueError(f"{name}: cannot bootstrap an empty sequence")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: contains NaN or infinite values; drop undefined rows first")
    return arr


def _bootstrap_means(arrays: Sequence[np.ndarray], n_boot: int, seed: int) -> list[np.ndarray]:
    """Means of ``n_boot`` resamples of rows, the *same* row indices for every array (pairing)."""
    n = arrays[0].size
    rng = np.random.default_rng(seed)
    out = [np.empty(n_boot) for _ in arrays]
    step = max(1, _CHUNK_CELLS // n)
    for start in range(0, n_boot, step):
        stop = min(n_boot, start + step)
        idx = rng.integers(0, n, size=(stop - start, n))
        for arr, means in zip(arrays, out):
            means[start:stop] = arr[idx].mean(axis=1)
    return out


def _check_boot(n_boot: int, alpha: float) -> None:
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def bootstrap_ci(values: Sequence[float], n_boot: int = 1000, alpha: float = 0.05,
                 seed: int = 0) -> tuple[float, float, float]:
    """``(mean, low, high)``: the sample mean and the percentile-bootstrap (1-alpha) interval.

    Rows are resampled with replacement ``n_boot`` times from ``numpy.random.default_rng(seed)``;
    the bounds are the alpha/2 and 1-alpha/2 quantiles (linear interpolation) of the resample
    means.
    """
    _check_boot(n_boot, alpha)
    arr = _as_array(values)
    (means,) = _bootstrap_means([arr], n_boot, seed)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(arr.mean()), float(low), float(high)


def paired_bootstrap(a: Sequence[float | None], b: Sequence[float | None], n_boot: int = 1000,
                     alpha: float = 0.05, seed: int = 0) -> dict[str, Any]:
    """Difference ``mean(a) - mean(b)`` of two systems scored on the same rows, with a paired CI.

    Rows where either value is undefined (None/NaN) are dropped and counted in ``skipped``. Each
    resample draws row indices once and applies them to both systems. ``p_value`` is two-sided:
    ``min(1, 2 · min(P*(diff <= 0), P*(diff >= 0)))`` over the resample differences, i.e. how
    often the sign of the improvement flips under resampling.
    """
    _check_boot(n_boot, alpha)
    if len(a) != len(b):
        raise ValueError(f"paired_bootstrap needs the same rows for both systems: "
                         f"{len(a)} values vs {len(b)}")
    keep = [i for i in range(len(a)) if _defined(a[i]) and _defined(b[i])]
    if not keep:
        raise ValueError("paired_bootstrap: no row has a defined value for both systems")
    xa = _as_array([a[i] for i in keep], "a")
    xb = _as_array([b[i] for i in keep], "b")
    diffs = _bootstrap_means([xa - xb], n_boot, seed)[0]
    low, high = np.quantile(diffs, [alpha / 2, 1 - alpha / 2])
    p = min(1.0, 2 * min(float(np.mean(diffs <= 0)), float(np.mean(diffs >= 0))))
    return {"mean_a": float(xa.mean()), "mean_b": float(xb.mean()),
            "diff": float(xa.mean() - xb.mean()), "diff_ci": [float(low), float(high)],
            "p_value": p, "n": len(keep), "skipped": len(a) - len(keep)}


def compare(per_row_a: Sequence[Mapping[str, Any]], per_row_b: Sequence[Mapping[str, Any]],
            metrics: Sequence[str] | None = None, n_boot: int = 1000, alpha: float = 0.05,
            seed: int = 0) -> dict[str, dict[str, Any]]:
    """:func:`paired_bootstrap` for each metric of two systems' per-row dicts (same row order).

    ``metrics`` defaults to the metrics both systems report. Rows may carry an ``"id"``; when both
    do, a mismatch at any position is an error, since pairing rows by position would be wrong.
    """
    if len(per_row_a) != len(per_row_b):
        raise ValueError(f"compare needs the same rows: {len(per_row_a)} vs {len(per_row_b)}")
    for i, (ra, rb) in enumerate(zip(per_row_a, per_row_b)):
        if "id" in ra and "id" in rb and ra["id"] != rb["id"]:
            raise DataError("compare", i, "id", f"rows differ: {ra['id']!r} vs {rb['id']!r}")
    if metrics is None:
        names_a = _metric_names(per_row_a)
        names_b = set(_metric_names(per_row_b))
        metrics = [m for m in names_a if m in names_b]
    return {m: paired_bootstrap([r.get(m) for r in per_row_a], [r.get(m) for r in per_row_b],
                                n_boot, alpha, seed) for m in metrics}


def _defined(v: Any) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def _metric_names(per_row: Sequence[Mapping[str, Any]]) -> list[str]:
    names: dict[str, None] = {}
    for r in per_row:
        for k in r:
            if k != "id":
                names.setdefault(k)
    return list(names)


def _values(per_row: Sequence[Mapping[str, Any]], idx: Sequence[int],
            metric: str) -> tuple[list[float], int]:
    vals, skipped = [], 0
    for i in idx:
        v = per_row[i].get(metric)
        if not _defined(v):
            skipped += 1
            continue
        if isinstance(v, bool):
            v = float(v)
        if not isinstance(v, (int, float)):
            raise DataError("per-row metrics", per_row[i].get("id", i), metric,
                            f"expected a number or null, got {v!r}")
        vals.append(float(v))
    return vals, skipped


def _summarise(per_row: Sequence[Mapping[str, Any]], idx: Sequence[int], metrics: Sequence[str],
               ci: bool, n_boot: int, alpha: float, seed: int) -> dict[str, Any]:
    out: dict[str, Any] = {"n": len(idx)}
    skipped_by_metric: dict[str, int] = {}
    for m in metrics:
        vals, skipped = _values(per_row, idx, m)
        skipped_by_metric[m] = skipped
        if not vals:
            out[m] = None
            if ci:
                out[f"{m}_ci"] = None
            continue
        if ci:
            mean, low, high = bootstrap_ci(vals, n_boot, alpha, seed)
            out[m], out[f"{m}_ci"] = mean, [low, high]
        else:
            out[m] = float(np.mean(vals))
    out["skipped"] = skipped_by_metric
    return out


def categories_from_meta(rows: Sequence[Mapping[str, Any]], key: str,
                         source: str = "rows") -> list[str]:
    """Each row's ``meta[key]`` as a string; a row without it is a :class:`DataError`."""
    cats = []
    for i, row in enumerate(rows):
        meta = row_meta(row)
        if meta.get(key) is None:
            raise DataError(source, row.get("id", i), f"meta.{key}",
                            "missing; needed for the per-category breakdown")
        cats.append(str(meta[key]))
    return cats


def aggregate(per_row: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]] | None = None,
              category_key: str | None = None, metrics: Sequence[str] | None = None,
              ci: bool = True, n_boot: int = 1000, alpha: float = 0.05,
              seed: int = 0) -> dict[str, Any]:
    """Mean of every metric over the dataset, with bootstrap CIs and an optional breakdown.

    ``per_row[i]`` holds the metrics of ``rows[i]`` (an ``"id"`` key in it is not a metric).
    With ``category_key`` (MMLU ``category``, HotpotQA ``type``), categories are read from each
    row's ``meta`` and ``by_category`` maps every category, plus ``"ALL"``, to the same summary.
    Returns ``{"n", <metric>, <metric>_ci: [low, high], "skipped": {<metric>: count},
    "by_category": {...}}``; a metric with no defined value in a group is ``None``.
    """
    if metrics is None:
        metrics = _metric_names(per_row)
    everything = list(range(len(per_row)))
    result = _summarise(per_row, everything, metrics, ci, n_boot, alpha, seed)
    if category_key is None:
        return result
    if rows is None or len(rows) != len(per_row):
        raise ValueError(f"category_key={category_key!r} needs the rows the metrics belong to "
                         f"(got {None if rows is None else len(rows)} rows for "
                         f"{len(per_row)} metric dicts)")
    groups: dict[str, list[int]] = {}
    for i, cat in enumerate(categories_from_meta(rows, category_key)):
        groups.setdefault(cat, []).append(i)
    by_category = {cat: _summarise(per_row, groups[cat], metrics, ci, n_boot, alpha, seed)
                   for cat in sorted(groups)}
    by_category[ALL] = dict(result)
    result["by_category"] = by_category
    return result
