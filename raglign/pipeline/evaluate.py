"""``raglign eval``: G-Rerank's reranker and generator settings on any canonical dataset.

Reranker setting: the first ``k1`` candidates of each row (the retriever's order, which is the
base ranking) are re-scored by a reranker — or kept in retrieval order for ``reranker: none``, or
put gold first for ``reranker: oracle`` (the ceiling of any reranker) — and ranked; Recall@k /
NDCG@k / MRR are computed against the rows' gold documents, plus Recall@k on *indirectly
relevant* gold documents (gold documents whose text does not contain any normalised answer;
HotpotQA's bridge evidence). Generator setting: the top ``k`` documents go into
the papers' QA prompt, the generator answers greedily, EM / SubEM / F1 (MMLU: option accuracy)
are computed. The mining setting is the same computation run on *training* questions, with a
signal field (``--rank-by answer_logprob``) or a trained reranker.

Both model stages run on Ray Data, so the same job scales from a laptop to a cluster: the
reranker in an actor pool (each actor loads its model once, ``gpus_per_actor`` each), the
generator on its spec's backend (``generator.backend``: transformers actors, vLLM engines or an
OpenAI-compatible server through ``ray.data.llm``; :mod:`raglign.pipeline.eval_reader`).
Per-row results go to Parquet, the aggregate (bootstrap 95% CIs, per-category breakdown) to
JSON, and a Markdown summary beside it.
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any, Literal

from pydantic import Field, model_validator

from raglign import storage
from raglign.config import JobConfig
from raglign.data.io import read_rows
from raglign.data.schema import row_meta
from raglign.errors import ConfigError, DataError
from raglign.models.generator_spec import GeneratorSpec, moved_keys
from raglign.signals.ranking import rank_candidates

BASE_RERANKER = "none"  # keep the retriever's order
ORACLE_RERANKER = "oracle"  # gold documents first: what a perfect reranker would give the reader


class EvalConfig(JobConfig):
    """One evaluation run. Defaults follow the papers: k1 = 20 candidates, k2 = 5 to the reader."""

    job: Literal["eval"] = "eval"
    data: str
    output: str
    reranker: str = Field(BASE_RERANKER, description="a reranker name or path; 'none' keeps "
                          "the retrieval order, 'oracle' puts the gold documents first")
    reranker_kind: Literal["cross", "bi"] = "cross"
    rank_by: str | None = Field(None, description="rank by a candidate field (mining setting), "
                                "in its signal's declared direction (raglign.signals.ranking)")
    generator: GeneratorSpec | None = Field(None, description="the generator setting's reader "
                                           "(name, backend, dtype, …); none: reranker setting only")
    k: int = Field(5, ge=1, description="documents given to the generator; the @k of the metrics")
    k1: int = Field(20, ge=1, description="retrieved candidates the reranker sees")
    ks: list[int] = [1, 5, 10, 20]
    max_new_tokens: int = Field(32, ge=1)
    limit: int | None = Field(None, ge=1)
    split: str | None = Field(None, description="keep rows whose meta.split equals this")
    category_key: str | None = Field(None, description="meta key for the per-category table; "
                                     "default: 'category' for MMLU, 'type' for HotpotQA")
    actors: int = Field(1, ge=1)
    gpus_per_actor: float = Field(0.0, ge=0, description="GPUs per actor of the reranker and "
                                  "transformers generator pools (a fraction shares a GPU); vLLM "
                                  "engines take theirs from generator.vllm")
    batch_size: int = Field(8, ge=1)
    n_boot: int = Field(1000, ge=100)
    name: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _moved_to_generator(cls, data: Any) -> Any:
        moved_keys(data, ("dtype", "backend", "device", "vllm", "http"))
        return data

    @model_validator(mode="after")
    def _one_ranking(self):
        if self.rank_by and self.reranker != BASE_RERANKER:
            raise ValueError("give either reranker or rank_by, not both")
        return self

    @property
    def run_name(self) -> str:
        if self.name or self.rank_by:
            return self.name or self.rank_by
        return "retrieval" if self.reranker == BASE_RERANKER else storage.name(self.reranker)

    @property
    def reranker_model(self) -> bool:
        """Whether ranking needs a model; the base and oracle orders come from the rows."""
        return self.reranker not in (BASE_RERANKER, ORACLE_RERANKER)


class _RerankActor:
    """Ray Data callable class: scores each item's first k1 candidates with the item's reranker
    (``reranker``, ``kind`` columns), loading each reranker once per actor: one pool serves every
    run of :func:`evaluate_many`."""

    def __init__(self, k1: int):
        self.k1 = k1
        self.models: dict[tuple[str, str], Any] = {}

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from raglign.models.rerankers import load_reranker

        scores = []
        for question, cands, reranker, kind in zip(batch["question"], batch["candidates"],
                                                   batch["reranker"], batch["kind"]):
            key = (str(reranker), str(kind))
            if key not in self.models:
                self.models[key] = load_reranker(key[0], kind=key[1])
            scores.append(rerank_scores(self.models[key], question, cands, self.k1))
        return {"id": list(batch["id"]), "rerank_scores": scores}


def rerank_scores(model, question: str, candidates, k1: int) -> list[float]:
    """The reranker's scores of the first ``k1`` candidates (eval mode, no grad): what the
    reranker setting ranks by, here and in the trainer's validation."""
    from raglign.models.rerankers import doc_text

    docs = [doc_text(c["title"], c["text"]) for c in list(candidates)[:k1]]
    return model.score(str(question), docs) if docs else []


