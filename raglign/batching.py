"""Length-sorted micro-batching, shared by the generator and the encoders.

A padded batch costs ``rows * longest`` tokens of compute. Texts of mixed lengths waste much of
that on padding: 32 HotpotQA texts (one micro-batch of 4 training groups of 7 paragraphs plus
their questions) pad to 1.94x their real tokens. Sorting by length and cutting under a token
budget removes almost all of it, and the results come back in input order, so callers never see
the reordering. On a CPU small forwards are also faster per token than one large one (cache
reuse): forward+backward of that micro-batch ran 4.2x faster in 1024-token pieces than as one
batch (``benchmarks/bench_padding.py``); a GPU wants larger pieces to stay busy.

Encoders and rerankers default to half the generator's CPU budget (512 tokens, 2-4 pairs a
piece). One process trains and scores at least as fast at 512 as at 1024 (1.03-1.09x), and a
DDP step split over workers sorts fewer texts per worker, so its pieces pad more: on the
benchmark's HotpotQA steps two workers computed 5.1 % more padded FLOPs than one process at
1024 and 1.8 % at 512, and two ``raglign train`` workers over one went from 1.63-1.69x to
1.73-1.76x, interleaved on the same 2-core machine (docs/benchmarks.md, "Training side by side
with sentence-transformers"). The generator's scoring keeps 1024, where it was measured.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch


DEVICE_TOKEN_BUDGET = {"cpu": 1024, "cuda": 16384}
ENCODER_TOKEN_BUDGET = {"cpu": 512, "cuda": 16384}


def token_budget(device: torch.device, budget: int | None,
                 defaults: dict[str, int] = DEVICE_TOKEN_BUDGET) -> int:
    """``budget`` if given, else the device type's default in ``defaults`` (the generator's:
    CPU 1024, CUDA 16384; :data:`ENCODER_TOKEN_BUDGET` for encoders and rerankers)."""
    return budget if budget is not None else defaults.get(device.type, 16384)


def length_batches(lengths: Sequence[int], batch_size: int, token_budget: int,
                   extra_cost=None) -> Iterator[list[int]]:
    """Indices grouped into micro-batches, longest first, each with at most ``batch_size`` rows
    and ``rows * longest <= token_budget`` (a single over-long row still forms its own batch).
    ``extra_cost(batch) -> bool`` may veto adding a row for another resource (logit memory)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batch: list[int] = []
    for i in order:
        candidate = batch + [i]
        too_big = (len(candidate) > batch_size
                   or len(candidate) * lengths[candidate[0]] > token_budget
                   or (extra_cost is not None and not extra_cost(candidate)))
        if batch and too_big:
            yield batch
            candidate = [i]
        batch = candidate
    if batch:
        yield batch


def forward_length_sorted(lengths: Sequence[int], token_budget: int,
                          forward: Callable[[list[int]], torch.Tensor]) -> torch.Tensor:
    """``forward(indices)`` (rows for those inputs, first dimension = len(indices)) over
    length-sorted micro-batches, concatenated back into input order; gradients flow through.
    """
    chunks = list(length_batches(lengths, len(lengths), token_budget))
    order = [i for chunk in chunks for i in chunk]
    out = torch.cat([forward(chunk) for chunk in chunks])
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return out[inverse.to(out.device)]
