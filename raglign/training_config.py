"""``TrainConfig``: the ``train`` job — which data, which reranker, which objective, which schedule.

Defaults follow RADIO's fine-tuning (../shared/design/methods.md): AdamW, lr 6e-5, weight decay
0.01, 2 epochs, max length 512, groups of 1 positive + 6 negatives as ``raglign mine`` writes
them, seed 42; plus the usual transformer recipe the papers leave implicit (linear warmup over
10 % of the steps then linear decay to 0, gradient clipping at 1.0).

``batch_size`` counts *groups per optimizer step over all workers*: each worker takes
``batch_size / (num_workers * grad_accumulation)`` groups per micro-step, so the update — and
the result — does not change when the job moves from 1 to 8 workers or trades workers for
accumulation. The two must divide ``batch_size``.

``num_workers: 0`` is Ray Train's local mode: the loop runs in the calling process without a Ray
cluster (for debugging with pdb, and for fast tests). It writes no intermediate checkpoints and
cannot resume; everything else — data order, objective, export — is the same code.

This module imports no torch or Ray, so ``raglign --help`` and config validation stay fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from raglign.config import JobConfig

# Fields that may change between a run and its resumption: they affect where and how fast the
# job runs, not what it computes (the update is defined over global batches, see above).
RESUMABLE_FIELDS = frozenset({"ray", "num_workers", "use_gpu", "cpus_per_worker", "max_steps",
                              "max_failures", "log_every", "checkpoint_every", "keep_checkpoints"})
# Names of raglign.objectives.OBJECTIVES, repeated here to keep torch out of config validation;
# tests/test_train.py checks the two stay equal.
OBJECTIVE_NAMES = ("infonce", "supervised", "kl", "replug", "emdr")
# InfoNCE's temperature when none is given: cross-encoder logits are used as they are (tau = 1,
# FlagEmbedding's reranker recipe); cosine scores in [-1, 1] need a sharp tau (FlagEmbedding's
# embedder default 0.02) or the softmax over a group stays nearly uniform.
DEFAULT_TEMPERATURE = {"cross": 1.0, "bi": 0.02}


class TrainConfig(JobConfig):
    """Fine-tune a cross- or bi-encoder reranker on mined groups or soft targets with Ray Train."""

    job: Literal["train"] = "train"
    data: str = Field(description="Parquet dir from `raglign mine` (groups or target rows)")
    output: str = Field(description="where model/, metrics.jsonl and loss_curve.png go")
    model: str = "minilm-l6"
    kind: Literal["cross", "bi"] = "cross"
    similarity: Literal["cosine", "dot"] | None = None  # bi only; None = the model's own
    objective: str = "infonce"
    temperature: float | None = Field(default=None, gt=0)  # None: DEFAULT_TEMPERATURE[kind]
    beta: float = Field(default=1.0, gt=0)  # REPLUG: Q_LM = softmax(log p_LM / beta)
    in_batch_negatives: bool = False  # InfoNCE with a bi-encoder only
    max_length: int = Field(default=512, ge=8)
    epochs: int = Field(default=2, ge=1)
    batch_size: int = Field(default=16, ge=1)  # groups per optimizer step, all workers
    grad_accumulation: int = Field(default=1, ge=1)
    lr: float = Field(default=6e-5, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    warmup_ratio: float = Field(default=0.1, ge=0, le=1)
    max_grad_norm: float | None = Field(default=1.0, gt=0)
    seed: int = 42
    bf16: bool = True  # autocast to bfloat16 on GPU workers (CPU workers train in float32)
    limit: int | None = Field(default=None, ge=1)  # train on the first N rows only
    num_workers: int = Field(default=1, ge=0)  # 0: Ray Train local mode, in this process
    use_gpu: bool = False
    cpus_per_worker: int = Field(default=1, ge=1)
    checkpoint_every: int = Field(default=500, ge=1)  # optimizer steps
    keep_checkpoints: int = Field(default=2, ge=1)
    max_steps: int | None = Field(default=None, ge=1)  # stop (and checkpoint) early; resumable
    max_failures: int = Field(default=0, ge=-1)  # worker-group restarts from the last checkpoint
    log_every: int = Field(default=10, ge=1)
    run_name: str = "train"
    storage_path: str | None = None  # Ray Train storage; None: <output>/ray; s3://… on clusters

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.objective not in OBJECTIVE_NAMES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVE_NAMES)}, "
                             f"got {self.objective!r}")
        if self.in_batch_negatives and (self.objective != "infonce" or self.kind != "bi"):
            raise ValueError("in_batch_negatives needs objective 'infonce' and kind 'bi' (a "
                             "cross-encoder would score batch_size times more pairs)")
        if self.similarity is not None and self.kind != "bi":
            raise ValueError("similarity applies to kind 'bi' only")
        per_step = max(self.num_workers, 1) * self.grad_accumulation
        if self.batch_size % per_step:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of num_workers x "
                             f"grad_accumulation ({per_step})")
        return self

    @property
    def score_temperature(self) -> float:
        return self.temperature if self.temperature is not None else DEFAULT_TEMPERATURE[self.kind]

    @property
    def micro_batch(self) -> int:
        """Groups per worker per forward/backward pass."""
        return self.batch_size // (max(self.num_workers, 1) * self.grad_accumulation)

    @property
    def storage(self) -> str:
        return self.storage_path or str(Path(self.output).resolve() / "ray")
