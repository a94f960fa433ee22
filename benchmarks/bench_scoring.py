"""Scoring throughput: naive one-pair-at-a-time loop vs the batched transformers backend.

Each pair is a FlashRAG QA prompt holding one ~100-word Wikipedia passage plus a short answer
(the passage title), the shape of the answer-log-likelihood signals. For each dtype the naive
loop (one unpadded forward per pair with full-sequence logits, as a first implementation would
write it) and ``TransformersGenerator.score`` run on the same pairs in the same process, so
their ratio is measured under the same machine load. Also reports how far the batched scores
are from the naive ones.

    python benchmarks/bench_scoring.py --pairs 200 --model smollm2-135m
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
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--pairs", type=int, default=200)
    ap.add_argument("--dtypes", default="bfloat16,float32")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--token-budget", type=int, default=8192)
    args = ap.parse_args()

    rows = []
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load average at start {os.getloadavg()}")
    for dtype in args.dtypes.split(","):
        gen = TransformersGenerator.from_name(args.model, dtype=dtype, device="cpu",
                                              batch_size=args.batch_size,
                                              token_budget=args.token_budget)
        prompts, answers = load_pairs(gen.tokenizer, args.pairs)
        tokens = sum(len(p) + len(a) for p, a in (gen.encode_pair(*x) for x in zip(prompts, answers)))
        gen.score(prompts[:4], answers[:4])  # warm-up (kernel selection, allocator)
        naive, t_naive = timed(lambda: naive_scores(gen, prompts, answers))
        batched, t_batched = timed(lambda: [r.logprob for r in gen.score(prompts, answers)])
        diff = max(abs(x - y) for x, y in zip(naive, batched))
        for mode, t in (("naive loop", t_naive), ("batched", t_batched)):
            rows.append((dtype, mode, len(prompts) / t, tokens / t, t))
        print(f"{dtype}: {len(prompts)} pairs, {tokens} tokens, batched/naive speed-up "
              f"{t_naive / t_batched:.2f}x, max |batched - naive| log-prob {diff:.2e}", flush=True)

    print(f"# load average at end {os.getloadavg()}\n")
    print("| dtype | mode | pairs/s | tokens/s | seconds |")
    print("|---|---|---|---|---|")
    for dtype, mode, sps, tps, t in rows:
        print(f"| {dtype} | {mode} | {sps:.1f} | {tps:.0f} | {t:.1f} |")


if __name__ == "__main__":
    main()
