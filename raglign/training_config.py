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

``objective: gumbel`` (G-Rerank, Algorithm 1) trains on canonical rows (question, answers,
candidates: ``raglign data convert`` or ``retrieve`` output) instead of mined rows: the loss is
the gold answer's NLL under a frozen generator that reads the candidates through a relaxed
top-k mask of the reranker's scores. Its settings live in the ``gumbel:`` block.
``objective: rrpo`` (RRPO) trains on the same canonical rows by reinforcement learning: episodes
of k documents sampled from the reranker's Plackett-Luce policy, rewarded by a frozen reader,
against the frozen initial reranker's greedy choices; settings in the ``rrpo:`` block, and
``temperature`` is the policy's (scores / temperature).

``validation`` names held-out questions (a canonical directory, or a fraction of the training
questions by the fixed id hash) that the loop scores every ``eval_every`` steps in ``raglign
eval``'s reranker setting; the exported model is the best of them by ``validation.metric``, or
the starting model when no trained step beats it (docs/training.md).

This module imports no torch or Ray, so ``raglign --help`` and config validation stay fast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, PositiveInt, field_validator, model_validator

from raglign import storage
from raglign.config import JobConfig, StrictModel
from raglign.gumbel.options import GumbelMaskOptions
from raglign.models.generator_spec import GeneratorSpec, moved_keys

# Fields that may change between a run and its resumption: they affect where and how fast the
# job runs, not what it computes (the update is defined over global batches, see above).
RESUMABLE_FIELDS = frozenset({"ray", "num_workers", "use_gpu", "cpus_per_worker", "max_steps",
                              "max_failures", "log_every", "checkpoint_every", "keep_checkpoints",
                              "eval_every"})


@dataclass(frozen=True)
class Objective:
    """A training objective as config validation and the job's driver see it: where its loss
    is and which rows it reads, as plain strings, so that neither imports torch."""

    loss: str  # "module:Class" of its raglign.training.loss.Loss, imported where it runs
    rows: str  # "canonical" (question, answers, candidates), or the per-document field of
    # mined rows it is trained from: "labels", "target" or "lm_logprob" (`raglign mine`)


# The objectives of ``raglign train``. Adding one is a module in raglign/training/losses/ (a Loss
# subclass) and one line here; the names, the rows the driver loads and the loss every worker
# builds all come from this table.
OBJECTIVES = {
    "infonce": Objective("raglign.training.losses.score:InfoNCE", "labels"),
    "supervised": Objective("raglign.training.losses.score:Supervised", "labels"),
    "kl": Objective("raglign.training.losses.score:KL", "target"),
    "replug": Objective("raglign.training.losses.score:Replug", "lm_logprob"),
    "emdr": Objective("raglign.training.losses.score:EMDR", "lm_logprob"),
    "gumbel": Objective("raglign.training.losses.gumbel:GumbelLoss", "canonical"),
    "rrpo": Objective("raglign.training.losses.rrpo:RRPOLoss", "canonical"),
}
OBJECTIVE_NAMES = tuple(OBJECTIVES)
# Losses of the reranker's scores against one per-document value of mined rows.
SCORE_OBJECTIVES = tuple(n for n, o in OBJECTIVES.items() if o.rows != "canonical")
# Objectives trained on canonical rows; each runs a frozen generator over the candidates and
# has its settings in the config block of its name (``gumbel:``, ``rrpo:``).
LM_OBJECTIVES = tuple(n for n, o in OBJECTIVES.items() if o.rows == "canonical")

