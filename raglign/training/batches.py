"""The same global data order on every worker, for any number of workers.

Global batch b of epoch e is ``perm_e[b*B:(b+1)*B]``; worker r's micro-batch a is its slice
``(a*W + r)*mb …`` (W workers, mb = B / (W * accumulation)), so the update of a step is the same
whatever W is, and a resumed run continues the same order from its step. Why an in-memory table
and not a Ray Data stream: a streaming split hands blocks to workers in whatever order they
finish, so neither holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from raglign.training_config import TrainConfig


def epoch_permutation(n_rows: int, seed: int, epoch: int) -> list[int]:
    """The row order of ``epoch``: a function of (seed, epoch) only, hence resumable."""
    import torch

    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n_rows, generator=g).tolist()


def micro_batch_rows(perm: list[int], step_in_epoch: int, cfg: TrainConfig, rank: int,
                     world: int, accum_index: int) -> list[int]:
    """Row indices of worker ``rank``'s micro-batch ``accum_index`` within a global step."""
    start = step_in_epoch * cfg.batch_size + (accum_index * world + rank) * cfg.micro_batch
    return perm[start:start + cfg.micro_batch]


@dataclass
class Batch:
    queries: list[str]
    docs: list[list[str]]  # padded with "" to the longest group
    values: Any  # torch.Tensor [b, n] float32; None for a table without values (gumbel)
    mask: Any  # torch.Tensor [b, n] bool, False on padding
    columns: dict[str, list]  # every column of the rows, unpadded (gumbel: answer, titles …)


def make_batch(table: pa.Table, rows: list[int]) -> Batch:
    import torch

    part = table.take(pa.array(rows, type=pa.int64())).to_pydict()
    n = max(len(d) for d in part["docs"])
    docs = [d + [""] * (n - len(d)) for d in part["docs"]]
    values = None
    if "values" in part:
        values = torch.tensor([v + [0.0] * (n - len(v)) for v in part["values"]],
                              dtype=torch.float32)
    mask = torch.tensor([[True] * len(d) + [False] * (n - len(d)) for d in part["docs"]])
    return Batch(part["question"], docs, values, mask, part)
