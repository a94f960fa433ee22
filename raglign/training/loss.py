"""The one interface between the training loop and an objective.

The loop knows nothing about any objective: it builds the configured one once per worker
(:func:`build_loss`), calls it on each micro-batch, and reduces the metrics it reports per
logging window over the workers. The model card asks the same class to describe itself. Which
rows an objective reads is its registry line's ``rows`` (``raglign.training_config.OBJECTIVES``),
not an attribute here, because the driver and config validation must know it without importing
the loss (and torch).
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from raglign.training_config import OBJECTIVE_NAMES, OBJECTIVES, SCORE_OBJECTIVES, TrainConfig

if TYPE_CHECKING:
    import torch

    from raglign.training.batches import Batch


class Loss(ABC):
    """An objective on one worker: ``loss = cls.build(cfg, device)``, then ``loss(model, batch)``.

    ``model`` is the reranker behind DDP (:func:`raglign.training.reranker.scorer_class`): a loss
    must score through it, or the workers' gradients are not averaged.
    """

    @classmethod
    def build(cls, cfg: TrainConfig, device, **services) -> Loss:
        """The loss for ``cfg``, built once per worker (it may load models). ``services`` are
        what the job started for it outside the worker (RRPO: ``rewards``, its reward actors)."""
        return cls(cfg, device, **services)

    @abstractmethod
    def __call__(self, model, batch: Batch) -> torch.Tensor:
        """The scalar loss of one micro-batch."""

    def update_plan(self, micro_batches: int) -> list[list[int]]:
        """The optimizer steps of one global batch, each the indices of this worker's
        micro-batches whose losses it accumulates. The loop calls it at the start of every
        global batch (and once before training, to size the schedule). By default one step over
        all of them; RRPO takes several passes over one rollout (PPO epochs x mini-batches) and
        forgets the previous batch's rollouts here."""
        return [list(range(micro_batches))]

    @property
    def looks_ahead(self) -> bool:
        """Whether :meth:`before_updates` wants the next step's micro-batches too."""
        return False

    def before_updates(self, model, batches: list[Batch], upcoming: list[Batch] | None) -> None:
        """Called once per global batch before its updates, under the step's autocast, with
        this worker's micro-batches and, when :attr:`looks_ahead`, the next step's (None when
        there is none, or the step ends in a checkpoint, so that a resumed run sees what an
        uninterrupted one did): RRPO starts reading the next rollout's rewards here. Nothing
        by default."""

    def pop_metrics(self) -> dict[str, float]:
        """Peaks since the last call (maximised over workers), e.g. a cache's MiB; none by default."""
        return {}

    def pop_means(self) -> dict[str, float]:
        """Means since the last call (averaged over workers), e.g. rewards; none by default."""
        return {}

    @classmethod
    @abstractmethod
    def describe(cls, cfg: TrainConfig) -> tuple[str, str]:
        """For the model card: what the rows supervise, and the loss with its settings."""


class LossTable(Mapping[str, type[Loss]]):
    """Objective name -> its :class:`Loss` class, imported on first lookup from the registry's
    ``"module:Class"``, so that holding the table imports no objective."""

    def __init__(self, names: Iterable[str]):
        self._names = tuple(names)

    def __getitem__(self, name: str) -> type[Loss]:
        if name not in self._names:
            raise KeyError(f"{name!r} is none of {', '.join(self._names)}")
        module, cls = OBJECTIVES[name].loss.split(":")
        return getattr(importlib.import_module(module), cls)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


LOSSES = LossTable(OBJECTIVE_NAMES)
# The objectives that mined rows train (the ones :mod:`raglign.training.tables` loads).
SCORE_LOSSES = LossTable(SCORE_OBJECTIVES)


def build_loss(cfg: TrainConfig, device: Any, **services) -> Loss:
    """``loss(model, batch) -> scalar`` for the configured objective, built once per worker."""
    return LOSSES[cfg.objective].build(cfg, device, **services)