# InfoNCE's temperature when none is given: cross-encoder logits are used as they are (tau = 1,
# FlagEmbedding's reranker recipe); cosine scores in [-1, 1] need a sharp tau (FlagEmbedding's
# embedder default 0.02) or the softmax over a group stays nearly uniform.
DEFAULT_TEMPERATURE = {"cross": 1.0, "bi": 0.02}
# The base anchor's weight when none is given, per (reranker kind, objective): what the
# distillation benchmark supports (docs/distillation.md; MiniLM bi-encoder, SmolLM2 teachers, 33
# held-out HotpotQA questions). At 0.5 the KL students (PDist, LOOP, ADist) recover half of what
# they lose against the base and beat their shuffled controls, EMDR gains MRR; REPLUG and
# InfoNCE (RADIO) barely move, and nothing was measured on cross-encoders: 0 there.
DEFAULT_ANCHOR = {("bi", "kl"): 0.5, ("bi", "emdr"): 0.5}
# How an anchor mixes the base in when ``anchor_mix`` is unset, per (kind, objective): for a
# bi-encoder KL student the geometric mix, chosen on 128 NQ validation questions (MRR 0.965 vs
# 0.943 arithmetic at the default temperature; docs/distillation.md point 10); else arithmetic.
DEFAULT_ANCHOR_MIX = {("bi", "kl"): "geometric"}
# The exported weights' merge with the starting model's, (1 - w) x trained + w x base (WiSE-FT),
# when ``base_merge`` is unset: w 0.25 for a bi-encoder KL student, chosen on 128 NQ validation
# questions (with the geometric anchor at T 0.02: MRR 0.973 against the unmerged 0.965 and the
# base's 0.966); on the demo's HotpotQA split it lifts PDist from significantly below the base
# (MRR -0.051) to within noise (-0.035 [-0.08, +0.00]) (docs/distillation.md point 12). Else 0.
DEFAULT_BASE_MERGE = {("bi", "kl"): 0.25}
# The reranker-setting metrics `raglign eval` reports with its defaults (k 5, ks 1/5/10/20),
# which validation reports with a ``val_`` prefix; repeated here to keep config validation light
# (tests/test_train_validation.py checks them against raglign.pipeline.evaluate.row_metrics).
VALIDATION_METRICS = (*(f"{m}@{k}" for k in (1, 5, 10, 20) for m in ("recall", "ndcg")),
                      "mrr", "indirect_recall@5")


def _moved_to_generator(data):
    """``dtype:`` beside ``generator:`` (recipes before the spec) names its new place."""
    moved_keys(data, ("dtype", "device", "backend"))
    return data


def _worker_generator(spec: GeneratorSpec, who: str, why: str) -> None:
    """The frozen LLM of a training objective is loaded in every training worker, on the
    worker's device, by the transformers backend (``why`` it needs that backend)."""
    spec.require_transformers(f"{who} {why}")
    if spec.device != "auto":
        raise ValueError(f"{who} runs on the training worker's device (use_gpu); leave "
                         "generator.device auto")


class GumbelOptions(GumbelMaskOptions):
    """G-Rerank's Algorithm 1: the mask (k, tau, kappa, noise, samples; paper: tau 0.5, kappa
    1.0, k = the generator's k2 = 5) over the scores of the first n = k1 = 20 candidates.

    ``generator`` (a :class:`~raglign.models.generator_spec.GeneratorSpec`) is the frozen LLM,
    on the transformers backend only: the loss backpropagates through its attention to the
    mask, which vLLM and HTTP servers do not expose. Its ``dtype: auto`` loads it in bfloat16
    where the device supports it (CUDA with bf16, or CPU), float16 on older GPUs; it only runs
    forward passes, so bf16 halves its memory and the document caches' at no cost to the
    reranker's float32 training. It runs on the training worker's device (``use_gpu``).
    """

    generator: GeneratorSpec = Field(GeneratorSpec(name="smollm2-135m"),
                                     description="frozen LLM: packaged name, dir or hub id")
    n: PositiveInt = Field(20, description="candidates per question (the first n; fewer if absent)")
    answer_alias: Literal["best", "first"] = Field(
        "best", description="which gold alias the loss scores (raglign.signals.items.pick_answer)")

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data):
        return _moved_to_generator(data)

    @model_validator(mode="after")
    def _transformers_only(self) -> GumbelOptions:
        _worker_generator(self.generator, "G-Rerank's generator",
                          "needs gradients through the model's attention, which only the "
                          "transformers backend exposes")
        return self

    @property
    def min_candidates(self) -> int:
        """A row needs one candidate for the mask to choose from."""
        return 1


