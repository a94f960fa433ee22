"""Length-sorted micro-batches vs one padded batch: reranker training forward+backward, or
scoring (``--score``).

A training micro-batch holds groups of documents of mixed lengths; padded as one batch, every
document costs the longest one's tokens. ``Encoder.embed`` and the cross-encoder's
``forward_scores`` instead run length-sorted micro-batches under a padded-token budget
(``token_budget``; ``raglign.batching``). This measures both on real HotpotQA
distractor paragraphs with the packaged MiniLM-L6 (bi-encoder, and the cross-encoder built on
it), one torch thread, fp32: padded tokens computed per real token, and seconds per
forward+backward of ``--groups`` groups of 7 documents, alternating the budgets in one run.
``--score`` times the forward alone, in eval mode and without gradients, as ``raglign eval``
and mining score.

    python benchmarks/bench_padding.py --groups 4 --repeats 5
    python benchmarks/bench_padding.py --groups 4 --repeats 5 --score
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from pathlib import Path

import torch

DATA = Path(os.environ.get("RAGLIGN_SHARED_DATA",
                           Path(__file__).resolve().parents[2] / "shared" / "data"))


def hotpot_groups(n: int, seed: int = 0) -> list[tuple[str, list[str]]]:
    from raglign.models.rerankers import doc_text

    rows = json.loads((DATA / "hotpotqa" / "hotpotqa_train.json").read_text())
    random.Random(seed).shuffle(rows)
    return [(r["question"], [doc_text(t, " ".join(s)) for t, s in r["context"][:7]])
            for r in rows[:n]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--groups", type=int, default=4, help="groups per forward (a micro-batch)")
    ap.add_argument("--repeats", type=int, default=5, help="micro-batches per budget")
    ap.add_argument("--budgets", default="1000000,4096,2048,1024,512")
    ap.add_argument("--kinds", default="bi,cross")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--score", action="store_true",
                    help="time no-grad scoring in eval mode instead of forward+backward")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from raglign.models.rerankers import load_reranker

    budgets = [int(b) for b in args.budgets.split(",")]
    batches = [hotpot_groups(args.groups * args.repeats, seed=0)[i::args.repeats]
               for i in range(args.repeats)]
    results = []
    for kind in args.kinds.split(","):
        torch.manual_seed(0)
        reranker = load_reranker("minilm-l6", kind=kind, max_length=args.max_length)
        reranker.train(not args.score)
        owner = reranker.encoder if kind == "bi" else reranker
        model = reranker.encoder.model if kind == "bi" else reranker.model
        padded: list[int] = []
        model.register_forward_hook(lambda m, a, kw, out: padded.append(kw["input_ids"].numel()),
                                    with_kwargs=True)
        times = {b: [] for b in budgets}
        tokens = {b: 0 for b in budgets}
        real = 0
        for batch in batches:
            queries, docs = [q for q, _ in batch], [d for _, d in batch]
            for b in budgets:  # alternate, so drift in machine speed hits every budget alike
                owner.token_budget = b
                padded.clear()
                t0 = time.perf_counter()
                if args.score:
                    with torch.no_grad():
                        reranker.forward_scores(queries, docs)
                else:
                    reranker.forward_scores(queries, docs).sum().backward()
                times[b].append(time.perf_counter() - t0)
                reranker.zero_grad(set_to_none=True)
                tokens[b] += sum(padded)
            real += _real_tokens(reranker, kind, queries, docs)
        base = statistics.median(times[budgets[0]])
        for b in budgets:
            med = statistics.median(times[b])
            results.append({"kind": kind, "token_budget": b, "padded_per_real_token":
                            round(tokens[b] / real, 3), "median_s": round(med, 3),
                            "speedup_vs_first": round(base / med, 2)})
            print(json.dumps(results[-1]), flush=True)
    print("\n| kind | token budget | padded / real tokens | s per micro-batch (median) | speed-up |")
    print("|---|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['kind']} | {r['token_budget']} | {r['padded_per_real_token']} | "
              f"{r['median_s']} | {r['speedup_vs_first']}x |")


def _real_tokens(reranker, kind, queries, docs) -> int:
    """Tokens of the texts (pairs) themselves, without any padding."""
    if kind == "bi":
        return sum(reranker.encoder.token_lengths(list(queries) + [d for g in docs for d in g]))
    n = len(docs[0])
    return sum(reranker.token_lengths([q for q in queries for _ in range(n)],
                                      [d for g in docs for d in g]))


if __name__ == "__main__":
    main()
