"""The batch relabelling job: LLM signals for every candidate, on Ray Data actor pools.

Data flow (one Ray Dataset, streaming)::

    unfinished shard descriptors ──LabelWorker (actor pool; reads its shard)──▶ labelled rows
        ──driver: reassemble per shard──▶ part-<shard>.parquet + _shards/<shard>.json

* Each :class:`LabelWorker` actor loads its models once in ``__init__`` (generator, document
  engine, sentence encoder — only those the chosen signals need), takes one shard per call
  and labels it ``batch_size`` rows at a time: it gathers every signal's requests for the
  batch, runs them deduplicated and batched (:mod:`raglign.signals.execute`), then lets each
  signal turn results into values.
* Output is committed per input shard by :class:`raglign.pipeline.shards.ShardStore`, so a
  killed job resumes where it stopped and ends with exactly the rows of an uninterrupted run.
* Rows without candidates or answers are not labelled: they go to ``_rejects.jsonl`` with the
  reason, and the summary counts them.

Signals express their LLM work as backend-neutral requests (:mod:`raglign.signals.base`), so
``backend: vllm`` and ``backend: http`` run the same signals through ``ray.data.llm`` processors
(:mod:`raglign.pipeline.label_llm`), except those that read the model's internals.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
from pydantic import Field, PositiveInt, field_validator, model_validator

from raglign.config import JobConfig, StrictModel
from raglign.errors import ConfigError
from raglign.gumbel.options import SamplingWeightOptions
from raglign.models.http_backend import HttpConfig
from raglign.models.vllm_backend import VLLMConfig
from raglign.pipeline.shards import (COUNTS_COL, REJECT_COL, Shard, ShardCollector, ShardStore,
                                     choose_shard_rows, count_rows, plan_shards, read_shard)
from raglign.signals import SIGNALS
from raglign.signals.base import Item, Models, Signal, pick_answer


# ------------------------------------------------------------------------------------- config
class RationaleOptions(StrictModel):
    """RADIO's rationale generation and scoring (reference-code defaults)."""

    temperature: float = Field(0.2, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int = 42
    max_new_tokens: PositiveInt = 1000
    similarity: Literal["cosine", "reference"] = "cosine"
    alpha: float = Field(0.5, ge=0.0, le=1.0)


class LooOptions(StrictModel):
    """LOOP: leave-one-out over the top ``k`` candidates (the generator's k2 = 5)."""

    k: PositiveInt = 5


class JudgeOptions(StrictModel):
    """ARL2 relevance judgement: greedy, a few tokens."""

    max_new_tokens: PositiveInt = 16


class AnswerQualityOptions(StrictModel):
    """RRR: the single-document answer's quality (also the generation ``dpa`` reuses)."""

    metric: Literal["f1", "em", "subem"] = "f1"
    max_new_tokens: PositiveInt = 32


class DpaOptions(StrictModel):
    """DPA-RAG: α·correct + (1-α)·(1 - rank/n)."""

    alpha: float = Field(0.5, ge=0.0, le=1.0)
    correct: Literal["subem", "em"] = "subem"


class LabelVLLMOptions(VLLMConfig):
    """``vllm:`` — :class:`~raglign.models.vllm_backend.VLLMConfig`; ``model`` defaults to the
    job's ``generator``."""

    model: str | None = None


class LabelHttpOptions(HttpConfig):
    """``http:`` — :class:`~raglign.models.http_backend.HttpConfig`; ``model`` (the name sent
    to the server) and ``tokenizer`` (renders prompts locally) default to the job's
    ``generator``."""

    model: str | None = None


# Fields of the backend blocks that change speed or transport, never the labels.
BACKEND_RUNTIME_FIELDS = {
    "vllm": {"batch_size", "concurrency", "accelerator_type"},
    "http": {"api_key_env", "headers", "qps", "concurrency", "batch_size", "max_retries"},
}

# Why a signal cannot run on a ray.data.llm backend (checked under the config below).
ENGINE_ONLY = {
    "attention": "reads the answer tokens' attention weights",
    "gumbel_weight": "learns document weights through differentiable masked attention",
    "answer_logprob": "scores in context: parallel with masked attention over a shared prefill "
                      "(set context: concat to score ordinary prompts through the backend)",
    "loo_logprob": "scores in context: parallel with masked attention over a shared prefill "
                   "(set context: concat to score ordinary prompts through the backend)",
}


class SignalEvalOptions(StrictModel):
    """The signal-evaluation table written after labelling (rows with gold documents only)."""

    enabled: bool = True
    ks: list[PositiveInt] = [1, 2, 5, 10]


# Fields that change how fast a job runs, never what it writes: left out of the manifest hash.
RUNTIME_FIELDS = ("ray", "input", "output", "actors", "batch_size", "cpus_per_actor",
                  "gpus_per_actor", "torch_threads", "eval")


class LabelConfig(JobConfig):
    """``raglign label``: which signals, which models, where, and how wide to run."""

    job: Literal["label"] = "label"
    input: str
    output: str
    signals: list[str] = Field(min_length=1)
    generator: str
    encoder: str = "minilm-l6"
    backend: Literal["transformers", "vllm", "http"] = "transformers"
    vllm: LabelVLLMOptions = LabelVLLMOptions()
    http: LabelHttpOptions | None = None
    context: Literal["parallel", "concat"] = "parallel"
    dtype: str = "auto"
    device: str = "auto"
    answer_alias: Literal["best", "first"] = "best"
    rationale: RationaleOptions = RationaleOptions()
    loo: LooOptions = LooOptions()
    judge: JudgeOptions = JudgeOptions()
    answer_quality: AnswerQualityOptions = AnswerQualityOptions()
    dpa: DpaOptions = DpaOptions()
    gumbel: SamplingWeightOptions = SamplingWeightOptions()
    eval: SignalEvalOptions = SignalEvalOptions()
    limit: PositiveInt | None = None
    # Rows per output partition (the unit of resumption); None: two shards per actor, at most
    # 256, or the size an existing output was planned with (raglign.pipeline.shards).
    shard_rows: PositiveInt | None = None
    actors: PositiveInt = 1
    batch_size: PositiveInt = 8
    cpus_per_actor: float = Field(1.0, gt=0)
    gpus_per_actor: float = Field(0.0, ge=0)
    torch_threads: PositiveInt | None = None

    @field_validator("signals")
    @classmethod
    def _known_signals(cls, v: list[str]) -> list[str]:
        unknown = [s for s in v if s not in SIGNALS]
        if unknown:
            raise ValueError(f"unknown signal(s) {unknown}; known: {', '.join(SIGNALS)}")
        if len(set(v)) != len(v):
            raise ValueError(f"signals listed twice: {v}")
        return v

    @model_validator(mode="after")
    def _signals_fit_backend(self):
        if self.backend != "transformers":
            if self.backend == "http" and self.http is None:
                raise ValueError("backend 'http' needs an http: block with at least base_url "
                                 "(an OpenAI-compatible server ending in /v1)")
            for name in self.signals:
                if "engine" in SIGNALS[name].needs(self):
                    why = ENGINE_ONLY.get(name, "needs the parallel-prefill engine")
                    raise ValueError(
                        f"signal {name!r} cannot run on backend {self.backend!r}: it {why}, and "
                        "vLLM and OpenAI-compatible servers expose neither attention internals "
                        "nor masked attention; use backend: transformers for it")
        for name in self.signals:
            SIGNALS[name].check(self)
        return self

    def fingerprint(self) -> dict[str, Any]:
        """Everything that determines the labels (for the output manifest)."""
        exclude: dict[str, Any] = {f: True for f in RUNTIME_FIELDS}
        for block, runtime in BACKEND_RUNTIME_FIELDS.items():
            exclude[block] = runtime if block == self.backend else True
        return self.model_dump(mode="json", exclude=exclude)


def load_label_config(path: str | None = None, overrides: Mapping[str, Any] | None = None,
                      **fields: Any) -> LabelConfig:
    """A validated :class:`LabelConfig` from a YAML recipe (plus dotted overrides) or fields."""
    from raglign.config import load_job, validate

    if path is not None:
        cfg = load_job(path, dict(overrides or {}))
        if not isinstance(cfg, LabelConfig):
            raise ConfigError(f"{path}: job {cfg.job!r} is not a label job")
        return cfg
    return validate(LabelConfig, {"job": "label", **fields}, "command line")


# ------------------------------------------------------------------------------------- labelling
def gold_answers(row: Mapping[str, Any]) -> list[str]:
    """The row's non-empty gold answer strings."""
    return [a for a in (row.get("answers") or []) if isinstance(a, str) and a.strip()]


def prepare_item(row: Mapping[str, Any], policy: str) -> Item | str:
    """An :class:`Item`, or the reason the row cannot be labelled."""
    cands = row.get("candidates") or []
    if not cands:
        return "no candidates"
    answers = gold_answers(row)
    if not answers:
        return "no answers"
    docs = [(c.get("title") or None, c.get("text") or "") for c in cands]
    return Item(dict(row), pick_answer(answers, cands, policy), docs)


def model_needs(signals: list[Signal], cfg: LabelConfig) -> set[str]:
    return set().union(*(s.needs(cfg) for s in signals))


def load_models(cfg: LabelConfig, needs: set[str]) -> Models:
    """The models ``needs`` asks for; the engine shares the generator's weights."""
    models = Models()
    if needs & {"generator", "engine"}:
        from raglign.models.generator import TransformersGenerator

        gen = TransformersGenerator.from_name(cfg.generator, dtype=cfg.dtype, device=cfg.device)
        models.generator, models.tokenizer = gen, gen.tokenizer
        if "engine" in needs:
            from raglign.engine import DocumentEngine

            models.engine = DocumentEngine(gen.model, gen.tokenizer)
    if "encoder" in needs:
        from raglign.models.encoders import load_encoder

        models.encoder = load_encoder(cfg.encoder, device=None if cfg.device == "auto" else cfg.device)
    return models


def label_rows(rows: list[dict], signals: list[Signal], models: Models, cfg: LabelConfig,
               run: Callable | None = None) -> list[dict]:
    """Label a batch of canonical rows; each output row carries ``_reject`` (a reason or None)
    and ``_counts`` (JSON counters such as unparseable judge outputs).

    ``run(requests) -> {request: result}`` executes the generator requests; by default the
    in-process generator of ``models`` (see :func:`raglign.signals.execute.run_requests`).
    """
    items = [prepare_item(r, cfg.answer_alias) for r in rows]
    requests = [q for it in items if isinstance(it, Item) for s in signals for q in s.requests(it, cfg)]
    if run is None:
        from raglign.signals.execute import run_requests

        def run(reqs):
            return run_requests(reqs, models.generator)
    results = run(requests) if requests else {}
    out = []
    for row, it in zip(rows, items):
        if isinstance(it, str):
            out.append({**row, REJECT_COL: it, COUNTS_COL: None})
            continue
        cands = [dict(c) for c in row["candidates"]]
        extra: dict[str, Any] = {}
        counts: dict[str, int] = {}
        for s in signals:
            labels = s.compute(it, results, models, cfg)
            for c, v in zip(cands, labels.values, strict=True):
                c[s.name] = v
            extra.update(labels.columns)
            for k, v in labels.counts.items():
                counts[k] = counts.get(k, 0) + v
        models.release()
        out.append({**row, "candidates": cands, **extra, REJECT_COL: None,
                    COUNTS_COL: json.dumps(counts, sort_keys=True)})
    return out


def output_schema(schema: pa.Schema, signals: list[Signal]) -> pa.Schema:
    """``schema`` with one float64 candidate field per signal, the signals' top-level columns
    and the helper columns. Fixed up front (not inferred per batch) so that every block of a
    job has one schema, even when a batch's values are all null."""
    idx = schema.get_field_index("candidates")
    struct = schema.field(idx).type.value_type
    fields = [f for f in struct if f.name not in {s.name for s in signals}]
    fields += [pa.field(s.name, pa.float64()) for s in signals]
    schema = schema.set(idx, pa.field("candidates", pa.list_(pa.struct(fields))))
    for s in signals:
        for name, typ in s.columns.items():
            if name in schema.names:
                schema = schema.remove(schema.get_field_index(name))
            schema = schema.append(pa.field(name, typ))
    for name, typ in ((REJECT_COL, pa.string()), (COUNTS_COL, pa.string())):
        if name not in schema.names:
            schema = schema.append(pa.field(name, typ))
    return schema


def set_torch_threads(cfg: LabelConfig) -> int:
    """Threads for this worker: ``torch_threads``, else its CPU share (at least 1), so N actors
    on N cores do not each start one thread per core and thrash."""
    import torch

    n = cfg.torch_threads or max(1, int(cfg.cpus_per_actor))
    torch.set_num_threads(n)
    return n


class ShardWorker(ABC):
    """Base of the Ray Data label actors: each call gets shard *descriptors*, reads each shard
    inside the actor and labels it in slices of ``batch_size`` rows (:meth:`label`).

    Why not a read task followed by an actor map: Ray Data fuses the cheap read map into the
    actor map after it, and the fused operator bundles its inputs -- the one-row descriptors --
    up to the actor's batch size, so with 4 shards and ``batch_size: 8`` every shard went to
    one actor and the pool shrank to 1. Mapped with ``batch_size=1`` (:func:`map_shards`),
    each call is one shard and shards spread over the pool.
    """

    cfg: LabelConfig

    @abstractmethod
    def label(self, batch: pa.Table) -> pa.Table:
        """Labelled rows of ``batch`` (at most ``batch_size`` rows of one shard)."""

    def __call__(self, descriptors: pa.Table) -> pa.Table:
        out = []
        for d in descriptors.to_pylist():
            shard, started = Shard(**d), time.monotonic()
            table, step = read_shard(shard), self.cfg.batch_size
            for i in range(0, table.num_rows, step):
                out.append(self.label(table.slice(i, step)))
                if table.num_rows > step:  # progress inside a shard (Ray forwards actor stdout)
                    print(f"[label] {shard.name}: {min(i + step, table.num_rows)}/"
                          f"{table.num_rows} rows ({time.monotonic() - started:.0f}s)", flush=True)
        return pa.concat_tables(out, promote_options="permissive")


def map_shards(cfg: LabelConfig, todo: list[Shard], worker: type[ShardWorker],
               **constructor_kwargs):
    """A streaming Dataset of labelled rows: one shard per call of a ``worker`` actor pool."""
    import ray

    from raglign.ray_session import actor_pool_map

    ds = ray.data.from_items([asdict(s) for s in todo], override_num_blocks=len(todo))
    gpus = {"num_gpus": cfg.gpus_per_actor} if cfg.gpus_per_actor else {}
    return actor_pool_map(
        ds, worker, cfg.actors,
        fn_constructor_kwargs={"config": cfg.model_dump(mode="json"), **constructor_kwargs},
        batch_size=1, batch_format="pyarrow", num_cpus=cfg.cpus_per_actor, **gpus)


class LabelWorker(ShardWorker):
    """Ray Data actor: loads the models once, labels whole shards."""

    def __init__(self, config: dict):
        self.cfg = LabelConfig.model_validate(config)
        set_torch_threads(self.cfg)
        self.signals = [SIGNALS[n] for n in self.cfg.signals]
        self.models = load_models(self.cfg, model_needs(self.signals, self.cfg))

    def label(self, batch: pa.Table) -> pa.Table:
        schema = output_schema(batch.schema, self.signals)
        rows = label_rows(batch.to_pylist(), self.signals, self.models, self.cfg)
        return pa.Table.from_pylist(rows, schema=schema)


# ------------------------------------------------------------------------------------- the job
def run_label(cfg: LabelConfig, progress: Callable[[str], None] = print) -> dict:
    """Run (or resume) a labelling job; returns the summary also written to ``_summary.json``.

    Starts a private local Ray unless one is running or ``cfg.ray.address`` names a cluster.
    ``progress`` gets the job's first and last lines; rows show on a progress bar.
    """
    from raglign.console import progress_bar
    from raglign.ray_session import ray_session

    store = ShardStore(cfg.output, "label")
    shard_rows = choose_shard_rows(store, cfg.shard_rows, count_rows(cfg.input, cfg.limit),
                                   cfg.actors)
    shards = plan_shards(cfg.input, shard_rows, cfg.limit)
    store.open({**cfg.fingerprint(), "shard_rows": shard_rows,
                "inputs": [[Path(s.path).name, s.start, s.stop] for s in shards]})
    todo = [s for s in shards if not store.done(s)]
    total = sum(s.rows for s in shards)
    progress(f"[label] {len(shards)} shards of up to {shard_rows} rows, {total} rows; "
             f"{len(shards) - len(todo)} shards already finished; signals: "
             f"{', '.join(cfg.signals)}")
    started = time.monotonic()
    if todo:
        with ray_session(cfg.ray, log_dir=cfg.output), \
                progress_bar(sum(s.rows for s in todo), "[label] rows") as bar:
            collector = ShardCollector(store, todo, bar.update)
            if cfg.backend == "transformers":
                _label_shards_ray(cfg, todo, collector)
            else:
                from raglign.pipeline.label_llm import label_shards_llm

                label_shards_llm(cfg, todo, collector, progress)
        if not collector.finished():
            raise RuntimeError(f"labelling ended with unfinished shards: {sorted(collector.pending)}")
    elapsed = time.monotonic() - started
    done_rows = sum(s.rows for s in todo)
    summary = store.finish(shards, {
        "signals": cfg.signals, "generator": cfg.generator, "context": cfg.context,
        "backend": cfg.backend, "rows_this_run": done_rows, "seconds_this_run": round(elapsed, 3),
        "rows_per_second_this_run": round(done_rows / elapsed, 4) if done_rows and elapsed else None,
    })
    if cfg.eval.enabled:
        from raglign.evaluate.signals import write_signal_eval

        summary["signal_eval"] = write_signal_eval(cfg.output, cfg.signals, cfg.eval.ks)
    unparse = summary["counts"].get("judge_unparseable")
    extra = f", {unparse} unparseable judge outputs" if unparse is not None else ""
    progress(f"[label] done: {summary['rows_out']} rows labelled, {summary['rows_rejected']} "
             f"rejected{extra} ({summary['shards_finished']}/{summary['shards']} shards) "
             f"-> {cfg.output}")
    return summary


def _label_shards_ray(cfg: LabelConfig, todo: list[Shard], collector: ShardCollector) -> None:
    for block in map_shards(cfg, todo, LabelWorker).iter_batches(batch_format="pyarrow",
                                                                 batch_size=None):
        collector.add(block)


def label_in_process(cfg: LabelConfig, rows: list[dict], models: Models | None = None) -> list[dict]:
    """Label ``rows`` in this process without Ray (the plain loop the benchmark compares Ray
    Data against, and a convenience for notebooks); rejected rows are dropped."""
    signals = [SIGNALS[n] for n in cfg.signals]
    models = models or load_models(cfg, model_needs(signals, cfg))
    out = []
    for start in range(0, len(rows), cfg.batch_size):
        out += label_rows(rows[start:start + cfg.batch_size], signals, models, cfg)
    return [{k: v for k, v in r.items() if k not in (REJECT_COL, COUNTS_COL)}
            for r in out if r[REJECT_COL] is None]

