"""Training throughput of ``raglign train``: (query, document) pairs per second, 1 vs 2 workers.

A MiniLM-L6 cross-encoder (the packaged all-MiniLM-L6-v2 encoder with a new one-logit head) is
fine-tuned with InfoNCE on real text: each group is an NQ-open question with its gold Wikipedia
passage (lost-in-the-middle oracle file) as the positive and 6 passages of the FlashRAG
Wikipedia sample as negatives, max length 256 (passages are ~100 words, ~140 tokens with the
question). The same global batch (``--batch-size`` groups per optimizer step) runs with each
worker layout in turn, in one process and one Ray session, so the ratio is measured under the
same machine load:

* 1 Ray Train worker x 1 CPU,
* 2 Ray Train workers x 1 CPU (DDP over gloo),
* 1 Ray Train worker x 2 CPUs (torch intra-op threads instead of processes).

Throughput is the median of the per-window ``pairs_per_s`` the training loop reports, skipping
the first window (model load, first-step allocation); startup is reported separately.

    python benchmarks/bench_train.py --steps 6 --batch-size 4
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

DATA = Path(os.environ.get("RAGLIGN_SHARED_DATA",
                           Path(__file__).resolve().parents[2] / "shared" / "data"))


def build_groups(n: int, seed: int = 0) -> list[dict]:
    """n InfoNCE groups: question, its gold passage, 6 random Wikipedia-sample passages."""
    rng = random.Random(seed)
    wiki = []
    with open(DATA / "flashrag" / "wiki_sample_1000.jsonl") as f:
        for line in f:
            title, _, text = json.loads(line)["contents"].partition("\n")
            wiki.append({"doc_id": f"w{len(wiki)}", "title": title.strip('"'), "text": text})
    groups = []
    with gzip.open(DATA / "nq_oracle" / "nq-open-oracle.jsonl.gz", "rt") as f:
        for i, line in enumerate(f):
            if i >= n:
                break
            row = json.loads(line)
            gold = row["ctxs"][0]
            docs = [{"doc_id": f"g{i}", "title": gold["title"], "text": gold["text"]}]
            docs += rng.sample(wiki, 6)
            groups.append({"id": f"nq{i}", "question": row["question"], "docs": docs,
                           "labels": [1, 0, 0, 0, 0, 0, 0]})
    return groups


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6, help="optimizer steps per layout")
    ap.add_argument("--batch-size", type=int, default=4, help="groups per optimizer step")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--model", default="minilm-l6")
    args = ap.parse_args()

    from raglign.config import RayConfig
    from raglign.pipeline.train import train
    from raglign.ray_session import ray_session
    from raglign.training_config import TrainConfig

    layouts = [("1 worker x 1 CPU", 1, 1), ("2 workers x 1 CPU (DDP)", 2, 1),
               ("1 worker x 2 CPUs", 1, 2)]
    results = []
    with tempfile.TemporaryDirectory() as tmp, ray_session(RayConfig(num_cpus=2)):
        data = Path(tmp) / "groups"
        data.mkdir()
        pq.write_table(pa.Table.from_pylist(build_groups(args.batch_size * args.steps)),
                       data / "part-00000.parquet")
        for name, workers, cpus in layouts:
            out = Path(tmp) / f"w{workers}c{cpus}"
            cfg = TrainConfig(data=str(data), output=str(out), model=args.model,
                              max_length=args.max_length, batch_size=args.batch_size, epochs=1,
                              num_workers=workers, cpus_per_worker=cpus, log_every=1,
                              checkpoint_every=10**6)
            t0, load0 = time.perf_counter(), os.getloadavg()[0]
            result = train(cfg)
            wall, load = time.perf_counter() - t0, (load0 + os.getloadavg()[0]) / 2
            history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
            rate = statistics.median(h["pairs_per_s"] for h in history[1:])
            pairs = result.step * args.batch_size * 7
            results.append((name, rate, wall, pairs / rate, load))
            print(f"{name}: {rate:.2f} pairs/s (median over windows), fit wall {wall:.1f} s, "
                  f"of which training ~{pairs / rate:.1f} s; load average ~{load:.1f}", flush=True)
    base = results[0][1]
    print("\n| layout | pairs/s | vs 1 worker | fit wall-clock (s) | startup + export (s) | load avg |")
    print("|---|---|---|---|---|---|")
    for name, rate, wall, busy, load in results:
        print(f"| {name} | {rate:.2f} | {rate / base:.2f}x | {wall:.0f} | {wall - busy:.0f} | {load:.0f} |")


if __name__ == "__main__":
    main()