def reranker_setting(model, rows: list[dict], cfg: EvalConfig) -> list[dict[str, Any]]:
    """Per-row reranker-setting metrics of ``rows`` under a ``model`` already in memory.

    The computation :func:`evaluate` runs through its actor pool (scores, ranking, metrics), in
    the calling process: ``raglign train`` validates the model it is training with it, so its
    validation numbers are ``raglign eval``'s by construction.
    """
    out = []
    for row in rows:
        scored = {**row, "rerank_scores": rerank_scores(model, row["question"],
                                                        row["candidates"], cfg.k1)}
        out.append(row_metrics(scored, _ranking(scored, cfg), cfg))
    return out


def _ranking(row: dict, cfg: EvalConfig) -> list[int]:
    """Candidate indices, best first, among the first k1.

    ``rank_by`` ranks as ``raglign signals-eval`` and ``raglign mine`` do
    (:func:`raglign.signals.ranking.rank_candidates`): in the direction the signal declares
    (``loo_logprob`` lowest first) with unlabelled (null) candidates last in retrieval order,
    since LOOP leaves candidates below rank K null and the judge an unparseable output. A field
    no candidate of the row has at all is a typo or an unlabelled row, and an error.
    """
    cands = row["candidates"][: cfg.k1]
    if cfg.rank_by:
        if not any(cfg.rank_by in c for c in cands):
            raise ConfigError(f"row {row['id']}: no field {cfg.rank_by!r} on any candidate to "
                              "rank by")
        try:
            return rank_candidates(cands, cfg.rank_by)
        except TypeError as e:
            raise DataError(cfg.data, row["id"], "candidates", str(e)) from None
    if cfg.reranker == BASE_RERANKER:
        return list(range(len(cands)))
    if cfg.reranker == ORACLE_RERANKER:
        return oracle_ranking(row, cfg.k1)
    scores = row["rerank_scores"]
    return sorted(range(len(cands)), key=lambda i: -scores[i])


def gold_ids(row: dict) -> set[str]:
    """The row's gold documents: candidates marked ``is_gold`` plus ``meta.gold_doc_ids``.

    Retrieval output records the full gold set in meta: a gold document the retriever missed
    must count as a miss, not make the row look gold-less.
    """
    gold = {c["doc_id"] for c in row["candidates"] if c.get("is_gold")}
    return gold | set(row_meta(row).get("gold_doc_ids") or [])


def oracle_ranking(row: dict, k1: int) -> list[int]:
    """The first ``k1`` candidates with the gold ones first, each group in retrieval order.

    The reader's ceiling for reranking: no reranker can place more gold documents in the top k
    (a gold document the retriever missed stays a miss), and evaluating the reader on it shows
    what perfect reranking could gain at best.
    """
    gold = gold_ids(row)
    ranks = range(min(k1, len(row["candidates"])))
    return sorted(ranks, key=lambda i: row["candidates"][i]["doc_id"] not in gold)


def indirect_gold(row: dict) -> set[str]:
    """Gold documents whose text contains no normalised answer: evidence the reader needs but
    that a topical reranker has no lexical reason to rank high."""
    from raglign.metrics import normalize_answer

    answers = [normalize_answer(a) for a in row["answers"] if normalize_answer(a)]
    return {c["doc_id"] for c in row["candidates"]
            if c.get("is_gold") and not any(a in normalize_answer(c["text"]) for a in answers)}


def row_metrics(row: dict, ranking: list[int], cfg: EvalConfig) -> dict[str, Any]:
    """The per-row metrics of the reranker setting (and generator setting when predicted)."""
    from raglign.metrics import choice_accuracy, qa_metrics, ranking_metrics, recall_at_k

    cands = row["candidates"]
    ranked_ids = [cands[i]["doc_id"] for i in ranking]
    out: dict[str, Any] = {"id": row["id"]}
    gold = gold_ids(row)
    if gold or any(c.get("is_gold") is not None for c in cands):
        out.update(ranking_metrics(ranked_ids, gold, ks=sorted(set(cfg.ks) | {cfg.k})))
        indirect = indirect_gold(row)
        out[f"indirect_recall@{cfg.k}"] = recall_at_k(ranked_ids, indirect, cfg.k)
    if "prediction" in row:
        if row.get("choices"):
            out["accuracy"] = choice_accuracy(row["prediction"], row["answers"][0],
                                              n_options=len(row["choices"]), choices=row["choices"])
        else:
            out.update(qa_metrics(row["prediction"], row["answers"]))
    return out