class RRPOOptions(StrictModel):
    """RRPO (../shared/design/methods.md): k = 3 (the paper's best of k_train in {1, 3, 5}),
    n = k1 = 20 candidates, reward = the reader's F1 on its greedy answer given the chosen
    documents. The paper's abstract gives no PPO constants; these are PPO's usual ones
    (clip 0.2, GAE λ 0.95, γ 1) and a small KL weight.

    ``reward: logprob`` (log p(gold alias | the QA prompt with the chosen documents), one
    scoring forward, no decoding) is the cheap, dense alternative methods.md names; F1/EM need
    one greedy answer per distinct subset.

    Reward actors: the reader lives in ``reward_actors`` Ray actors apart from the Train
    workers (own CPUs / GPUs); every worker sends its subsets to the actor a stable hash of
    (question, chosen set) names, so one cache serves all workers and no subset is read twice.
    There the reader takes any ``generator.backend``, as labelling does: transformers (on CUDA
    when ``reward_actor_gpus > 0``), vLLM (one engine inside each actor, loaded once, on the
    ``reward_actor_gpus = vllm.tensor_parallel_size`` GPUs the actor holds) or an
    OpenAI-compatible server (``http``; F1/EM need its ``endpoint: completions``). With ``reward_actors: 0`` the reader is loaded in every Train
    worker, on the transformers backend only.

    PPO: the ``batch_size`` questions of a step are one rollout (episodes sampled, rewarded and
    their log-probabilities stored once); ``ppo_epochs`` passes over it follow, each in
    ``minibatches`` optimizer steps of ``grad_accumulation / minibatches`` micro-batches. From
    the second update on the ratio to the sampling policy leaves 1 and the clip can bind (it
    does once an update moves the policy by more than ε on a step); 4 epochs
    is PPO's usual setting, ``ppo_epochs: 1, minibatches: 1`` one policy-gradient step per
    rollout.

    ``overlap_rollouts``: without it a step is a rollout (the worker waits for the reader) then
    the updates (the reader waits for the worker), strictly in turn. With it the episodes of the
    next step are sampled from the policy before this step's updates and sent to the reward
    actors at once, so the reader works while the worker updates: one step off-policy (as
    OpenRLHF's ``--async_train``), which the stored log-probabilities of the sampling policy and
    the clip absorb. A step that ends in a checkpoint does not look ahead, so a resumed run
    samples what an uninterrupted one does.
    """

    generator: GeneratorSpec = Field(GeneratorSpec(name="smollm2-135m"),
                                     description="frozen reader: packaged name, dir or hub id")
    n: PositiveInt = Field(20, description="candidates per question (the first n)")
    k: PositiveInt = Field(3, description="documents chosen per episode")
    reward: Literal["f1", "em", "logprob"] = "f1"
    max_new_tokens: PositiveInt = Field(32, description="reader answer length (f1, em)")
    gamma: float = Field(1.0, ge=0, le=1)
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda")
    clip_eps: float = Field(0.2, gt=0, lt=1)
    kl_beta: float = Field(0.01, ge=0, description="weight of KL(policy || reference)")
    answer_alias: Literal["best", "first"] = Field(
        "best", description="the gold alias the logprob reward scores (F1/EM use every alias)")
    ppo_epochs: PositiveInt = Field(4, description="passes over each rollout batch")
    minibatches: PositiveInt = Field(1, description="optimizer steps per pass; divides "
                                                    "grad_accumulation")
    overlap_rollouts: bool = Field(False, description="read the next batch's rewards in the "
                                   "reward actors while this batch's PPO updates run (one step "
                                   "off-policy); needs reward_actors >= 1")
    reward_actors: int = Field(1, ge=0, description="Ray actors holding the reader, shared by "
                               "every Train worker; 0: each worker loads its own reader "
                               "(local mode, num_workers 0, needs 0 and defaults to it)")
    reward_actor_cpus: float = Field(1.0, gt=0, description="CPUs reserved per reward actor")
    reward_actor_gpus: float = Field(0.0, ge=0, description="GPUs per reward actor (> 0: a "
                                     "transformers reader runs on CUDA; fractions share a "
                                     "GPU); a vLLM reader's engine needs its "
                                     "tensor_parallel_size, the default there")
    reward_actor_restarts: int = Field(3, ge=-1, description="times a dead reward actor is "
                                       "replaced (-1: always); a replacement starts cache-less")

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data):
        return _moved_to_generator(data)

    @model_validator(mode="before")
    @classmethod
    def _engine_gpus(cls, data):
        """A vLLM reader's actor holds its engine's GPUs unless told otherwise."""
        if not isinstance(data, dict) or "reward_actor_gpus" in data:
            return data
        g = data.get("generator")
        if isinstance(g, dict) and g.get("backend") == "vllm":
            tp = (g.get("vllm") or {}).get("tensor_parallel_size", 1)
        elif isinstance(g, GeneratorSpec) and g.backend == "vllm":
            tp = g.vllm.tensor_parallel_size
        else:
            return data
        return {**data, "reward_actor_gpus": tp}

    @model_validator(mode="after")
    def _reader_backend(self) -> RRPOOptions:
        g = self.generator
        if self.overlap_rollouts and not self.reward_actors:
            raise ValueError("rrpo.overlap_rollouts reads the next batch's rewards while the "
                             "worker updates, which needs a reader apart from the worker: set "
                             "rrpo.reward_actors >= 1 (num_workers >= 1)")
        if not self.reward_actors:
            _worker_generator(g, "RRPO's reader", "is loaded in every training worker "
                              "(rrpo.reward_actors: 0); set rrpo.reward_actors >= 1 (Ray "
                              "workers, num_workers >= 1) to read rewards through it in the "
                              "reward actors")
            return self
        if g.backend == "transformers":
            if g.device != "auto":
                raise ValueError("RRPO's reader runs where the reward actors are placed "
                                 "(rrpo.reward_actor_gpus > 0: CUDA); leave generator.device "
                                 "auto")
            return self
        if g.backend == "vllm" and self.reward_actor_gpus != g.vllm.tensor_parallel_size:
            raise ValueError(f"rrpo.reward_actor_gpus: {self.reward_actor_gpus:g}, but a vLLM "
                             "reader runs its engine inside each reward actor, on the GPUs the "
                             "actor holds: set it to generator.vllm.tensor_parallel_size "
                             f"({g.vllm.tensor_parallel_size})")
        if g.backend == "http" and self.reward_actor_gpus > 0:
            raise ValueError("rrpo.reward_actor_gpus applies to readers in the actor: backend "
                             "'http' runs the model on its server; leave it 0")
        if g.backend == "http" and self.reward != "logprob" and g.http.endpoint != "completions":
            raise ValueError(f"rrpo.reward {self.reward!r} on backend 'http': the reader renders "
                             "its QA prompt locally, as the other backends see it, and sends it "
                             "to /v1/completions; set generator.http.endpoint: completions")
        return self

    @property
    def min_candidates(self) -> int:
        """An episode chooses k documents, so a row needs k candidates."""
        return self.k


