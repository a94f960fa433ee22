"""G-Rerank on real data: the Algorithm 2 mining comparison (paper Figure 5) and the Gumbel-noise
ablation (Figure 4), with the packaged SmolLM2 on the shared HotpotQA sample.

    python benchmarks/bench_grerank.py --rows 40 --steps 20 --out /tmp/grerank_bench

Steps: convert HotpotQA (10 candidates, 2 gold per question) to canonical rows; label
``gumbel_weight`` plus the lowest-perplexity / attention / leave-one-out baselines in one Ray Data
job (one prefill per question shared by all four signals); write the Recall@2/5 + MRR table
with bootstrap CIs; then run the ablation on ``--ablation-rows`` questions. Prints timings.
Results are recorded in docs/benchmarks.md ("G-Rerank mining (Algorithm 2)").
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="/tmp/grerank_bench")
    p.add_argument("--generator", default="smollm2-135m")
    p.add_argument("--rows", type=int, default=40)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--lr", type=float, default=0.15)
    p.add_argument("--actors", type=int, default=2)
    p.add_argument("--ablation-rows", type=int, default=2)
    p.add_argument("--dtype", default="auto",
                   help="generator dtype: auto = bf16 on CPUs with native bf16, else float32")
    args = p.parse_args()
    out = Path(args.out)
    data = out / "hotpotqa"
    raglign = [sys.executable, "-m", "raglign"]
    if not data.exists():
        subprocess.run(raglign + ["data", "convert", "--format", "hotpotqa",
                                  str(REPO.parent / "shared/data/hotpotqa/hotpotqa_train.json"),
                                  str(data)], check=True)
    common = ["--generator", args.generator, "--steps", str(args.steps), "--lr", str(args.lr),
              "--torch-threads", "1", "--device", "cpu", "--dtype", args.dtype]
    t0 = time.perf_counter()
    subprocess.run(raglign + ["grerank", "mine-weights", str(data), str(out / "mining"),
                              "--baselines", "--limit", str(args.rows), "--shard-rows", "4",
                              "--batch-size", "1", "--actors", str(args.actors)] + common,
                   check=True)
    mining_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    subprocess.run(raglign + ["grerank", "ablation", str(data), str(out / "ablation"),
                              "--limit", str(args.ablation_rows)] + common, check=True)
    print(json.dumps({"mining_seconds": round(mining_s, 1),
                      "ablation_seconds": round(time.perf_counter() - t0, 1),
                      "mining_report": str(out / "mining" / "_grerank_mining.md"),
                      "ablation": str(out / "ablation" / "ablation.json")}, indent=2))


if __name__ == "__main__":
    main()
