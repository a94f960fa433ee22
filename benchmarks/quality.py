"""Quality benchmark: every reranker-training method on the demo's HotpotQA split, held-out only.

    raglign demo --output runs/demo                      # first: labels, split, RADIO, PDist
    python benchmarks/quality.py --demo runs/demo --out runs/quality [--methods M,...]

``--methods`` picks from loop, emdr, supervised, grerank, rrpo (default: all but grerank and
rrpo, the two that run the LLM inside training).

Methods (all start from the demo's base reranker, train with the demo's schedule on the demo's
*training* questions and are evaluated on its *test* questions):

| method | supervision (training split) | data | objective |
|---|---|---|---|
| base | none (the retriever's own order) | – | – |
| radio | RADIO rationale score, top-k shifted by 3 | demo's `mined/radio` | infonce |
| pdist | softmax(answer_logprob / T) | demo's `mined/pdist` | kl |
| loop | softmax(-loo_logprob / T) over the top 5 | `loo_logprob` labelled here | kl |
| emdr | answer_logprob per document (EMDR^2's marginal) | `mine --lm-logprobs` of the demo's labels | emdr |
| supervised | the gold paragraphs (`is_gold`) | canonical rows | supervised (BCE; CoSENT for bi-encoders) |
| grerank | the gold answer's NLL through the frozen LLM (Algorithm 1) | canonical rows | gumbel |
| rrpo | episodes of k documents rewarded by the frozen LLM (log p of the gold answer) | canonical rows | rrpo |

Plus two reader references that train nothing: ``oracle`` (gold paragraphs first, the reader's
ceiling with perfect reranking) and the base ranking read by each ``--readers`` model.

Every stage is skipped when its output exists, so a re-run resumes. Results: one
``raglign eval`` report per method under ``OUT/eval`` (bootstrap 95% CIs), the paired bootstrap
differences against the base (``raglign.evaluate.aggregate.compare``), ``OUT/quality.json`` /
``OUT/quality.md`` and a plot (``--plot``, default ``docs/quality_hotpotqa.png``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

METRICS = ["recall@5", "ndcg@5", "mrr", "indirect_recall@5", "em", "subem", "f1"]
# method -> (objective, where its training rows come from)
TRAINED = {"radio": "infonce", "pdist": "kl", "loop": "kl", "emdr": "emdr",
           "supervised": "supervised"}
# Trained here (--methods); the demo already trained radio and pdist.
EXTRA_METHODS = ("loop", "emdr", "supervised", "grerank", "rrpo")


def log(msg: str) -> None:
    print(f"[quality {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------ training rows
def supervised_rows(rows: list[dict], source: str) -> list[dict]:
    """Gold-label rows for the supervised baseline: every candidate, label = is_gold (0/1)."""
    from raglign.errors import DataError
    from raglign.mining import DOC_FIELDS

    out = []
    for r in rows:
        labels = []
        for j, c in enumerate(r["candidates"]):
            if c.get("is_gold") is None:
                raise DataError(source, r["id"], f"candidates[{j}].is_gold",
                                "unknown; the supervised baseline needs gold labels")
            labels.append(float(c["is_gold"]))
        out.append({"id": r["id"], "question": r["question"],
                    "docs": [{k: c.get(k) for k in DOC_FIELDS} for c in r["candidates"]],
                    "labels": labels})
    return out


def write_once(records_fn, path: Path) -> Path:
    import pyarrow as pa

    from raglign.data.io import write_table_atomic

    if not (path / "part-00000.parquet").exists():
        write_table_atomic(pa.Table.from_pylist(records_fn()), path / "part-00000.parquet")
    return path


# ------------------------------------------------------------------------------ stages
def prepare_data(demo: Path, out: Path, demo_cfg: dict, args) -> dict[str, Path]:
    """Training rows per method (reusing the demo's mined RADIO groups and PDist targets)."""
    from raglign.data.io import read_rows
    from raglign.pipeline.label import LabelConfig, run_label
    from raglign.pipeline.mine import MineConfig, run_mine

    train_dir = demo / "split" / "train"
    data = {"radio": demo / "mined" / "radio", "pdist": demo / "mined" / "pdist"}
    for p in data.values():
        if not (p / "part-00000.parquet").exists():
            raise SystemExit(f"{p} is missing: run `raglign demo --output {demo}` first")

    data["loop"] = out / "mined" / "loop"
    if "loop" in args.methods and not (data["loop"] / "part-00000.parquet").exists():
        loo_dir = out / "labelled_loo"
        t = time.monotonic()
        summary = run_label(LabelConfig(
            input=str(train_dir), output=str(loo_dir), generator=demo_cfg["generator"],
            encoder=demo_cfg["encoder"], signals=["loo_logprob"], loo={"k": args.loo_k},
            shard_rows=args.shard_rows, actors=args.actors, batch_size=args.label_batch_size,
            cpus_per_actor=1), progress=lambda s: log(s))
        log(f"loo_logprob labels: {summary['rows_out']} rows ({time.monotonic() - t:.0f}s)")
        run_mine(MineConfig(input=str(loo_dir), output=str(data["loop"]), targets="loop",
                            k=args.loo_k, temperature=demo_cfg["pdist_temperature"]),
                 progress=lambda s: log(s))
    data["emdr"] = out / "mined" / "emdr"  # every candidate's answer_logprob, as EMDR^2 reads it
    if not (data["emdr"] / "part-00000.parquet").exists():
        run_mine(MineConfig(input=str(demo / "labelled"), output=str(data["emdr"]),
                            lm_logprobs=True), progress=lambda s: log(s))
    data["supervised"] = write_once(lambda: supervised_rows(read_rows(train_dir), str(train_dir)),
                                    out / "mined" / "supervised")
    data["grerank"] = data["rrpo"] = train_dir
    return data


def train_models(demo: Path, out: Path, demo_cfg: dict, data: dict[str, Path], args) -> dict:
    """Trained reranker directories per method; the demo's RADIO and PDist models are reused."""
    from raglign.pipeline.train import train
    from raglign.training_config import TrainConfig

    models = {m: demo / "train" / m / "model" for m in ("radio", "pdist")}
    timings = {}
    for method in args.methods:
        run_dir = out / "train" / method
        models[method] = run_dir / "model"
        if models[method].exists():
            continue
        common = dict(data=str(data[method]), output=str(run_dir), model=demo_cfg["reranker"],
                      kind=demo_cfg["reranker_kind"], run_name=f"quality-{method}",
                      **{**demo_cfg["training"], "num_workers": args.train_workers})
        if method == "grerank":
            common.update(objective="gumbel", batch_size=args.grerank_batch_size,
                          epochs=args.grerank_epochs,
                          gumbel={"generator": demo_cfg["generator"], "n": 10,
                                  "k": demo_cfg["k"]})
        elif method == "rrpo":
            common.update(objective="rrpo", batch_size=args.rrpo_batch_size,
                          epochs=args.rrpo_epochs, temperature=args.rrpo_temperature,
                          rrpo={"generator": demo_cfg["generator"], "n": 10, "k": args.rrpo_k,
                                "reward": args.rrpo_reward, "ppo_epochs": args.rrpo_ppo_epochs,
                                "reward_actors": args.rrpo_reward_actors,
                                "reward_actor_cpus": args.rrpo_actor_cpus,
                                "overlap_rollouts": args.rrpo_overlap})
        else:
            common.update(objective=TRAINED[method])
        t = time.monotonic()
        log(f"train {method} ({common['objective']}) on {data[method]}")
        train(TrainConfig(**common))
        timings[method] = round(time.monotonic() - t, 1)
        log(f"train {method}: {timings[method]}s")
    return {"models": models, "train_seconds": timings}


def same_reader(a, b) -> bool:
    """Whether two generator settings (a name, or a spec's mapping as demo_config.json holds
    it) are the same reader."""
    from raglign.models.generator_spec import GeneratorSpec

    return GeneratorSpec.model_validate(a) == GeneratorSpec.model_validate(b)


def evaluate_all(demo: Path, out: Path, demo_cfg: dict, models: dict, args) -> list[dict]:
    """One ``raglign eval`` report per run; reports the demo already wrote with the same
    settings are reused."""
    from raglign.pipeline.evaluate import EvalConfig, evaluate

    test_dir = demo / "split" / "test"
    reader = args.readers[0]
    runs = [("base", demo_cfg["reranker"], None, reader)]
    runs += [(m, str(p), None, reader) for m, p in models.items()]
    runs += [("oracle", "oracle", None, reader)]
    runs += [(f"base-{r}", demo_cfg["reranker"], None, r) for r in args.readers[1:]]
    reports = []
    for name, reranker, rank_by, gen in runs:
        path = out / "eval" / f"{name}.json"
        demo_path = demo / "eval" / f"{name}.json"
        if not path.exists() and demo_path.exists() and same_reader(gen, demo_cfg["generator"]):
            path = demo_path  # the demo's own evaluation: same test rows, k, kind and reader
        if path.exists():
            reports.append({**json.loads(path.read_text()), "_path": str(path)})
            continue
        t = time.monotonic()
        report = evaluate(EvalConfig(
            data=str(test_dir), output=str(path), reranker=reranker, rank_by=rank_by, name=name,
            reranker_kind=demo_cfg["reranker_kind"], k=demo_cfg["k"], generator=gen,
            actors=args.eval_actors))
        log(f"eval {name}: {time.monotonic() - t:.0f}s")
        reports.append({**report, "_path": str(path)})
    return reports


def compare_to_base(reports: list[dict], n_boot: int) -> dict[str, dict]:
    from raglign.evaluate.report import paired_differences, per_row_metrics

    return paired_differences(reports, [per_row_metrics(r["_path"]) for r in reports], METRICS,
                              n_boot)


# ------------------------------------------------------------------------------ report
RRPO_COLUMNS = ["rrpo_reward", "rrpo_ref_reward", "rrpo_kl", "rrpo_clip_fraction",
                "rrpo_approx_kl", "rrpo_worker_idle", "rrpo_actor_idle", "rrpo_reads"]


def rrpo_curves(run_dir: Path, figure: str, windows: int = 6) -> str:
    """The RRPO run's training curves for the report: its ``loss_curve.png`` (rewards, KLs,
    clip and idle fractions per step) copied to ``figure``, and a table of the same metrics'
    means over ``windows`` equal spans of steps."""
    import shutil

    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    trained = [h for h in history if "loss" in h]
    shutil.copyfile(run_dir / "loss_curve.png", figure)
    size = -(-len(trained) // windows)
    head = ("| steps | " + " | ".join(c.removeprefix("rrpo_") for c in RRPO_COLUMNS)
            + " |\n|---|" + "---:|" * len(RRPO_COLUMNS))
    lines = [head]
    for i in range(0, len(trained), size):
        span = trained[i:i + size]
        cells = [sum(h[c] for h in span) / len(span) if all(c in h for h in span) else None
                 for c in RRPO_COLUMNS]
        lines.append(f"| {span[0]['step']}-{span[-1]['step']} | "
                     + " | ".join("–" if v is None else f"{v:.3g}" for v in cells) + " |")
    return (f"\nRRPO training curves (window means from `{run_dir / 'metrics.jsonl'}`; figure "
            f"`{figure}`):\n\n" + "\n".join(lines) + "\n")


def _cell(report: dict, m: str) -> str:
    v, ci = report.get(m), report.get(f"{m}_ci")
    if not isinstance(v, (int, float)):
        return "–"
    return f"{v:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else f"{v:.3f}"


def markdown(reports: list[dict], diffs: dict[str, dict]) -> str:
    from raglign.evaluate.report import diff_table

    head = "| run | n | " + " | ".join(METRICS) + " |\n|---|---:|" + "---:|" * len(METRICS)
    lines = [head] + [f"| {r['name']} | {r['n']} | " + " | ".join(_cell(r, m) for m in METRICS)
                      + " |" for r in reports]
    return ("Mean [95% bootstrap CI] on the held-out questions:\n\n" + "\n".join(lines)
            + "\n\nPaired bootstrap difference vs base (mean [95% CI], two-sided p):\n\n"
            + diff_table(diffs, METRICS) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--demo", default="runs/demo", help="a finished `raglign demo` run directory")
    ap.add_argument("--out", default="runs/quality")
    ap.add_argument("--readers", default=None,
                    help="comma-separated generators; the first reads every run, the others "
                         "the base ranking only (default: the demo's generator)")
    ap.add_argument("--methods", default="loop,emdr,supervised",
                    help="methods to train besides the demo's radio and pdist: any of "
                         f"{','.join(EXTRA_METHODS)} (grerank = G-Rerank, objective gumbel: a "
                         "frozen-LLM forward per step, the costliest)")
    ap.add_argument("--grerank-epochs", type=int, default=1)
    ap.add_argument("--grerank-batch-size", type=int, default=2)
    ap.add_argument("--rrpo-epochs", type=int, default=2)
    ap.add_argument("--rrpo-batch-size", type=int, default=2)
    ap.add_argument("--rrpo-k", type=int, default=3, help="documents per episode (paper: 3)")
    ap.add_argument("--rrpo-reward", default="logprob", choices=["logprob", "f1", "em"],
                    help="logprob: dense and cheap on a CPU; f1 is the paper's")
    ap.add_argument("--rrpo-ppo-epochs", type=int, default=4, help="PPO passes per rollout")
    ap.add_argument("--rrpo-reward-actors", type=int, default=1,
                    help="Ray actors holding the reader (0: one reader in each train worker)")
    ap.add_argument("--rrpo-actor-cpus", type=float, default=1.0,
                    help="CPUs per reward actor; with the train workers' they must fit the "
                         "machine (2 cores: --train-workers 1)")
    ap.add_argument("--rrpo-overlap", action=argparse.BooleanOptionalAction, default=True,
                    help="read the next rollout's rewards during the current PPO updates "
                         "(rrpo.overlap_rollouts)")
    ap.add_argument("--rrpo-curves", default="docs/quality_hotpotqa_rrpo_curves.png",
                    help="where the RRPO run's training curves go (with --methods rrpo)")
    ap.add_argument("--rrpo-temperature", type=float, default=None,
                    help="policy temperature on the scores (default: the kind's, 0.02 bi)")
    ap.add_argument("--loo-k", type=int, default=5, help="LOOP's K (the reader's k2)")
    ap.add_argument("--actors", type=int, default=2, help="labelling actors")
    ap.add_argument("--shard-rows", type=int, default=17, help="labelling shard size")
    ap.add_argument("--label-batch-size", type=int, default=8,
                    help="rows a labelling actor labels at a time (each actor takes whole shards)")
    ap.add_argument("--train-workers", type=int, default=2,
                    help="Ray Train workers (the update is defined over global batches, so "
                         "this changes speed, not the result)")
    ap.add_argument("--eval-actors", type=int, default=2)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--plot", default="docs/quality_hotpotqa.png")
    ap.add_argument("--json", default="docs/quality_hotpotqa.json",
                    help="also copy the results JSON here")
    args = ap.parse_args()
    args.methods = args.methods.split(",")
    unknown = sorted(set(args.methods) - set(EXTRA_METHODS))
    if unknown:
        ap.error(f"--methods: unknown {unknown}; known {list(EXTRA_METHODS)}")

    from raglign.evaluate.report import bar_plot
    from raglign.ray_session import ray_session

    demo, out = Path(args.demo), Path(args.out)
    demo_cfg = json.loads((demo / "demo_config.json").read_text())
    args.readers = args.readers.split(",") if args.readers else [demo_cfg["generator"]]
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with ray_session():  # one local Ray for every stage
        data = prepare_data(demo, out, demo_cfg, args)
        trained = train_models(demo, out, demo_cfg, data, args)
        reports = evaluate_all(demo, out, demo_cfg, trained["models"], args)
    diffs = compare_to_base(reports, args.n_boot)
    table = markdown(reports, diffs)
    if "rrpo" in args.methods:
        table += rrpo_curves(out / "train" / "rrpo", args.rrpo_curves)
    result = {"demo": str(demo), "readers": args.readers, "train_seconds": trained["train_seconds"],
              "runs": [{k: v for k, v in r.items() if k in ["name", "n", "generator", "reranker",
                                                              "rank_by", "seconds"]
                        or k.split("_ci")[0] in METRICS} for r in reports],
              "vs_base": diffs, "seconds": round(time.monotonic() - started, 1)}
    (out / "quality.json").write_text(json.dumps(result, indent=2))
    (out / "quality.md").write_text(table)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.plot:
        main_reader = [r for r in reports if not r["name"].startswith("base-")]
        bar_plot(main_reader, args.plot, METRICS, diffs=diffs)
    print("\n" + table)
    log(f"finished in {(time.monotonic() - started) / 60:.1f} min -> {out / 'quality.md'}")


if __name__ == "__main__":
    main()
