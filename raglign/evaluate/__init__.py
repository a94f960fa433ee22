"""Evaluation: dataset-level aggregation of per-row metrics (``aggregate``) and reports.

Per-example metrics live in :mod:`raglign.metrics`; this package turns them into dataset numbers.
"""