class ValidationOptions(StrictModel):
    """Held-out questions scored during training in ``raglign eval``'s reranker setting.

    ``data`` alone: every row of that canonical directory validates (none may share an id with
    the training rows). ``fraction``: the training questions whose id falls in that fraction of
    the fixed id hash (:func:`raglign.data.split.is_test` with ``seed``) are left out of training
    and validate instead, read as canonical rows from ``data`` when given, else from the training
    data itself (gumbel, rrpo) or from the labelled rows the mined data came from (the ``input``
    its ``_summary.json`` records). The seed is not 0 on purpose: a training set that is the
    train part of a seed-0 split (the demo's) has no id in any smaller seed-0 fraction.
    """

    data: str | None = Field(None, description="canonical rows: question, candidates with is_gold")
    fraction: float | None = Field(None, gt=0, lt=1,
                                   description="hold out this fraction of the training questions")
    seed: int = Field(1, description="seed of the question-id hash that picks the fraction")
    metric: str = Field("mrr", description="the metric that picks the best checkpoint (higher "
                                           "is better): " + ", ".join(VALIDATION_METRICS))
    k1: PositiveInt = Field(20, description="candidates the reranker re-scores (raglign eval's k1)")
    limit: PositiveInt | None = Field(None, description="validate on the first N rows only")

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, metric: str) -> str:
        if metric not in VALIDATION_METRICS:
            raise ValueError(f"must be one of {', '.join(VALIDATION_METRICS)}, got {metric!r}")
        return metric

    @model_validator(mode="after")
    def _check(self) -> ValidationOptions:
        if self.data is None and self.fraction is None:
            raise ValueError("validation needs data (a canonical rows directory) or fraction "
                             "(of the training questions), or both")
        return self

    @property
    def score_attribute(self) -> str:
        """The reported metric Ray Train ranks checkpoints by."""
        return f"val_{self.metric}"


