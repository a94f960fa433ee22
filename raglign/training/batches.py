"""The same global data order on every worker, for any number of workers.

Global batch b of epoch e is ``perm_e[b*B:(b+1)*B]``. Its rows are dealt to S = W * accumulation
micro-batch slots of mb = B / S rows each (W workers); worker r's micro-batch a is slot
``a*W + r``. The deal depends only on the step's rows, their sizes and S, so the update of a step
is the same whether the S slots are workers or accumulation steps, and a resumed run continues
the same order from its step.

Why dealt by size and not sliced: the workers of a DDP step wait for the slowest at the gradient
all-reduce, and a micro-batch's cost grows with its text (every row's question and documents are
tokenised and padded to the longest in a length bucket). Contiguous slices of a random order
give one worker the long rows by chance; dealing the largest row first to the lightest slot
(the greedy longest-processing-time rule) evens the slots' characters. Characters, not tokens:
they need no tokenizer, and on the HotpotQA benchmark steps a deal by tokens evened the ranks'
padded tokens only slightly better (docs/benchmarks.md, "Where the 2-worker time goes").

Why an in-memory table and not a Ray Data stream: a streaming split hands blocks to workers in
whatever order they finish, so neither the order nor the deal would hold.
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


def row_sizes(table: pa.Table) -> list[int]:
    """Characters of each row's question plus all its documents: the deal's cost of a row."""
    import numpy as np
    import pyarrow.compute as pc

    docs = table.column("docs").combine_chunks()
    chars = np.concatenate([[0], np.cumsum(pc.utf8_length(docs.flatten()).to_numpy())])
    offsets = docs.offsets.to_numpy() - docs.offsets[0].as_py()
    question = pc.utf8_length(table.column("question")).to_numpy()
    return (question + chars[offsets[1:]] - chars[offsets[:-1]]).tolist()


def balanced_slots(rows: list[int], sizes: list[int], slots: int) -> list[list[int]]:
    """Deal ``rows`` to ``slots`` equal-count slots, evening the sum of ``sizes`` per slot.

    Largest row first, each to the lightest slot that is not full (ties to the lower slot, so
    the deal is deterministic); within a slot the rows keep their order in ``rows``.
    """
    per_slot = len(rows) // slots
    order = sorted(range(len(rows)), key=lambda i: (-sizes[rows[i]], i))
    load, members = [0] * slots, [[] for _ in range(slots)]
    for i in order:
        s = min((s for s in range(slots) if len(members[s]) < per_slot),
                key=lambda s: (load[s], s))
        load[s] += sizes[rows[i]]
        members[s].append(i)
    return [[rows[i] for i in sorted(m)] for m in members]


def micro_batch_rows(perm: list[int], step_in_epoch: int, cfg: TrainConfig, rank: int,
                     world: int, accum_index: int, sizes: list[int] | None = None) -> list[int]:
    """Row indices of worker ``rank``'s micro-batch ``accum_index`` within a global step.

    With ``sizes`` (:func:`row_sizes`) the step's rows are dealt by size; without, each slot is
    a contiguous slice of the step's rows.
    """
    slot = accum_index * world + rank
    step = perm[step_in_epoch * cfg.batch_size:(step_in_epoch + 1) * cfg.batch_size]
    if sizes is None:
        return step[slot * cfg.micro_batch:(slot + 1) * cfg.micro_batch]
    return balanced_slots(step, sizes, cfg.batch_size // cfg.micro_batch)[slot]


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
