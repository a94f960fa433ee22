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
  generation per document, as on the transformers path).
* One processor serves every request kind on vLLM (per-row ``sampling_params``), so the engine
  is loaded once per job. HTTP needs ``/v1/completions`` for scoring, so with the ``chat``
  endpoint scoring and generation go through two processors over the two halves of the requests.
* Phase B is :func:`raglign.pipeline.label.label_rows` with the gathered results in place of an
  in-process generator: each signal finishes exactly as on the transformers path (rationale
  similarity runs there on the encoder, the only model these workers load).
* The per-shard result files make phase A resumable (a shard with results is not sent again);
  they are removed once the shard is committed. Output, manifest, rejects and summary are those
  of the transformers path (:mod:`raglign.pipeline.shards`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pyarrow as pa

from raglign.errors import RaglignError
from raglign.models import http_backend as hb
from raglign.models import vllm_backend as vb
from raglign.models.generator import GenerationParams
from raglign.models.registry import resolve_model
from raglign.models.vllm_backend import ProcessorSpec
from raglign.pipeline.label import (
    LabelConfig,
    ShardWorker,
    label_rows,
    load_models,
    map_shards,
    model_needs,
    output_schema,
    prepare_item,
    set_torch_threads,
)
from raglign.pipeline.shards import (
    SHARD_COL,
    Shard,
    ShardCollector,
    _write_json_atomic,
    read_shard,
)
from raglign.prompts import encode_prompt, format_document
from raglign.signals import SIGNALS
from raglign.signals.base import Generate, Item, Request, Score, Signal
from raglign.signals.judge import JUDGE_PROMPT, judge_prompt

# Request-row columns (besides question, candidates, answer, choices, id).
KIND, KEY, TOTAL = "_raglign_kind", "_raglign_key", "_raglign_total"
MAX_NEW, TEMPERATURE, TOP_P, SEED = ("_raglign_max_new_tokens", "_raglign_temperature",
                                     "_raglign_top_p", "_raglign_seed")
# Result columns written by the processor's postprocess.
LOGPROB, TEXT = "_raglign_logprob", "_raglign_text"
SAMPLING_KEYS = ("max_tokens", "temperature", "top_p", "seed", "stop")
# Every row states every sampling key: Ray Data stores ``sampling_params`` as one Arrow struct
# per block, filling keys a row lacks with None, and vLLM's ``SamplingParams(**params)`` rejects
# None for ``top_p`` or ``detokenize``. Unused keys therefore carry vLLM's own defaults.
VLLM_SAMPLING_DEFAULTS = {"max_tokens": 16, "temperature": 1.0, "top_p": 1.0, "seed": None,
                          "prompt_logprobs": None, "detokenize": True}

REQUEST_SCHEMA = pa.schema([
    ("id", pa.string()), ("question", pa.string()),
    ("candidates", pa.list_(pa.struct([("title", pa.string()), ("text", pa.string())]))),
    ("answer", pa.string()), ("choices", pa.list_(pa.string())),
    (SHARD_COL, pa.string()), (KEY, pa.string()), (TOTAL, pa.int64()), (KIND, pa.string()),
    (MAX_NEW, pa.int64()), (TEMPERATURE, pa.float64()), (TOP_P, pa.float64()), (SEED, pa.int64()),
])


# ---------------------------------------------------------------------------- backend configs
def vllm_config(cfg: LabelConfig) -> vb.VLLMConfig:
    """The job's ``vllm:`` options as a :class:`~raglign.models.vllm_backend.VLLMConfig`
    (``model`` defaults to the job's ``generator``)."""
    opts = cfg.vllm.model_dump()
    return vb.VLLMConfig(**{**opts, "model": opts["model"] or cfg.generator})


def http_config(cfg: LabelConfig) -> hb.HttpConfig:
    """The job's ``http:`` options as an :class:`~raglign.models.http_backend.HttpConfig`
    (``model`` and ``tokenizer`` default to the job's ``generator``)."""
    opts = cfg.http.model_dump()
    model = opts["model"] or cfg.generator
    return hb.HttpConfig(**{**opts, "model": model, "tokenizer": opts["tokenizer"] or cfg.generator})


# ---------------------------------------------------------------------------- request rows
def request_key(req: Request) -> str:
    """A stable digest of a request: the same prompt and parameters give the same key in the
    expansion task and in the finishing actor (Python's ``hash`` is salted per process)."""
    blob = json.dumps([type(req).__name__, asdict(req)], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def request_row(req: Request, row_id: str, shard: str, key: str, total: int) -> dict[str, Any]:
    """The request as a row for the backends' preprocess functions (their column names:
    question, candidates, answer, choices; ``id`` names the first row that asked for it)."""
    gen = isinstance(req, Generate)
    return {
        "id": row_id, "question": req.question,
        "candidates": [{"title": t, "text": x} for t, x in req.docs],
        "answer": req.answer, "choices": list(req.choices) if req.choices else None,
        SHARD_COL: shard, KEY: key, TOTAL: total, KIND: req.task if gen else "score",
        MAX_NEW: req.max_new_tokens if gen else None,
        TEMPERATURE: req.temperature if gen else None,
        TOP_P: req.top_p if gen else None,
        SEED: req.seed if gen and req.temperature > 0 else None,
    }


def expand(rows: list[dict], shard: str, signals: list[Signal], cfg: LabelConfig) -> list[dict]:
    """One row per unique request of ``rows`` (rows that will be rejected ask for nothing)."""
    unique: dict[str, tuple[Request, str]] = {}
    for row in rows:
        item = prepare_item(row, cfg.answer_alias)
        if isinstance(item, Item):
            for s in signals:
                for req in s.requests(item, cfg):
                    unique.setdefault(request_key(req), (req, row["id"]))
    return [request_row(req, rid, shard, key, len(unique)) for key, (req, rid) in unique.items()]


def _expand_shards(batch: pa.Table, config: dict) -> pa.Table:
    cfg = LabelConfig.model_validate(config)
    signals = [SIGNALS[n] for n in cfg.signals]
    out = []
    for d in batch.to_pylist():
        shard = Shard(**d)
        out += expand(read_shard(shard).to_pylist(), shard.name, signals, cfg)
    return pa.Table.from_pylist(out, schema=REQUEST_SCHEMA)


def generation_params(row: Mapping[str, Any]) -> GenerationParams:
    """The request's own sampling parameters (the per-row seed of sampled tasks included)."""
    seed = row.get(SEED)
    return GenerationParams(max_new_tokens=int(row[MAX_NEW]), temperature=float(row[TEMPERATURE]),
                            top_p=float(row[TOP_P]), seed=None if seed is None else int(seed))


def _judge_doc(row: Mapping[str, Any]) -> tuple[str | None, str]:
    return vb.row_documents(row, "candidates")[0]


# ---------------------------------------------------------------------------- processors
def _routed(specs: Mapping[str, ProcessorSpec],
            set_params: Callable[[dict, GenerationParams | None], dict]) -> ProcessorSpec:
    """One processor over several request kinds: each row goes through the backend's own
    preprocess/postprocess for its kind; ``set_params`` then gives generation rows their own
    sampling parameters (``None`` for scoring rows); the output keeps only what the driver
    gathers."""
    config = next(iter(specs.values())).config

    def preprocess(row: dict) -> dict:
        out = specs[row[KIND]].preprocess(row)
        return set_params(out, None if row[KIND] == "score" else generation_params(row))

    def postprocess(row: dict) -> dict:
        kind = row[KIND]
        out = specs[kind].postprocess(row)
        return {SHARD_COL: row[SHARD_COL], KEY: row[KEY], TOTAL: row[TOTAL],
                LOGPROB: float(out["answer_logprob"]) if kind == "score" else None,
                TEXT: None if kind == "score" else out[TEXT]}

    return ProcessorSpec(config, preprocess, postprocess)


def vllm_spec(cfg: vb.VLLMConfig) -> ProcessorSpec:
    """Every request kind through one vLLM engine; prompts are raglign's own token ids."""
    gen = {t: vb.generation_spec(cfg, t, output_column=TEXT) for t in ("qa", "rationale")}
    source = gen["qa"].config.model_source

    def judge_pre(row: dict) -> dict:
        vb.check_columns(row)
        tok = vb.tokenizer_for(source)
        text = judge_prompt(tok, vb.row_field(row, "question"), vb.row_field(row, "answer"),
                            _judge_doc(row))
        return {"tokenized_prompt": encode_prompt(tok, text)}

    specs = {"score": vb.scoring_spec(cfg), **gen,
             "judge": ProcessorSpec(gen["qa"].config, judge_pre, gen["qa"].postprocess)}
    return _routed(specs, _vllm_params)


def _vllm_params(out: dict, params: GenerationParams | None) -> dict:
    given = out["sampling_params"] if params is None else vb.sampling_params(params)
    return {**out, "sampling_params": {**VLLM_SAMPLING_DEFAULTS, **given}}


def _http_params(out: dict, params: GenerationParams | None) -> dict:
    if params is None:
        return out
    body = {k: v for k, v in out["payload"].items() if k not in SAMPLING_KEYS}
    return {**out, "payload": {**body, **vb.sampling_params(params)}}


def http_specs(cfg: hb.HttpConfig) -> dict[str, ProcessorSpec]:
    """``{"score": …, "generate": …}``: scoring always through ``/v1/completions``, generation
    through ``cfg.endpoint``; the judge prompt is sent like the backend sends rationales (a
    user turn for chat, rendered locally for completions)."""
    gen = {t: hb.generation_spec(cfg, t, output_column=TEXT) for t in ("qa", "rationale")}
    chat = cfg.endpoint == "chat"

    def judge_pre(row: dict) -> dict:
        vb.check_columns(row)
        question, answer = vb.row_field(row, "question"), vb.row_field(row, "answer")
        doc = _judge_doc(row)
        if chat:
            text = JUDGE_PROMPT.format(question=question, answer=answer,
                                       document=format_document(*doc).strip())
            return {"payload": {"model": cfg.model,
                                "messages": [{"role": "user", "content": text}]}}
        tok = vb.tokenizer_for(resolve_model(cfg.tokenizer or cfg.model))
        return {"payload": {"model": cfg.model, "prompt": judge_prompt(tok, question, answer, doc)}}

    judge = ProcessorSpec(gen["qa"].config, judge_pre, gen["qa"].postprocess)
    return {"score": _routed({"score": hb.scoring_spec(cfg)}, _http_params),
            "generate": _routed({**gen, "judge": judge}, _http_params)}


def request_kinds(signals: list[Signal], cfg: LabelConfig) -> set[str]:
    """Which request kinds the job sends ("score" and/or generation tasks), asked of the
    signals on a one-document probe item: a signal's request kinds depend on the config, not
    on the data. Used to start only the processors a job needs (each holds its own actors)."""
    probe = Item({"id": "probe", "question": "q", "answers": ["a"],
                  "candidates": [{"title": None, "text": "d"}]}, "a", [(None, "d")])
    return {"score" if isinstance(r, Score) else r.task
            for s in signals for r in s.requests(probe, cfg)}


def llm_stage(cfg: LabelConfig) -> Callable:
    """``dataset of request rows -> dataset of results`` through ray.data.llm processors."""
    signals = [SIGNALS[n] for n in cfg.signals]
    kinds = request_kinds(signals, cfg)
    if cfg.backend == "vllm":
        vb.require_vllm()
        return vllm_spec(vllm_config(cfg)).build()
    specs = http_specs(http_config(cfg))
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
    """Per-shard request results between the two phases: ``OUTPUT/_llm/<shard>.json``."""

    def __init__(self, out_dir: str | Path):
        self.root = Path(out_dir) / "_llm"

    def path(self, name: str) -> Path:
        return self.root / f"{name}.json"

    def has(self, shard: Shard) -> bool:
        return self.path(shard.name).exists()

    def write(self, name: str, results: Mapping[str, Any]) -> None:
        _write_json_atomic({"shard": name, "results": dict(results)}, self.path(name))

    def read(self, name: str) -> dict[str, Any]:
        return json.loads(self.path(name).read_text())["results"]

    def drop(self, shard: Shard) -> None:
        self.path(shard.name).unlink(missing_ok=True)


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
        progress(f"[label] {len(ask)} shards to send to the {cfg.backend} backend")
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
