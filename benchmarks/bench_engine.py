"""Document engine throughput: what leave-one-out costs through the parallel-prefill cache.

Real SmolLM2-135M, 20 real Wikipedia passages (FlashRAG's sample) cut to ~100 tokens each. In ONE
run, per dtype, it times:

* ``single``    -- prefill the 20 documents once + 20 one-hot masks (log p(a | q, d_i));
* ``loo@k``     -- prefill once + k leave-one-out masks, for k = 10 and 20 (packed in one row);
* ``concat@k``  -- leave-one-out the ordinary way: k forwards of the prompt with k-1 documents.

``seq/s`` counts scored answer sequences (one per mask or forward); ``tok/s`` counts every token
that went through the model (prefill + suffix passes, or whole concatenated prompts). The target
is ``loo@20 <= 2 x single``. Run: ``python benchmarks/bench_engine.py [--dtypes bf16 fp32]``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "flashrag" / "wiki_sample_1000.jsonl"
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def load_passages(path: Path, tokenizer, n: int, doc_tokens: int) -> list[tuple[str, str]]:
    """The first n passages with at least ``doc_tokens`` tokens, cut to that many tokens.
    FlashRAG's ``contents`` is the quoted title, a newline, then the text."""
    docs = []
    with open(path) as f:
        for line in f:
            title, _, text = json.loads(line)["contents"].partition("\n")
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) >= doc_tokens:
                docs.append((title.strip('"'), tokenizer.decode(ids[:doc_tokens]).strip()))
            if len(docs) == n:
                return docs
    raise SystemExit(f"{path}: fewer than {n} passages with {doc_tokens} tokens")


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def bench_dtype(name: str, path: Path, n: int, doc_tokens: int, ks: list[int]) -> list[dict]:
    from transformers import AutoModelForCausalLM

    from raglign.engine import DocumentEngine
    from raglign.models.registry import load_tokenizer, resolve_model

    tok = load_tokenizer("smollm2-135m")
    model = AutoModelForCausalLM.from_pretrained(resolve_model("smollm2-135m"), dtype=DTYPES[name])
    engine = DocumentEngine(model, tok)
    docs = load_passages(path, tok, n, doc_tokens)
    question, answer = f"Who or what is {docs[0][0]}?", docs[0][0]
    engine.single_document(engine.prepare(question, docs[:2]), answer)  # warm-up

    cache, t_prefill = timed(lambda: engine.prepare(question, docs))
    n_ans = len(engine.answer_ids(answer))
    tail = len(cache.suffix_ids) + n_ans
    prefill_tokens = cache.num_keys
    rows = []

    def row(method, seconds, sequences, tokens, passes_s=None):
        rows.append({"dtype": name, "method": method, "seconds": round(seconds, 3),
                     "passes_seconds": None if passes_s is None else round(passes_s, 3),
                     "sequences": sequences, "seq_per_s": round(sequences / seconds, 2),
                     "tokens": tokens, "tok_per_s": round(tokens / seconds, 1)})

    _, t = timed(lambda: engine.single_document(cache, answer))
    row("single", t_prefill + t, n, prefill_tokens + n * tail, t)
    for k in ks:
        _, t = timed(lambda k=k: engine.leave_one_out(cache, answer, k=k))
        row(f"loo@{k}", t_prefill + t, k, prefill_tokens + k * tail, t)
    for k in ks:
        prompt_len = len(cache.prefix_ids) + sum(cache.doc_lens[:k]) + tail
        _, t = timed(lambda k=k: [engine.concat_logprob(question, docs[:k], answer,
                                                        keep=[j for j in range(k) if j != i])
                                  for i in range(k)])
        tokens = sum(prompt_len - cache.doc_lens[i] for i in range(k))
        row(f"concat@{k}", t, k, tokens)
    single = rows[0]["seconds"]
    for r in rows:
        r["vs_single"] = round(r["seconds"] / single, 2)
    print(f"{name}: prefill {t_prefill:.2f}s of {prefill_tokens} tokens "
          f"({n} docs x ~{doc_tokens}), suffix+answer {tail} tokens", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--dtypes", nargs="+", default=["bf16", "fp32"], choices=list(DTYPES))
    ap.add_argument("--docs", type=int, default=20)
    ap.add_argument("--doc-tokens", type=int, default=100)
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    ap.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ks = sorted({min(10, args.docs), args.docs})
    load_before = os.getloadavg()[0]
    rows = [r for d in args.dtypes
            for r in bench_dtype(d, args.data, args.docs, args.doc_tokens, ks)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}")
    print("| dtype | method | seconds | of which suffix passes | seq/s | tok/s | vs single |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        passes = "" if r["passes_seconds"] is None else r["passes_seconds"]
        print(f"| {r['dtype']} | {r['method']} | {r['seconds']} | {passes} | {r['seq_per_s']} "
              f"| {r['tok_per_s']} | {r['vs_single']} |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
