"""Scoring throughput: naive one-pair-at-a-time loop vs the batched transformers backend.

Each pair is a FlashRAG QA prompt holding one ~100-word Wikipedia passage plus a short answer
(the passage title), the shape of the answer-log-likelihood signals. For each dtype the naive
loop (one unpadded forward per pair with full-sequence logits, as a first implementation would
write it) and ``TransformersGenerator.score`` without and with the shared-prompt-prefix cache
run on the same pairs in the same process, so their ratios are measured under the same machine
load. Also reports how far the batched scores are from the naive ones.

Why batching alone cannot reach a multiple of the loop on a CPU: the script counts the tokens
each mode pushes through the decoder layers and through the LM head (forward hooks), turns them
into matmul FLOPs (``2 x layer parameters`` per layer token, ``2 x hidden x vocab`` per head
row; attention's score and value products, ~5% at these lengths, are left out) and divides by
CPU time. If the naive loop already runs near the measured matmul rate, no reordering of the
same FLOPs can be much faster: the speed-up is bounded by the FLOP ratio ("FLOP-bound").

Both wall-clock and process CPU time are reported: on a shared machine wall time mostly measures
the other tenants, while CPU seconds (meaningful with ``--threads 1``, where no OpenMP thread
spins) measure the work itself.

    python benchmarks/bench_scoring.py --pairs 32 --model smollm2-135m --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from bench_cpu_dtype import matmul_rate
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


class WorkCounter:
    """Tokens through the decoder layers (input embedding rows, padding included) and rows
    through the LM head, counted with forward hooks while the context is open."""

    def __init__(self, model):
        self.model, self.layer_tokens, self.head_rows = model, 0, 0

    def __enter__(self):
        def count_layers(mod, inp, out):
            self.layer_tokens += inp[0].numel()

        def count_head(mod, inp, out):
            self.head_rows += out.shape[:-1].numel()

        self.hooks = [self.model.get_input_embeddings().register_forward_hook(count_layers),
                      self.model.get_output_embeddings().register_forward_hook(count_head)]
        return self

    def __exit__(self, *exc):
        for h in self.hooks:
            h.remove()

    def flops(self) -> float:
        """Matmul FLOPs of the counted work (attention products excluded)."""
        layers = sum(p.numel() for p in self.model.get_decoder().layers.parameters())
        head = self.model.get_output_embeddings().weight.numel()
        return 2.0 * layers * self.layer_tokens + 2.0 * head * self.head_rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--pairs", type=int, default=200)
    ap.add_argument("--dtypes", default="bfloat16,float32")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--token-budget", type=int, default=None,
                    help="scoring token budget (default: the device's, 1024 on CPU)")
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
                                              score_token_budget=args.token_budget,
                                              share_prefix=False)
        shared = TransformersGenerator(gen.model, gen.tokenizer, batch_size=args.batch_size,
                                       score_token_budget=args.token_budget, share_prefix=True)
        prompts, answers = load_pairs(gen.tokenizer, args.pairs)
        encoded = [gen.encode_pair(p, a) for p, a in zip(prompts, answers)]
        tokens = sum(len(p) + len(a) for p, a in encoded)
        peak = matmul_rate(200, getattr(torch, dtype))
        gen.score(prompts[:4], answers[:4])  # warm-up (kernel selection, allocator)
        modes = {"naive loop": lambda: naive_scores(gen, prompts, answers),
                 "batched": lambda: [r.logprob for r in gen.score(prompts, answers)],
                 "batched + shared prefix": lambda: [
                     r.logprob for r in shared.score(prompts, answers)]}
        results = {}
        for mode, fn in modes.items():
            with WorkCounter(gen.model) as work:
                scores, w, c = timed(fn)
            results[mode] = (scores, w, c, work)
        naive_scores_, _, c_naive, naive_work = results["naive loop"]
        for mode, (scores, w, c, work) in results.items():
            diff = max(abs(x - y) for x, y in zip(naive_scores_, scores))
            rows.append((dtype, mode, len(prompts) / c, tokens / c, c, w, c_naive / c,
                         naive_work.flops() / work.flops(), work.flops() / c / 1e9, peak, diff,
                         work.layer_tokens))
        print(f"{dtype}: {len(prompts)} pairs, {tokens} tokens, matmul rate "
              f"(200 x 576 x 1536) {peak:.1f} GFLOP/s", flush=True)

    print(f"# load average at end {os.getloadavg()}\n")
    print("| dtype | mode | pairs / CPU-s | tokens / CPU-s | CPU s | wall s | speed-up (CPU) "
          "| FLOP-bound | layer tokens | GFLOP/s | of matmul rate | max diff (nats) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (dtype, mode, sps, tps, c, w, speed, bound, rate, peak, diff, layer_tokens) in rows:
        print(f"| {dtype} | {mode} | {sps:.2f} | {tps:.0f} | {c:.1f} | {w:.1f} | {speed:.2f}x "
              f"| {bound:.2f}x | {layer_tokens} | {rate:.1f} | {rate / peak:.0%} | {diff:.1e} |")


if __name__ == "__main__":
    main()
