"""Scoring throughput: naive one-pair-at-a-time loop vs the batched transformers backend.

Each pair is a FlashRAG QA prompt holding one ~100-word Wikipedia passage plus a short answer
(the passage title), the shape of the answer-log-likelihood signals. For each dtype the naive
loop (one unpadded forward per pair with full-sequence logits, as a first implementation would
write it) and ``TransformersGenerator.score`` run on the same pairs in the same process, so
their ratio is measured under the same machine load. Also reports how far the batched scores
are from the naive ones.

Both wall-clock and process CPU time are reported: on a shared machine wall time mostly measures
the other tenants, while CPU seconds (meaningful with ``--threads 1``, where no OpenMP thread
spins) measure the work itself.

    python benchmarks/bench_scoring.py --pairs 200 --model smollm2-135m --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from raglign.models.generator import TransformersGenerator
from raglign.prompts import qa_prompt

DATA = Path(os.environ.get("RAGLIGN_SHARED_DATA",
                           Path(__file__).resolve().parents[2] / "shared" / "data"))
QUESTION = "Which article is this passage from?"


def load_pairs(tokenizer, n: int) -> tuple[list[str], list[str]]:
    prompts, answers = [], []
    with open(DATA / "flashrag" / "wiki_sample_1000.jsonl") as f:
        for line in f:
            title, _, text = json.loads(line)["contents"].partition("\n")
            title = title.strip('"')
            prompts.append(qa_prompt(tokenizer, QUESTION, [(None, text)]))
            answers.append(title)
            if len(prompts) == n:
                break
    return prompts, answers


def naive_scores(gen: TransformersGenerator, prompts, answers) -> list[float]:
    out = []
    with torch.inference_mode():
        for p, a in zip(prompts, answers):
            p_ids, a_ids = gen.encode_pair(p, a)
            ids = torch.tensor([p_ids + a_ids], device=gen.device)
            logp = gen.model(input_ids=ids).logits[0].float().log_softmax(-1)
            out.append(sum(logp[len(p_ids) + j - 1, t].item() for j, t in enumerate(a_ids)))
    return out


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--pairs", type=int, default=200)
    ap.add_argument("--dtypes", default="bfloat16,float32")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--token-budget", type=int, default=8192)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    rows = []
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load average at start {os.getloadavg()}")
    for dtype in args.dtypes.split(","):
        gen = TransformersGenerator.from_name(args.model, dtype=dtype, device="cpu",
                                              batch_size=args.batch_size,
                                              token_budget=args.token_budget)
        prompts, answers = load_pairs(gen.tokenizer, args.pairs)
        encoded = [gen.encode_pair(p, a) for p, a in zip(prompts, answers)]
        tokens = sum(len(p) + len(a) for p, a in encoded)
        gen.score(prompts[:4], answers[:4])  # warm-up (kernel selection, allocator)
        naive, w_naive, c_naive = timed(lambda: naive_scores(gen, prompts, answers))
        batched, w_batched, c_batched = timed(
            lambda: [r.logprob for r in gen.score(prompts, answers)])
        diff = max(abs(x - y) for x, y in zip(naive, batched))
        for mode, w, c in (("naive loop", w_naive, c_naive), ("batched", w_batched, c_batched)):
            rows.append((dtype, mode, len(prompts) / c, tokens / c, c, w))
        print(f"{dtype}: {len(prompts)} pairs, {tokens} tokens; batched/naive speed-up "
              f"{c_naive / c_batched:.2f}x in CPU time, {w_naive / w_batched:.2f}x in wall time; "
              f"max |batched - naive| log-prob {diff:.2e}", flush=True)

    print(f"# load average at end {os.getloadavg()}\n")
    print("| dtype | mode | pairs / CPU-s | tokens / CPU-s | CPU s | wall s |")
    print("|---|---|---|---|---|---|")
    for dtype, mode, sps, tps, c, w in rows:
        print(f"| {dtype} | {mode} | {sps:.2f} | {tps:.0f} | {c:.1f} | {w:.1f} |")


if __name__ == "__main__":
    main()