def default_category_key(rows: list[dict]) -> str | None:
    """MMLU rows break down by category, HotpotQA rows by question type."""
    meta = row_meta(rows[0]) if rows else {}
    for key in ("category", "type"):
        if key in meta:
            return key
    return None


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Run the evaluation described by ``cfg``; returns (and writes) the aggregate report."""
    return evaluate_many([cfg])[0]


# What runs evaluated together must share: the rows, the reader and the pools.
SHARED = ("data", "split", "limit", "k", "k1", "generator", "max_new_tokens", "actors",
          "gpus_per_actor", "batch_size", "ray")


def evaluate_many(cfgs: list[EvalConfig]) -> list[dict[str, Any]]:
    """Several runs over the same rows (the demo's base, trained and oracle rankings) in one Ray
    session; returns (and writes) each run's report, equal to its :func:`evaluate` alone.

    Why together: each model stage is an actor pool whose start (a process, a model load) cost
    12-26 s a run on 2 cores, more than the work itself. Here one reranker pool scores the rows
    for every run that needs a model (each actor loads each reranker once), and one reader pool
    answers every distinct prompt once: a (question, top-k documents in order) that two rankings
    agree on is generated once, greedy decoding giving both the same answer.
    """
    from raglign.evaluate.aggregate import aggregate
    from raglign.ray_session import ray_session

    first = cfgs[0]
    differ = [f for f in SHARED for c in cfgs[1:] if getattr(c, f) != getattr(first, f)]
    if differ:
        raise ConfigError(f"runs evaluated together must share {sorted(set(differ))}")
    t0 = time.time()
    for cfg in cfgs:
        storage.check_output(storage.parent(cfg.output))
    rows = read_rows(first.data)
    if first.split:
        rows = [r for r in rows if row_meta(r).get("split") == first.split]
    rows = rows[: first.limit] if first.limit else rows
    usable = [r for r in rows if r["candidates"]]
    rejected = len(rows) - len(usable)
    if not usable:
        raise ConfigError(f"{first.data}: no rows with candidates to evaluate")
    runs = [[dict(r) for r in usable] for _ in cfgs]
    print(f"eval {', '.join(c.run_name for c in cfgs)}: {len(usable)} rows ({rejected} without "
          "candidates skipped)", flush=True)
    scored = [j for j, c in enumerate(cfgs) if c.reranker_model]
    with (ray_session(first.ray, log_dir=storage.parent(first.output))
          if scored or first.generator else contextlib.nullcontext()):
        if scored:
            items = [{**r, "id": _item_id(j, r["id"]), "reranker": cfgs[j].reranker,
                      "kind": cfgs[j].reranker_kind} for j in scored for r in runs[j]]
            names = ", ".join(cfgs[j].run_name for j in scored)
            outputs = _map(items, _RerankActor, first, f"[eval {names}] rerank",
                           dict(k1=first.k1), ["reranker", "kind"])
            by_id = _by_id(items, outputs)
            for j in scored:
                for r in runs[j]:
                    r["rerank_scores"] = list(by_id[_item_id(j, r["id"])]["rerank_scores"])
        for cfg, run in zip(cfgs, runs):
            for r in run:
                r["ranking"] = _ranking(r, cfg)
        if first.generator:
            prompts = {_prompt_id(r, first.k): r for run in runs for r in run}
            items = [{**r, "id": key} for key, r in prompts.items()]
            label = "[eval " + ", ".join(c.run_name for c in cfgs) + "] generate"
            answers = _by_id(items, _generate(items, first, label))
            for run in runs:
                for r in run:
                    r["prediction"] = answers[_prompt_id(r, first.k)]["prediction"]
    seconds = round(time.time() - t0, 1)
    reports = []
    for cfg, run in zip(cfgs, runs):
        per_row = [row_metrics(r, r["ranking"], cfg) for r in run]
        key = cfg.category_key or default_category_key(run)
        report = aggregate(per_row, run, category_key=key, n_boot=cfg.n_boot)
        gen = cfg.generator
        report.update(name=cfg.run_name, data=cfg.data, reranker=cfg.reranker,
                      rank_by=cfg.rank_by, generator=gen.name if gen else None,
                      generator_backend=gen.backend if gen else None, k=cfg.k, k1=cfg.k1,
                      rows_skipped_no_candidates=rejected, seconds=seconds)
        _write(report, run, per_row, cfg)
        reports.append(report)
    return reports


def _item_id(run: int, row_id: str) -> str:
    """A pool item's id: the run's index and the row's id (rows repeat across runs)."""
    return f"{run}\x1f{row_id}"


def _prompt_id(row: dict, k: int) -> str:
    """The reader's prompt of a row under its ranking: the question (by row id) and its top-k
    candidates in order; two runs with the same id share the answer."""
    return f"{row['id']}\x1f" + ",".join(map(str, list(row["ranking"])[:k]))


def _map(items: list[dict], actor: type, cfg: EvalConfig, label: str, kwargs: dict,
         extra: list[str] = ()) -> list[dict]:
    """Run one model stage over the items as a Ray Data actor pool; returns its id-keyed
    outputs, counted on the stage's progress bar. Calls are ``batch_size`` items, fewer when
    that would leave actors idle (two calls per actor at least; the models batch within a
    call)."""
    import ray

    from raglign.pipeline.shards import default_shard_rows
    from raglign.ray_session import actor_pool_map

    columns = ["id", "question", "choices", "candidates", *extra]
    columns += ["ranking"] if "ranking" in items[0] else []
    gpus = {"num_gpus": cfg.gpus_per_actor} if cfg.gpus_per_actor else {}
    ds = actor_pool_map(ray.data.from_items([{k: r[k] for k in columns} for r in items]), actor,
                        cfg.actors, cfg.ray, fn_constructor_kwargs=kwargs,
                        batch_format="pandas",
                        batch_size=default_shard_rows(len(items), cfg.actors, cfg.batch_size),
                        **gpus)
    return _collect(ds, len(items), label)


def _collect(ds, n: int, label: str) -> list[dict]:
    """The rows of a stage's Dataset, counted on the stage's progress bar."""
    from raglign.console import progress_bar

    outputs = []
    with progress_bar(n, label) as bar:
        for row in ds.iter_rows():
            outputs.append(row)
            bar.update()
    return outputs


def _generate(items: list[dict], cfg: EvalConfig, label: str) -> list[dict]:
    """``{id, prediction}`` per item from the generator on its backend: a transformers actor
    pool, or the spec's ``ray.data.llm`` processor (:mod:`raglign.pipeline.eval_reader`)."""
    import ray

    from raglign.pipeline import eval_reader as reader

    spec = cfg.generator
    if spec.backend == "transformers":
        return _map(items, reader.GenerateActor, cfg, label,
                    dict(generator=spec.model_dump(mode="json"), k=cfg.k,
                         max_new_tokens=cfg.max_new_tokens))
    stage = reader.reader_stage(spec, reader.qa_params(cfg.max_new_tokens))
    ds = stage(ray.data.from_items(reader.request_rows(items, cfg.k)))
    return reader.finish(_collect(ds.select_columns(["id", "prediction"]), len(items),
                                  f"{label} ({spec.backend})"))


def _by_id(items: list[dict], outputs: list[dict]) -> dict[str, dict]:
    """The outputs by id; every item must come back."""
    by_id = {o["id"]: o for o in outputs}
    missing = [r["id"] for r in items if r["id"] not in by_id]
    if missing:
        first = missing[0].replace(chr(31), " ")
        raise RuntimeError(f"{len(missing)} rows came back without results (first: {first})")
    return by_id


def _write(report: dict, rows: list[dict], per_row: list[dict], cfg: EvalConfig) -> None:
    """``OUTPUT`` (JSON aggregate), ``OUTPUT.rows.parquet`` (per-row metrics, ranking and
    prediction) and ``OUTPUT.md`` (a readable summary)."""
    from raglign.evaluate.report import markdown_table

    out = cfg.output  # a path or storage URI; the two side files sit beside it
    storage.write_text(out, json.dumps(report, indent=2, default=float))
    detail = []
    for r, m in zip(rows, per_row):
        d = dict(m)
        d["ranked_doc_ids"] = [r["candidates"][i]["doc_id"] for i in r["ranking"]]
        if "prediction" in r:
            d["prediction"] = r["prediction"]
        detail.append(d)
    import pyarrow as pa

    from raglign.data.io import write_table_atomic

    write_table_atomic(pa.Table.from_pylist(detail), storage.with_suffix(out, ".rows.parquet"))
    storage.write_text(storage.with_suffix(out, ".md"), markdown_table([report]) + "\n")
    print(f"eval {cfg.run_name}: " + ", ".join(
        f"{k}={report[k]:.3f}" for k in ("recall@5", "ndcg@5", "mrr", "em", "f1", "accuracy")
        if isinstance(report.get(k), float)) + f" -> {out}", flush=True)
