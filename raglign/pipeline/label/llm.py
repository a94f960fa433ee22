"""The ``ray.data.llm`` path of ``raglign label`` (``backend: vllm`` and ``backend: http``).

Two phases, so that a GPU engine and the finishing actors never compete for one device and an
interrupted job loses at most the shards in flight::

    A  unfinished shards ──read + expand (tasks)──▶ request rows (one per unique Score/Generate
       of the shard) ──ray.data.llm processor──▶ (shard, request key, result)
       ──driver: gather per shard──▶ OUTPUT/_llm/<shard>.json   (once all its requests are in)
    B  unfinished shards ──read (tasks)──▶ rows ──FinishWorker (actor pool)──▶ labelled rows
       ──driver: ShardCollector──▶ part-<shard>.parquet + _shards/<shard>.json

* Expansion reuses the signals' own :meth:`~raglign.signals.base.Signal.requests`; requests are
  deduplicated per shard by a digest of the request (``answer_quality`` and ``dpa`` share one
  generation per document, as on the transformers path): :mod:`.request_rows`.
* The processors (one for every request kind on vLLM; scoring and generation apart on HTTP)
  are built in :mod:`.processors`.
* Phase B is :func:`raglign.pipeline.label.rows.label_rows` with the gathered results in place
  of an in-process generator: each signal finishes exactly as on the transformers path
  (rationale similarity runs there on the encoder, the only model these workers load).
* The per-shard result files make phase A resumable (a shard with results is not sent again);
  they are removed once the shard is committed. Output, manifest, rejects and summary are those
  of the transformers path (:mod:`raglign.pipeline.shards`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Any

import pyarrow as pa

from raglign import storage
from raglign.errors import RaglignError
from raglign.models import vllm_backend as vb
from raglign.pipeline.label.config import LabelConfig
from raglign.pipeline.label.processors import LOGPROB, TEXT, http_specs, vllm_spec
from raglign.pipeline.label.request_rows import (KEY, KIND, REQUEST_SCHEMA, TOTAL, expand,
                                                 request_key, request_kinds)
from raglign.pipeline.label.rows import label_rows, load_models, model_needs, output_schema
from raglign.pipeline.label.workers import ShardWorker, map_shards, set_torch_threads
from raglign.pipeline.shards import SHARD_COL, Shard, ShardCollector, read_shard
from raglign.signals import SIGNALS


# ---------------------------------------------------------------------------- phase A
def _expand_shards(batch: pa.Table, config: dict) -> pa.Table:
    cfg = LabelConfig.model_validate(config)
    signals = [SIGNALS[n] for n in cfg.signals]
    out = []
    for d in batch.to_pylist():
        shard = Shard(**d)
        out += expand(read_shard(shard).to_pylist(), shard.name, signals, cfg)
    return pa.Table.from_pylist(out, schema=REQUEST_SCHEMA)


def llm_stage(cfg: LabelConfig) -> Callable:
    """``dataset of request rows -> dataset of results`` through ray.data.llm processors."""
    signals = [SIGNALS[n] for n in cfg.signals]
    kinds = request_kinds(signals, cfg)
    if cfg.generator.backend == "vllm":
        vb.require_vllm()
        return vllm_spec(cfg.generator.vllm_config()).build()
    specs = http_specs(cfg.generator.http_config())
    wanted = ({"score"} & kinds) | ({"generate"} if kinds - {"score"} else set())
    procs = {k: specs[k].build() for k in sorted(wanted)}
    if len(procs) == 1:
        return next(iter(procs.values()))

    def both(ds):
        score = procs["score"](ds.filter(lambda r: r[KIND] == "score"))
        return score.union(procs["generate"](ds.filter(lambda r: r[KIND] != "score")))
    return both


# ---------------------------------------------------------------------------- results
class ResultStore:
    """Per-shard request results between the two phases: ``OUTPUT/_llm/<shard>.json`` (a path
    or URI; each file written whole, :func:`raglign.storage.write_json`)."""

    def __init__(self, out_dir: str):
        self.root = storage.join(out_dir, "_llm")

    def path(self, name: str) -> str:
        return storage.join(self.root, f"{name}.json")

    def has(self, shard: Shard) -> bool:
        return storage.is_file(self.path(shard.name))

    def write(self, name: str, results: Mapping[str, Any]) -> None:
        storage.write_json(self.path(name), {"shard": name, "results": dict(results)})

    def read(self, name: str) -> dict[str, Any]:
        return storage.read_json(self.path(name))["results"]

    def drop(self, shard: Shard) -> None:
        storage.delete(self.path(shard.name))


def gather(results, shards: list[Shard], store: ResultStore,
           progress: Callable[[str], None] = print) -> None:
    """Group result rows by shard and store each shard once all its requests are in (the
    expected count travels with every request row); shards that asked for nothing are stored
    empty at the end."""
    pending: dict[str, dict[str, Any]] = {s.name: {} for s in shards}
    for r in results.iter_rows():
        name = r[SHARD_COL]
        got = pending[name]
        got[r[KEY]] = r[TEXT] if r[LOGPROB] is None else r[LOGPROB]
        if len(got) == r[TOTAL]:
            store.write(name, pending.pop(name))
            progress(f"[label] {name}: {len(got)} LLM requests done")
    for name, got in pending.items():
        if got:
            raise RaglignError(f"shard {name}: only {len(got)} of its LLM requests came back")
        store.write(name, {})


class FinishWorker(ShardWorker):
    """Ray Data actor: turns a shard's gathered results into labels with the signals' own
    finishing code; loads only the encoder (rationale similarity), never the generator."""

    def __init__(self, config: dict, results_dir: str):
        self.cfg = LabelConfig.model_validate(config)
        set_torch_threads(self.cfg)
        self.signals = [SIGNALS[n] for n in self.cfg.signals]
        self.models = load_models(self.cfg, model_needs(self.signals, self.cfg) - {"generator"})
        self.store = ResultStore(results_dir)
        self.cache: dict[str, dict[str, Any]] = {}

    def _results(self, names: list[str]) -> dict[str, Any]:
        if len(self.cache) > 8:
            self.cache.clear()
        out: dict[str, Any] = {}
        for name in dict.fromkeys(names):
            if name not in self.cache:
                self.cache[name] = self.store.read(name)
            out.update(self.cache[name])
        return out

    def label(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        results = self._results([r[SHARD_COL] for r in rows])

        def run(requests):
            try:
                return {q: results[request_key(q)] for q in requests}
            except KeyError:
                raise RaglignError(f"{self.store.root}: results of shard(s) "
                                   f"{sorted({r[SHARD_COL] for r in rows})} lack a request; "
                                   "remove that directory and run again") from None

        out = label_rows(rows, self.signals, self.models, self.cfg, run=run)
        return pa.Table.from_pylist(out, schema=output_schema(batch.schema, self.signals))


# ---------------------------------------------------------------------------- the job
def label_shards_llm(cfg: LabelConfig, todo: list[Shard], collector: ShardCollector,
                     progress: Callable[[str], None] = print) -> None:
    """Label ``todo`` through the ray.data.llm backend of ``cfg`` (inside a Ray session)."""
    import ray

    store = ResultStore(cfg.output)
    config = cfg.model_dump(mode="json")
    ask = [s for s in todo if not store.has(s)]
    if ask:
        progress(f"[label] {len(ask)} shards to send to the {cfg.generator.backend} backend")
        ds = ray.data.from_items([asdict(s) for s in ask], override_num_blocks=len(ask))
        ds = ds.map_batches(_expand_shards, fn_kwargs={"config": config}, batch_size=1,
                            batch_format="pyarrow")
        gather(llm_stage(cfg)(ds), ask, store, progress)
    ds = map_shards(cfg, todo, FinishWorker, results_dir=cfg.output)
    for block in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        collector.add(block)
    for s in todo:
        if s.name not in collector.pending:
            store.drop(s)
