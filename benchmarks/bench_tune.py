"""``raglign tune`` measured on HotpotQA (issue 17 item 8), three parts in one run:

* **alpha**: RADIO's alpha (0, 0.25, 0.5, 0.75, 1) on the HotpotQA training split, judged on
  validation MRR over 30 % of its questions (held out by the id hash): the
  ``jobs/tune_radio_alpha_hotpotqa.yaml`` sweep with its laptop settings (MiniLM bi-encoder,
  2 epochs, lr 6e-5), FIFO. Figure: ``metric_vs_params.png`` of that sweep.
* **asha**: the same 8-trial sweep (alpha 0 / 0.25 / 0.75 / 1 x lr 2e-5 / 1e-4, 4 epochs,
  validation every 2 steps, trials compared on validation NDCG@10) under FIFO and under ASHA
  (grace 2 validations, reduction factor 2): wall time ratio and the ratio of
  optimizer steps run over all trials (the saving whatever else the machine was doing), and each
  best trial's NDCG@10 and MRR with bootstrap 95 % CIs over the validation questions (``raglign
  eval`` of its best checkpoint). Why NDCG@10 and not MRR: with 22 validation questions and two
  gold paragraphs each, MRR moves only when a question's first gold paragraph changes rank, so
  most trials tie with the starting model at every round, and ASHA continues a trial that ties
  its cut-off; NDCG@10 counts both gold paragraphs' positions.
* **overhead**: one trial through ``raglign tune`` against the same ``raglign train`` run
  directly (the CLI, end to end, one after the other).

Input: labelled rows with ``rationale_score`` = the pure rationale similarity
(``jobs/label_radio_hotpotqa.yaml``, i.e. ``rationale.alpha: 1.0``), e.g. the demo's training
split labelled by SmolLM2-135M.

    python benchmarks/bench_tune.py --labelled runs/hotpotqa/radio_labelled --out runs/tune_bench

``--parts alpha,overhead`` runs some parts; each run adds its parts to ``OUT/bench_tune.json``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "jobs" / "tune_radio_alpha_hotpotqa.yaml"
# cpu_bf16 auto: bf16 autocast where the CPU has native bf16, as the demo trains (2x faster steps
# on an AVX-512-BF16 EPYC; fp32 elsewhere).
LAPTOP = {"train.model": "minilm-l6", "train.kind": "bi", "train.use_gpu": False,
          "train.max_length": 256, "train.batch_size": 8, "train.cpu_bf16": "auto"}
# What the ASHA part compares trials on (the module docstring says why not MRR).
ASHA_METRIC = "ndcg@10"


def _job(labelled: str, output: Path, **sets):
    from raglign.cli.tune import load_tune_job

    return load_tune_job(str(RECIPE), {**LAPTOP, "mine.input": labelled,
                                       "output": str(output), **sets})


def _sweep(job, record: Path | None = None) -> tuple[dict, float]:
    """Run the sweep; with ``record``, keep its summary and wall time there, and take them from
    there when an earlier run of this script finished it (a resumed finished sweep would time
    nothing)."""
    from raglign.pipeline.tune import run_tune

    if record is not None and record.exists():
        saved = json.loads(record.read_text())
        return saved["summary"], saved["wall_s"]
    start = time.perf_counter()
    summary = run_tune(job)
    wall = time.perf_counter() - start
    if record is not None:
        record.write_text(json.dumps({"summary": summary, "wall_s": wall}, default=str))
    return summary, wall


def _best_rows(job, out: Path, scratch: Path, metrics: tuple[str, ...]
               ) -> dict[str, list[float]]:
    """Per-question ``metrics`` of a sweep's best checkpoint on its validation questions
    (raglign eval)."""
    import torch

    from raglign.data.io import write_rows
    from raglign.pipeline.evaluate import EvalConfig, evaluate
    from raglign.pipeline.train import build_reranker
    from raglign.pipeline.train_validation import held_out, load_validation
    from raglign.pipeline.tune import best_recipe

    best = json.loads((out / "best.json").read_text())
    cfg = best_recipe(job.resolved(), best["values"])
    validation = load_validation(cfg, [], held_out(cfg))
    model = build_reranker(cfg)
    if best["checkpoint"]:
        model.load_state_dict(torch.load(Path(best["checkpoint"]) / "model.pt"))
    model.save(scratch / "model")
    write_rows(validation.rows, scratch / "rows")
    evaluate(EvalConfig(data=str(scratch / "rows"), output=str(scratch / "eval.json"),
                        reranker=str(scratch / "model"), reranker_kind=cfg.kind))
    import pyarrow.parquet as pq

    table = pq.read_table(scratch / "eval.rows.parquet")
    return {m: table.column(m).to_pylist() for m in metrics}


def _trial_steps(sweep: Path) -> int:
    """Optimizer steps run over all of a sweep's trials (its ``results.csv``): the work a
    scheduler saved, independent of how loaded the machine was while the sweep ran."""
    import csv

    with open(sweep / "results.csv") as f:
        return sum(int(row["steps"]) for row in csv.DictReader(f))


def _ci(values: list[float], seed: int = 0, n: int = 2000) -> tuple[float, float]:
    rng = random.Random(seed)
    means = sorted(statistics.fmean(rng.choices(values, k=len(values))) for _ in range(n))
    return means[int(0.025 * n)], means[int(0.975 * n) - 1]


def _cli(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "raglign", *args], check=True, cwd=REPO,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labelled", required=True)
    parser.add_argument("--out", default="runs/tune_bench")
    parser.add_argument("--parts", default="alpha,asha,overhead")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    labelled = str(Path(args.labelled).resolve())
    saved = out / "bench_tune.json"  # parts run separately add to one file
    results: dict = json.loads(saved.read_text()) if saved.exists() else {}
    results["labelled"] = labelled
    parts = args.parts.split(",")

    if "alpha" in parts:
        job = _job(labelled, out / "alpha", **{"param_space.train.lr": {"grid": [6e-5]}})
        summary, wall = _sweep(job)
        import pandas as pd

        frame = pd.read_csv(out / "alpha" / "results.csv").sort_values("mine.alpha")
        results["alpha"] = {"wall_s": round(wall, 1), "summary": summary,
                            "rows": frame[["mine.alpha", "best_val_mrr", "best_step",
                                           "final_val_mrr", "base_val_mrr"]].to_dict("records")}

    if "asha" in parts:
        space = {"param_space.mine.alpha": {"grid": [0.0, 0.25, 0.75, 1.0]},
                 "param_space.train.lr": {"grid": [2e-5, 1e-4]},
                 "train.epochs": 4, "train.eval_every": 2, "metric": f"val_{ASHA_METRIC}"}
        compared = {}
        for name, scheduler in (("fifo", {"name": "fifo"}),
                                ("asha", {"name": "asha", "grace_period": 2,
                                          "reduction_factor": 2})):
            job = _job(labelled, out / name, scheduler=scheduler, **space)
            summary, wall = _sweep(job, out / f"{name}_sweep.json")
            per_question = _best_rows(job, out / name, out / f"{name}_eval",
                                      (ASHA_METRIC, "mrr"))
            best = json.loads((out / name / "best.json").read_text())
            compared[name] = {"wall_s": round(wall, 1), "best_val": summary["best_value"],
                              "best_values": best["values"],
                              "stopped_early": summary["stopped_early"],
                              "trial_steps": _trial_steps(out / name),
                              "n": len(per_question["mrr"]),
                              **{f"eval_{m}": statistics.fmean(v) for m, v in per_question.items()},
                              **{f"ci95_{m}": _ci(v) for m, v in per_question.items()}}
        compared["metric"] = ASHA_METRIC
        compared["asha_over_fifo_time"] = round(compared["asha"]["wall_s"]
                                                / compared["fifo"]["wall_s"], 3)
        compared["asha_over_fifo_steps"] = round(compared["asha"]["trial_steps"]
                                                 / compared["fifo"]["trial_steps"], 3)
        low, high = compared["fifo"][f"ci95_{ASHA_METRIC}"]
        compared["asha_best_inside_fifo_ci"] = (
            low <= compared["asha"][f"eval_{ASHA_METRIC}"] <= high)
        results["asha_vs_fifo"] = compared

    if "overhead" in parts:
        one = _job(labelled, out / "one_trial", **{"param_space.mine.alpha": {"grid": [0.5]},
                                                   "param_space.train.lr": {"grid": [6e-5]}})
        recipe = out / "one_trial.yaml"
        out.mkdir(parents=True, exist_ok=True)
        recipe.write_text(yaml.safe_dump(json.loads(json.dumps(one.model_dump(mode="json")))))
        tune_s = _cli(["tune", "--config", str(recipe)])
        best = out / "one_trial" / "best_train.yaml"
        train_recipe = yaml.safe_load("\n".join(line for line in best.read_text().splitlines()
                                                if not line.startswith("#")))
        train_recipe["output"] = str(out / "direct")
        (out / "direct.yaml").write_text(yaml.safe_dump(train_recipe))
        train_s = _cli(["train", "--config", str(out / "direct.yaml")])
        results["overhead"] = {"tune_one_trial_s": round(tune_s, 1),
                               "train_direct_s": round(train_s, 1),
                               "ratio": round(tune_s / train_s, 3)}

    results["date"] = time.strftime("%Y-%m-%d")
    saved.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
