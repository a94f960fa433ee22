"""Validation inside ``raglign train``: held-out questions in ``raglign eval``'s reranker setting.

Every objective trains a reranker, and every reranker is judged the same way: re-score the
first ``k1`` candidates of held-out canonical rows and compute Recall@k, NDCG@k and MRR against
their gold documents. That is :func:`raglign.pipeline.evaluate.reranker_setting`, the code
``raglign eval`` runs, so a validation number equals ``raglign eval`` on the same model and rows.
This module only decides *which* rows validate (:func:`load_validation`), spreads them over the
workers and gathers their per-row metrics (:func:`validate`), and says which validated step is
worth keeping (:func:`is_new_best`); the trainer's loop (:mod:`raglign.pipeline.train_loop`) calls
it, whatever the objective.

Why the rows are canonical even when the training rows are mined groups or targets: a group
holds a positive and a few sampled negatives, not the ranking the reranker must produce, and
has no gold flags; the held-out question's own candidates do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any


from raglign import storage
from raglign.data.io import parquet_files, read_file
from raglign.data.schema import validate_row
from raglign.data.split import is_test
from raglign.errors import ConfigError, DataError
from raglign.training_config import LM_OBJECTIVES, TrainConfig, ValidationOptions

if TYPE_CHECKING:
    from raglign.pipeline.evaluate import EvalConfig


@dataclass
class HeldOut:
    """The training questions a validation fraction holds out (the fixed id hash of
    :func:`raglign.data.split.is_test`); as a training-row filter it counts what it turned away."""

    fraction: float
    seed: int
    turned_away: int = 0

    def __contains__(self, row_id: str) -> bool:
        return is_test(str(row_id), self.fraction, self.seed)

    def exclude(self, row_id: str) -> bool:
        """True (and counted) for a training row that must not be trained on."""
        if row_id in self:
            self.turned_away += 1
            return True
        return False


def held_out(cfg: TrainConfig) -> HeldOut | None:
    """The training-row filter of ``validation.fraction`` (None without one)."""
    v = cfg.validation
    return HeldOut(v.fraction, v.seed) if v is not None and v.fraction is not None else None


@dataclass
class ValidationSet:
    """What every worker needs to validate: the rows (canonical, first ``k1`` candidates), the
    eval settings that score them, and the metric names they yield (``raglign eval``'s)."""

    rows: list[dict]
    eval_config: EvalConfig
    names: list[str]
    source: str  # where the rows came from, for the model card
    options: ValidationOptions

    @property
    def attribute(self) -> str:
        return self.options.score_attribute

    def describe(self) -> str:
        how = (f"the {self.options.fraction:.0%} of the training questions held out by the id "
               f"hash (seed {self.options.seed})" if self.options.fraction is not None
               else "every row")
        return f"{len(self.rows)} questions of `{self.source}` ({how})"


def validation_source(cfg: TrainConfig) -> str:
    """Where the canonical validation rows are read from.

    ``validation.data`` when given; else (a fraction of the training questions) the training
    data itself when it is canonical (gumbel, rrpo), or the rows ``raglign mine`` read, as its
    ``_summary.json`` records them.
    """
    v = cfg.validation
    if v.data is not None:
        return v.data
    if cfg.objective in LM_OBJECTIVES:
        return cfg.data
    summary = storage.join(cfg.data, "_summary.json")
    source = storage.read_json(summary).get("config", {}).get("input") \
        if storage.is_file(summary) else None
    if source is None or not storage.exists(source):
        found = f"its _summary.json names {source!r}, not a directory here" if source else \
            "it has no _summary.json naming them"
        raise ConfigError(f"validation.data: validation.fraction on mined rows ({cfg.data}) needs "
                          f"the canonical rows they were mined from ({found}); set "
                          "validation.data to that directory (the `raglign label` output)")
    return source


def _read_rows(source: str, keep: Callable[[str], bool], k1: int,
               limit: int | None) -> list[dict]:
    """Canonical rows ``keep`` accepts, with candidates, cut to the first ``k1`` candidates."""
    try:
        files = parquet_files(source)
    except DataError as e:  # no such directory: name the recipe field that points there
        raise ConfigError(f"validation.data: {e}") from None
    rows = []
    for f in files:
        for i, row in enumerate(read_file(f).to_pylist()):
            validate_row(row, str(f), row.get("id") or i)
            if not row["candidates"] or not keep(str(row["id"])):
                continue
            rows.append({"id": str(row["id"]), "question": row["question"],
                         "answers": list(row.get("answers") or []),
                         "candidates": row["candidates"][:k1], "meta": row.get("meta")})
            if limit is not None and len(rows) >= limit:
                return rows
    return rows


def load_validation(cfg: TrainConfig, train_ids: list[str], split: HeldOut | None) -> ValidationSet:
    """The validation rows of ``cfg.validation``, checked before any worker starts.

    Errors name the field to fix: no rows, rows without gold documents to rank against, a
    metric no row defines, or (``data`` alone) questions that are also training questions.
    """
    from raglign.pipeline.evaluate import EvalConfig, row_metrics

    options = cfg.validation
    source = validation_source(cfg)
    keep = (lambda rid: rid in split) if split is not None else (lambda rid: True)
    rows = _read_rows(source, keep, options.k1, options.limit)
    where = "validation.fraction" if split is not None else "validation.data"
    if not rows:
        hint = (f"no question of {source} falls in the held-out fraction {options.fraction} "
                f"(seed {options.seed}); a larger fraction or another seed" if split is not None
                else f"{source} has no rows with candidates")
        raise ConfigError(f"{where}: no validation rows: {hint}")
    if split is None:
        shared = sorted(set(train_ids) & {r["id"] for r in rows})
        if shared:
            raise ConfigError(f"validation.data: {len(shared)} validation questions are also "
                              f"training questions (first: {shared[0]!r}); a model must not be "
                              "validated on what it trained on. Use validation.fraction to hold "
                              "questions out of the training data instead")
    eval_config = EvalConfig(data=source, output="-", reranker=cfg.model, reranker_kind=cfg.kind,
                             k1=options.k1)
    # Identity rankings: which metrics each row defines (a row without gold flags defines none).
    defined = [row_metrics(r, list(range(len(r["candidates"]))), eval_config) for r in rows]
    names = next(([k for k in m if k != "id"] for m in defined if len(m) > 1), None)
    if names is None:
        raise ConfigError(f"{where}: none of the {len(rows)} validation rows of {source} has gold "
                          "documents (candidates' is_gold or meta.gold_doc_ids) to rank against")
    if not any(m.get(options.metric) is not None for m in defined):
        raise ConfigError(f"validation.metric: {options.metric} is undefined on every "
                          f"validation row of {source} (no indirectly relevant gold documents)")
    return ValidationSet(rows, eval_config, names, source, options)


def validate(reranker, validation: ValidationSet, rank: int, world: int, device) -> dict[str, Any]:
    """``{"val_<metric>": mean, "val_n": rows}`` of the reranker on the validation rows.

    Worker r scores rows r, r + W, …; the per-row metrics travel as one tensor (value and
    defined-flag per row and metric) through an all-reduce, which gloo and NCCL both do, and
    every rank averages them with ``raglign eval``'s own aggregation.
    """
    import torch
    import torch.distributed as dist

    from raglign.evaluate.aggregate import aggregate
    from raglign.pipeline.evaluate import reranker_setting

    rows, names = validation.rows, validation.names
    mine = list(range(rank, len(rows), world))
    per_row = reranker_setting(reranker, [rows[i] for i in mine], validation.eval_config)
    table = torch.zeros(len(rows), len(names), 2, dtype=torch.float64)
    for i, metrics in zip(mine, per_row):
        for j, name in enumerate(names):
            if metrics.get(name) is not None:
                table[i, j] = torch.tensor([metrics[name], 1.0], dtype=torch.float64)
    if world > 1:
        table = table.to(device)
        dist.all_reduce(table)
    full = [{name: value if defined else None for name, (value, defined) in zip(names, row)}
            for row in table.cpu().tolist()]
    summary = aggregate(full, metrics=names, ci=False)
    return {**{f"val_{n}": summary[n] for n in names if summary[n] is not None},
            "val_n": summary["n"]}


def is_new_best(metrics: dict, history: list[dict], attribute: str) -> bool:
    """Whether a validation is at least as good as every earlier one of the run, the starting
    model's included: the loop then checkpoints the step even between ``checkpoint_every``
    steps, so the best model is always on disk.

    Ties count, and go to the later step, because that is how Ray Train's ``CheckpointConfig``
    ranks equal scores among the checkpoints it keeps (local mode keeps the same one). The
    starting model is the exception: it is exported unless a trained step is strictly better
    (:func:`raglign.training.export.choose_export`).
    """
    earlier = [h[attribute] for h in history if attribute in h]
    return not earlier or metrics[attribute] >= max(earlier)
