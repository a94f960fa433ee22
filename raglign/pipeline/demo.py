"""``raglign demo``: the whole method comparison on one small real dataset, on a laptop.

Stages (each skipped when its output already exists, so an interrupted demo resumes):

1. convert the HotpotQA distractor sample into canonical rows;
2. "retrieve": order each question's candidates by the base retriever (MiniLM bi-encoder cosine)
   and store that as the retrieval score — the distractor set has no retrieval score, and RADIO
   mixes one in;
3. split questions into train / test by a fixed hash of their id (never evaluate on training
   questions);
4. label the training questions with RADIO rationales (``rationale_score``) and PDist
   (``answer_logprob``) using the generator;
5. mine RADIO groups (top-k shifted by N) and PDist soft targets;
6. fine-tune the base reranker on each with Ray Train (InfoNCE; KL);
7. evaluate the base, both trained rerankers and the oracle ranking (gold paragraphs first: the
   ceiling of any reranker) on the test questions (reranker and generator settings), and write
   and print the comparison: the table, each run's paired difference to the base, and a verdict
   per method (better / on par / worse than the base at this number of questions).

All stages share one Ray session: a private local Ray unless ``ray.address`` names a cluster.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Literal

from pydantic import Field

from raglign import storage
from raglign.config import JobConfig, StrictModel
from raglign.models.generator_spec import GeneratorSpec

# The reader's columns of the terminal table (EM is 0 for a 135M reader's free answers; the file
# has it, with every other metric).
TERMINAL_READER = ("subem", "f1", "accuracy")


def default_hotpotqa() -> str:
    """The shared HotpotQA sample: ``$RAGLIGN_SHARED_DATA`` or ``../shared/data`` from the cwd."""
    root = Path(os.environ.get("RAGLIGN_SHARED_DATA", Path("..") / "shared" / "data"))
    return str(root / "hotpotqa" / "hotpotqa_train.json")


class DemoTraining(StrictModel):
    """Reranker fine-tuning settings shared by the trained variants (papers' lr and decay)."""

    epochs: int = Field(2, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(6e-5, gt=0)
    max_length: int = Field(256, ge=16)
    # Two single-threaded DDP workers beat one two-threaded process on 2 cores (1.6x,
    # docs/benchmarks.md "Training throughput"); the update is defined over global batches, so
    # the trained model does not depend on it.
    num_workers: int = Field(2, ge=1)
    # bf16 autocast where the CPU has native bf16: the two trainings took 258 s in fp32 and
    # ~2x less in bf16 on a 2-core AVX-512-BF16 EPYC (docs/benchmarks.md "Main job").
    cpu_bf16: bool | Literal["auto"] = "auto"


class DemoConfig(JobConfig):
    """The demo's knobs. One run took 11.5 min on a 2-core AMD EPYC with AVX-512 BF16 (LLM and
    reranker training in bf16, the four evaluations sharing their pools; docs/benchmarks.md,
    "Main job")."""

    job: Literal["demo"] = "demo"
    input: str = Field(default_factory=default_hotpotqa)
    format: str = "hotpotqa"
    output: str = "runs/demo"  # a directory or a storage URI (s3://, gs://)
    # The reader that labels and answers: any backend (a hub id on vllm on GPUs, say); the
    # labels' PDist scores use context concat there, the parallel-prefill engine being
    # transformers-only.
    generator: GeneratorSpec = GeneratorSpec(name="smollm2-135m")
    encoder: str = "minilm-l6"
    reranker: str = "minilm-l6"
    reranker_kind: Literal["cross", "bi"] = "bi"
    test_fraction: float = Field(0.3, gt=0, lt=1)
    split_seed: int = 0
    limit: int | None = Field(None, ge=4)
    # Ray Data actors (one CPU each) for labelling and for the evaluation's generator. Speed
    # only: rationale seeds are per row and generation is greedy, so labels and answers do not
    # depend on it.
    actors: int = Field(2, ge=1)
    gpus_per_actor: float = Field(0.0, ge=0, description="GPUs per labelling and evaluation "
                                  "actor (a fraction shares a GPU)")
    rationale_max_new_tokens: int = Field(96, ge=8)
    pdist_temperature: float = Field(1.0, gt=0)
    k: int = Field(5, ge=1)
    training: DemoTraining = DemoTraining()
    generate: bool = True


def _stage(i: int, total: int, text: str) -> float:
    """Announce stage ``i``; returns its start time for :func:`_done`."""
    print(f"[demo {i}/{total}] {text}", flush=True)
    return time.monotonic()


def _done(t0: float, what: str, resumed: bool = False) -> None:
    """Close a stage with its result and time; a stage a resumed demo skipped because its
    output was there says "already done", where "(0s)" would read as a stage that ran and
    did nothing."""
    took = "already done" if resumed else f"{time.monotonic() - t0:.0f}s"
    print(f"           {what} ({took})", flush=True)


def retrieval_order(rows: list[dict], reranker_name: str, kind: str) -> list[dict]:
    """Score every candidate with the base model, store it as ``score`` and sort by it."""
    from raglign.models.rerankers import doc_text, load_reranker

    model = load_reranker(reranker_name, kind=kind)
    out = []
    for r in rows:
        cands = list(r["candidates"])
        scores = model.score(r["question"], [doc_text(c["title"], c["text"]) for c in cands])
        for c, s in zip(cands, scores):
            c["score"] = float(s)
        r = dict(r, candidates=sorted(cands, key=lambda c: -c["score"]))
        out.append(r)
    return out


def write_comparison(out: str | Path, reports: list[dict], cfg: DemoConfig) -> str:
    """Write ``comparison.md`` and ``comparison.png`` for the eval runs under ``out/eval`` (base
    first, oracle last) and return the part to print (the differences table stays in the file).

    Beside each run's means it reports the run minus the base, paired over the same questions,
    and a verdict per trained method, so a reader can tell an effect from noise at this n and
    see the headroom the oracle leaves.
    """
    from raglign.evaluate.report import (HEADLINE, bar_plot, diff_table, headroom_line,
                                         markdown_table, metric_columns, paired_differences,
                                         per_row_metrics, verdict_line)
    from raglign.pipeline.evaluate import ORACLE_RERANKER

    out = str(out)  # a directory or a storage URI
    per_row = [per_row_metrics(storage.join(out, "eval", f"{r['name']}.json")) for r in reports]
    diffs = paired_differences(reports, per_row)
    verdicts = [headroom_line(name, d, HEADLINE) if name == ORACLE_RERANKER
                else verdict_line(name, d, HEADLINE) for name, d in diffs.items()]
    png = bar_plot(reports, storage.join(out, "comparison.png"), diffs=diffs)
    md = storage.join(out, "comparison.md")
    header = (f"Held-out questions: {reports[0]['n']}; generator {cfg.generator.name}; top-{cfg.k} "
              f"documents to the generator.\n\n")
    runs = ("## Runs\n\nMean [95% bootstrap CI]. `base` is the untrained reranker and each "
            "method's run the base fine-tuned on that method's labels; `oracle` puts the gold "
            "paragraphs first (then the retrieval order): the ceiling of any reranker, and with "
            f"the generator the most the reader can gain from ranking.\n\n"
            f"{markdown_table(reports)}\n\n")
    differences = ("## Differences to the base\n\nEach run minus the base on the same "
                   "questions: mean [95% paired bootstrap CI], two-sided p. An interval that "
                   f"includes 0 is not an effect at this n.\n\n"
                   f"{diff_table(diffs, metric_columns(reports))}\n\n")
    verdict = (f"## Verdict\n\nJudged on the paired intervals of {' and '.join(HEADLINE)}: "
               "better (worse) when one lies above (below) 0 and none on the other side, on par "
               "when all include 0.\n\n" + "\n".join(f"- {v}" for v in verdicts) + "\n")
    storage.write_text(md, f"# raglign demo\n\n{header}{runs}{differences}"
                           f"{verdict}\n![comparison](comparison.png)\n")
    # The terminal gets the headline columns and the verdict in one screen (a whole demo stays
    # under 60 terminal lines); every metric, the per-metric differences and the plot are in
    # the file.
    terminal = (f"{header}Mean [95% bootstrap CI]; base = the untrained reranker, oracle = gold "
                "first (the ceiling).\n\n"
                f"{markdown_table(reports, (*reversed(HEADLINE), *TERMINAL_READER))}\n\n"
                + "\n".join(f"- {v}" for v in verdicts) + "\n")
    return f"{terminal}\nEvery metric, paired differences and the plot: {md}, {png}\n"


def label_config(cfg: DemoConfig, train_dir: str, labelled: str):
    """Stage 4's label job: RADIO's rationales and PDist's log-likelihoods of the training
    questions. Off the transformers backend PDist scores with ``context: concat`` (the
    parallel-prefill engine is transformers-only; one document per score reads the same)."""
    from raglign.pipeline.label import LabelConfig

    context = {} if cfg.generator.backend == "transformers" else {"context": "concat"}
    return LabelConfig(
        input=train_dir, output=labelled, generator=cfg.generator, encoder=cfg.encoder,
        signals=["rationale_score", "answer_logprob"],
        rationale={"max_new_tokens": cfg.rationale_max_new_tokens}, actors=cfg.actors,
        cpus_per_actor=1, gpus_per_actor=cfg.gpus_per_actor, ray=cfg.ray, **context)


def run_demo(cfg: DemoConfig) -> list[dict]:
    """Run (or resume) every stage; returns the evaluation reports: base, methods, oracle."""
    from raglign.data import convert
    from raglign.data.io import read_rows, write_rows
    from raglign.data.split import split_rows
    from raglign.pipeline.evaluate import ORACLE_RERANKER, EvalConfig, evaluate_many
    from raglign.pipeline.label import run_label
    from raglign.pipeline.mine import MineConfig, run_mine
    from raglign.pipeline.train import train
    from raglign.ray_session import ray_session
    from raglign.training_config import TrainConfig

    out = cfg.output  # a directory or a storage URI: every stage reads and writes through it
    j = lambda *parts: storage.join(out, *parts)  # noqa: E731
    storage.check_output(out)
    storage.makedirs(out)
    storage.write_text(j("demo_config.json"), cfg.model_dump_json(indent=2))
    total, started = 7, time.monotonic()
    canonical, retrieved = j("canonical"), j("retrieved")
    train_dir, test_dir = j("split", "train"), j("split", "test")

    with ray_session(cfg.ray, log_dir=out):
        t = _stage(1, total, f"convert {cfg.input} ({cfg.format})")
        resumed = storage.is_file(storage.join(canonical, "_summary.json"))
        if not resumed:
            convert(cfg.format, cfg.input, canonical, limit=cfg.limit)
        _done(t, f"{len(read_rows(canonical))} questions -> {canonical}", resumed)

        t = _stage(2, total, f"order candidates by the base retriever {cfg.reranker} ({cfg.reranker_kind})")
        resumed = storage.exists(retrieved)
        if not resumed:
            write_rows(retrieval_order(read_rows(canonical), cfg.reranker, cfg.reranker_kind),
                       retrieved)
        _done(t, f"-> {retrieved}", resumed)

        t = _stage(3, total, f"split train/test (test fraction {cfg.test_fraction}, seed {cfg.split_seed})")
        train_rows, test_rows = split_rows(read_rows(retrieved), cfg.test_fraction, cfg.split_seed)
        resumed = storage.exists(train_dir)
        if not resumed:
            write_rows(train_rows, train_dir)
            write_rows(test_rows, test_dir)
        _done(t, f"{len(train_rows)} train / {len(test_rows)} test questions", resumed)

        t = _stage(4, total, f"label training questions with RADIO + PDist using "
                           f"{cfg.generator.name} ({cfg.generator.backend})")
        labelled = j("labelled")
        # _summary.json is written once every shard is committed
        resumed = storage.is_file(storage.join(labelled, "_summary.json"))
        if not resumed:
            run_label(label_config(cfg, train_dir, labelled))
        _done(t, f"-> {labelled}", resumed)

        t = _stage(5, total, "mine RADIO groups (top-k shifted by 3) and PDist targets")
        mined = {"radio": j("mined", "radio"), "pdist": j("mined", "pdist")}
        run_mine(MineConfig(input=labelled, output=mined["radio"], signal="rationale_score"))
        run_mine(MineConfig(input=labelled, output=mined["pdist"], targets="pdist",
                            temperature=cfg.pdist_temperature))
        _done(t, "groups and targets written")

        t = _stage(6, total, "train rerankers with Ray Train (RADIO: InfoNCE, PDist: KL)")
        models = {method: j("train", method, "model") for method in ("radio", "pdist")}
        resumed = all(storage.exists(model) for model in models.values())
        for method, objective in (("radio", "infonce"), ("pdist", "kl")):
            if not storage.exists(models[method]):
                train(TrainConfig(
                    data=mined[method], output=j("train", method), model=cfg.reranker,
                    kind=cfg.reranker_kind, objective=objective, run_name=f"demo-{method}",
                    ray=cfg.ray,
                    **cfg.training.model_dump()))
        _done(t, ", ".join(f"{m}: {p}" for m, p in models.items()), resumed)

        t = _stage(7, total, f"evaluate on {len(test_rows)} held-out questions")
        runs = (("base", cfg.reranker), *models.items(), (ORACLE_RERANKER, ORACLE_RERANKER))
        paths = {name: j("eval", f"{name}.json") for name, _ in runs}
        done = {name: storage.read_json(path) for name, path in paths.items()
                if storage.is_file(path)}
        todo = [(name, model) for name, model in runs if name not in done]
        resumed = not todo
        if todo:  # one reranker pool and one reader pool for every run (evaluate_many)
            done.update(zip([name for name, _ in todo], evaluate_many([EvalConfig(
                data=test_dir, output=paths[name], reranker=model, name=name,
                reranker_kind=cfg.reranker_kind, k=cfg.k,
                generator=cfg.generator if cfg.generate else None, actors=cfg.actors,
                gpus_per_actor=cfg.gpus_per_actor, ray=cfg.ray) for name, model in todo])))
        reports = [done[name] for name, _ in runs]
        _done(t, "done", resumed)

    print("\n" + write_comparison(out, reports, cfg))
    print(f"\n[demo] finished in {(time.monotonic() - started) / 60:.1f} min; "
          f"report: {j('comparison.md')}")
    return reports
