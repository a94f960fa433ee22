"""Labelling throughput per signal with the real SmolLM2-135M on HotpotQA rows (10 candidates),
and the Ray Data overhead against the same backend called in a plain loop.

    python benchmarks/bench_label.py --rows 8 --actors 2

For each signal: (a) plain loop — one process, models loaded once (load time reported apart),
torch using all ``--threads``; (b) ``run_label`` — Ray Data, ``--actors`` actors with one CPU and
``threads / actors`` torch threads each, timed end to end (actor start and model loads included,
as a user experiences it). Overhead = (b) / (a, including its model load) - 1. Then the signal
evaluation table (Recall@2 / NDCG@2 / MRR of the gold supporting paragraphs) over the rows.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SIGNAL_OPTS = {"rationale": {"max_new_tokens": 48}, "judge": {"max_new_tokens": 8},
               "answer_quality": {"max_new_tokens": 16}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--signals", default="answer_logprob,loo_logprob,attention,judge,"
                    "answer_quality,rationale_score")
    ap.add_argument("--out", default=None, help="write the results JSON here")
    args = ap.parse_args()

    import torch

    from raglign.config import validate
    from raglign.data.convert import convert
    from raglign.data.io import read_rows
    from raglign.evaluate.signals import signal_eval, to_markdown
    from raglign.pipeline.label import (LabelConfig, label_in_process, load_models, model_needs,
                                        run_label)
    from raglign.ray_session import ray_session
    from raglign.signals import SIGNALS

    tmp = Path(tempfile.mkdtemp(prefix="bench-label-"))
    convert("hotpotqa", SHARED / "hotpotqa" / "hotpotqa_train.json", tmp / "in", limit=args.rows)
    rows = read_rows(tmp / "in")
    results, merged = {}, {r["id"]: r for r in rows}
    with ray_session():
        for name in args.signals.split(","):
            fields = dict(job="label", input=str(tmp / "in"), output=str(tmp / name),
                          signals=[name], generator="smollm2-135m", context="parallel",
                          shard_rows=max(1, args.rows // (2 * args.actors)), batch_size=2,
                          rationale=SIGNAL_OPTS["rationale"], judge=SIGNAL_OPTS["judge"],
                          answer_quality=SIGNAL_OPTS["answer_quality"],
                          actors=args.actors, cpus_per_actor=1,
                          torch_threads=max(1, args.threads // args.actors))
            cfg = validate(LabelConfig, fields)
            torch.set_num_threads(args.threads)
            t0 = time.perf_counter()
            models = load_models(cfg, model_needs([SIGNALS[name]], cfg))
            t1 = time.perf_counter()
            label_in_process(cfg, rows, models)
            t2 = time.perf_counter()
            del models
            t3 = time.perf_counter()
            run_label(cfg, progress=lambda s: None)
            t4 = time.perf_counter()
            plain, load, ray_s = t2 - t1, t1 - t0, t4 - t3
            results[name] = {"rows": len(rows), "plain_s": round(plain, 2), "load_s": round(load, 2),
                             "plain_rows_per_s": round(len(rows) / plain, 3),
                             "ray_s": round(ray_s, 2), "ray_rows_per_s": round(len(rows) / ray_s, 3),
                             "overhead_vs_plain_incl_load": round(ray_s / (plain + load) - 1, 3)}
            print(name, json.dumps(results[name]), flush=True)
            for r in read_rows(tmp / name):
                for c, lc in zip(merged[r["id"]]["candidates"], r["candidates"]):
                    c[name] = lc[name]
    table = signal_eval(list(merged.values()), args.signals.split(","), ks=(1, 2, 5))
    print(to_markdown(table))
    if args.out:
        Path(args.out).write_text(json.dumps({"throughput": results, "signal_eval": table}, indent=2))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