class TrainConfig(JobConfig):
    """Fine-tune a cross- or bi-encoder reranker on mined groups or soft targets with Ray Train."""

    job: Literal["train"] = "train"
    data: str = Field(description="Parquet dir from `raglign mine` (groups or target rows); "
                                  "canonical rows with candidates for objective gumbel")
    output: str = Field(description="where model/, metrics.jsonl and loss_curve.png go")
    model: str = "minilm-l6"
    kind: Literal["cross", "bi"] = "cross"
    similarity: Literal["cosine", "dot"] | None = None  # bi only; None = the model's own
    objective: str = "infonce"
    temperature: float | None = Field(default=None, gt=0)  # None: DEFAULT_TEMPERATURE[kind]
    beta: float = Field(default=1.0, gt=0)  # REPLUG: Q_LM = softmax(log p_LM / beta)
    in_batch_negatives: bool = False  # InfoNCE with a bi-encoder only
    # Weight a of the pull towards the frozen base reranker (score objectives): loss =
    # (1 - a) * objective + a * KL(p_base || p_R), both at the score temperature; for the kl
    # objective the same as mixing its targets with the base's distribution (docs/training.md).
    anchor: float | None = Field(default=None, ge=0, lt=1)  # None: DEFAULT_ANCHOR, else 0
    # how the anchor combines with the objective: "arithmetic", (1 - a) x loss + a x
    # KL(p_base || p_R); "geometric" (kl only), the target replaced by target^(1-a) x p_base^a;
    # None: DEFAULT_ANCHOR_MIX, else arithmetic
    anchor_mix: Literal["arithmetic", "geometric"] | None = None
    # the exported model's weights moved back toward the starting model's: (1 - w) x trained +
    # w x base (WiSE-FT; raglign.training.merge); None: DEFAULT_BASE_MERGE, else 0
    base_merge: float | None = Field(default=None, ge=0, lt=1)
    max_length: int = Field(default=512, ge=8)
    epochs: int = Field(default=2, ge=1)
    batch_size: int = Field(default=16, ge=1)  # groups per optimizer step, all workers
    grad_accumulation: int = Field(default=1, ge=1)
    lr: float = Field(default=6e-5, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    warmup_ratio: float = Field(default=0.1, ge=0, le=1)
    max_grad_norm: float | None = Field(default=1.0, gt=0)
    seed: int = 42
    bf16: bool = True  # autocast to bfloat16 on GPU workers
    # Autocast CPU workers too. auto: only where the CPU multiplies bf16 natively (AVX-512 BF16,
    # AMX): MiniLM's forward+backward ran 2.1x faster than fp32 on an AVX-512-BF16 EPYC, while
    # emulated bf16 is several times slower (docs/benchmarks.md "CPU dtype"). Off by default so
    # that a CPU run's numbers do not depend on which CPU ran it; the demo turns it on (auto).
    cpu_bf16: bool | Literal["auto"] = False
    limit: int | None = Field(default=None, ge=1)  # train on the first N rows only
    num_workers: int = Field(default=1, ge=0)  # 0: Ray Train local mode, in this process
    use_gpu: bool = False
    cpus_per_worker: int = Field(default=1, ge=1)
    checkpoint_every: int = Field(default=500, ge=1)  # optimizer steps
    keep_checkpoints: int = Field(default=1, ge=1)  # plus the best by validation, if another
    max_steps: int | None = Field(default=None, ge=1)  # stop (and checkpoint) early; resumable
    max_failures: int = Field(default=3, ge=-1)  # worker-group restarts from the last checkpoint
    log_every: int | None = Field(default=None, ge=1)  # None: every step below 100 steps, see
    # log_interval
    validation: ValidationOptions | None = None  # held-out questions scored during training
    eval_every: int | None = Field(default=None, ge=1)  # None with validation: see eval_interval
    run_name: str = "train"
    storage_path: str | None = None  # Ray Train storage; None: <output>/ray; s3://… on clusters
    gumbel: GumbelOptions | None = None  # objective gumbel only; defaults filled in for it
    rrpo: RRPOOptions | None = None  # objective rrpo only; defaults filled in for it

    @model_validator(mode="before")
    @classmethod
    def _lm_defaults(cls, data):
        # objective gumbel / rrpo without its block runs with the paper's settings; filled in
        # before validation so that train_config.yaml records them.
        if isinstance(data, dict):
            objective = data.get("objective")
            if objective in LM_OBJECTIVES and data.get(objective) is None:
                data = {**data, objective: {}}
            # Local mode has no Ray for reward actors: its reader is in the process by default.
            block = data.get("rrpo")
            if (isinstance(block, dict) and "reward_actors" not in block
                    and data.get("num_workers") == 0):
                data = {**data, "rrpo": {**block, "reward_actors": 0}}
        return data

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.objective not in OBJECTIVE_NAMES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVE_NAMES)}, "
                             f"got {self.objective!r}")
        for name in LM_OBJECTIVES:
            if getattr(self, name) is not None and self.objective != name:
                raise ValueError(f"the {name} block applies to objective {name!r} only")
        if self.objective == "gumbel" and self.temperature is not None:
            raise ValueError("objective 'gumbel' takes no score temperature: the mask's "
                             "sharpness is gumbel.kappa / gumbel.tau")
        if self.anchor and self.objective not in SCORE_OBJECTIVES:
            raise ValueError(f"anchor applies to the score objectives ({', '.join(SCORE_OBJECTIVES)}"
                             f"); objective {self.objective!r} has its own reference")
        if self.anchor_mix == "geometric" and self.objective != "kl":
            raise ValueError("anchor_mix 'geometric' mixes a target distribution with the "
                             f"base's: objective 'kl' only, got {self.objective!r}")
        if self.anchor_mix == "geometric" and self.anchor_weight == 0:
            raise ValueError("anchor_mix 'geometric' needs an anchor: set anchor above 0 (the "
                             f"{self.kind}-encoder {self.objective} default is 0)")
        if self.in_batch_negatives and (self.objective != "infonce" or self.kind != "bi"):
            raise ValueError("in_batch_negatives needs objective 'infonce' and kind 'bi' (a "
                             "cross-encoder would score batch_size times more pairs)")
        if self.similarity is not None and self.kind != "bi":
            raise ValueError("similarity applies to kind 'bi' only")
        if self.eval_every is not None and self.validation is None:
            raise ValueError("eval_every needs a validation block (validation.data or "
                             "validation.fraction) to evaluate on")
        if self.rrpo is not None and self.rrpo.reward_actors and self.num_workers == 0:
            raise ValueError("rrpo.reward_actors needs Ray workers; local mode (num_workers 0) "
                             "reads rewards in the process: set rrpo.reward_actors: 0")
        if self.rrpo is not None and self.grad_accumulation % self.rrpo.minibatches:
            raise ValueError(f"rrpo.minibatches ({self.rrpo.minibatches}) must divide "
                             f"grad_accumulation ({self.grad_accumulation}): a mini-batch is "
                             "whole micro-batches")
        per_step = max(self.num_workers, 1) * self.grad_accumulation
        if self.batch_size % per_step:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of num_workers x "
                             f"grad_accumulation ({per_step})")
        return self

    @property
    def anchor_weight(self) -> float:
        """The anchor in effect: the given one, else :data:`DEFAULT_ANCHOR`'s for this kind
        and objective (0 where it names none)."""
        return self.anchor if self.anchor is not None else DEFAULT_ANCHOR.get(
            (self.kind, self.objective), 0.0)

    @property
    def anchor_mode(self) -> str:
        """How the anchor mixes the base in: the given ``anchor_mix``, else
        :data:`DEFAULT_ANCHOR_MIX`'s for this kind and objective (arithmetic where it names
        none)."""
        return self.anchor_mix or DEFAULT_ANCHOR_MIX.get((self.kind, self.objective),
                                                         "arithmetic")

    @property
    def base_merge_weight(self) -> float:
        """The merge in effect: the given ``base_merge``, else :data:`DEFAULT_BASE_MERGE`'s for
        this kind and objective (0 where it names none)."""
        return self.base_merge if self.base_merge is not None else DEFAULT_BASE_MERGE.get(
            (self.kind, self.objective), 0.0)

    @property
    def score_temperature(self) -> float:
        return self.temperature if self.temperature is not None else DEFAULT_TEMPERATURE[self.kind]

    @property
    def lm_options(self) -> GumbelOptions | RRPOOptions | None:
        """The block of an objective that runs a generator (``gumbel`` / ``rrpo``)."""
        return getattr(self, self.objective) if self.objective in LM_OBJECTIVES else None

    @property
    def micro_batch(self) -> int:
        """Groups per worker per forward/backward pass."""
        return self.batch_size // (max(self.num_workers, 1) * self.grad_accumulation)

    def log_interval(self, total_steps: int) -> int:
        """Steps between metric lines: ``log_every``, or by default about 100 points per loss
        curve and at least one every 10 steps (so a run of < 100 steps logs every step)."""
        return self.log_every or min(10, math.ceil(total_steps / 100))

    def eval_interval(self, total_steps: int) -> int:
        """Steps between validations: ``eval_every``, or by default about 10 per run."""
        return self.eval_every or max(1, math.ceil(total_steps / 10))

    @property
    def storage(self) -> str:
        """Ray Train's ``storage_path``: the one given, else ``OUTPUT/ray`` (a storage URI
        stays a URI: Ray Train writes checkpoints through pyarrow.fs too)."""
        if self.storage_path:
            return self.storage_path
        return storage.join(self.output, "ray") if storage.is_remote(self.output) \
            else str(Path(self.output).resolve() / "ray")
