"""All single-document scores of a query: the document engine against concatenated prompts.

``answer_logprob`` can be labelled two ways (``--context parallel`` / ``concat``); since the engine
scores a hard mask at the document's natural position, both give the same numbers, and this
measures what each costs on real HotpotQA rows (10 paragraphs of 20-400 tokens):

* ``concat``: ``TransformersGenerator.score`` over the row's ten one-document QA prompts (the
  label job's ``context: concat`` path: length-sorted, shared prompt prefix encoded once);
* ``engine``: ``DocumentEngine.prepare`` (prefix once, then the documents; on a CPU one per
  forward, the default) then ``single_document`` (ten suffix passes packed into one row);
* ``engine, 1024-token prefill batches``: the same with length-sorted, padded document batches
  (``prefill_token_budget=1024``, the reranker's CPU budget).

Modes run row by row in rotating order in one process, so machine load falls on all of them
alike; CPU seconds of this process (``--threads 1``: no spinning OpenMP threads) measure the work.
Also reports the largest difference between the engine's and the concatenated scores.

    python benchmarks/bench_engine_concat.py --rows 12 --threads 1 --out docs/bench_engine_concat.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

DATA = Path(os.environ.get("RAGLIGN_SHARED_DATA",
                           Path(__file__).resolve().parents[2] / "shared" / "data"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=12)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="write the results JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from raglign.data.convert import convert
    from raglign.data.io import read_rows
    from raglign.engine import DocumentEngine
    from raglign.models.generator import TransformersGenerator
    from raglign.prompts import qa_prompt
    from raglign.signals.items import pick_answer

    tmp = Path(tempfile.mkdtemp(prefix="bench-engine-concat-"))
    convert("hotpotqa", DATA / "hotpotqa" / "hotpotqa_train.json", tmp / "rows", limit=args.rows)
    rows = read_rows(tmp / "rows")
    gen = TransformersGenerator.from_name(args.model, dtype=args.dtype, device="cpu")
    tok = gen.tokenizer
    engines = {"engine": DocumentEngine(gen.model, tok),
               "engine, 1024-token prefill batches":
                   DocumentEngine(gen.model, tok, prefill_token_budget=1024)}

    def run(mode: str, q: str, docs, answer: str) -> list[float]:
        if mode == "concat":
            return [r.logprob for r in gen.score([qa_prompt(tok, q, [d]) for d in docs],
                                                 [answer] * len(docs))]
        eng = engines[mode]
        return eng.single_document(eng.prepare(q, docs), answer).tolist()

    modes = ["concat", *engines]
    cpu = dict.fromkeys(modes, 0.0)
    wall = dict.fromkeys(modes, 0.0)
    max_diff, tokens = 0.0, 0
    with torch.inference_mode():
        first = rows[0]
        for mode in modes:  # warm-up: allocator and kernels
            run(mode, first["question"], [(c["title"], c["text"]) for c in first["candidates"][:2]],
                first["answers"][0])
        for i, row in enumerate(rows):
            docs = [(c["title"], c["text"]) for c in row["candidates"]]
            answer = pick_answer(list(row["answers"]), row["candidates"], "best")
            tokens += sum(len(tok(f"{t}\n{x}")["input_ids"]) for t, x in docs)
            values = {}
            for mode in modes[i % len(modes):] + modes[:i % len(modes)]:
                c0, w0 = time.process_time(), time.perf_counter()
                values[mode] = run(mode, row["question"], docs, answer)
                cpu[mode] += time.process_time() - c0
                wall[mode] += time.perf_counter() - w0
            for mode in engines:
                max_diff = max(max_diff, max(abs(a - b) for a, b in
                                             zip(values[mode], values["concat"])))
            print(f"row {i + 1}/{len(rows)}: " + ", ".join(f"{m} {cpu[m]:.1f} CPU-s"
                                                         for m in modes), flush=True)

    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"), "model": args.model, "dtype": args.dtype,
        "threads": args.threads, "rows": len(rows), "document_tokens": tokens,
        "cpu_s": cpu, "wall_s": wall,
        "cpu_ratio_to_concat": {m: cpu[m] / cpu["concat"] for m in modes},
        "max_abs_diff_engine_vs_concat_nats": max_diff,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
