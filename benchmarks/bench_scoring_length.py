"""Batched vs one-at-a-time scoring by prompt length, with and without padding.

Separates the two costs a batch can add on a CPU: padding (a left-padded batch carries an
attention mask) and nothing-to-gain (a long sequence already gives the matmuls enough rows).
16 pairs of one prompt (``--repeats`` document copies long), answer " Paris"; "equal" batches
hold 16 identical prompts (no padding), "varied" ones append 0-6 filler tokens. Process CPU
time of ``TransformersGenerator.score`` on all 16 at once vs 16 single calls, after one warm-up
of each, one torch thread.

    python benchmarks/bench_scoring_length.py --repeats 3 9 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import time

import torch

from raglign.models.generator import TransformersGenerator

SENTENCE = "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. "


def cpu_seconds(fn) -> float:
    fn()
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--repeats", type=int, nargs="+", default=[3, 9])
    ap.add_argument("--pairs", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(1)
    gen = TransformersGenerator.from_name(args.model, dtype=args.dtype)
    answers = [" Paris"] * args.pairs
    print("| prompt tokens | batch | loop CPU s | batched CPU s | batched / loop speed |")
    print("|---:|---|---:|---:|---:|")
    for r in args.repeats:
        prompt = f"Document: {SENTENCE * r}\nQuestion: Where is the Eiffel Tower?\nAnswer:"
        n = len(gen.tokenizer(prompt)["input_ids"])
        for name, prompts in (("equal", [prompt] * args.pairs),
                              ("varied", [prompt + " x" * (i % 7) for i in range(args.pairs)])):
            loop = cpu_seconds(lambda: [gen.score([p], [a]) for p, a in zip(prompts, answers)])
            batched = cpu_seconds(lambda: gen.score(prompts, answers))
            print(f"| {n} | {name} | {loop:.2f} | {batched:.2f} | {loop / batched:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
