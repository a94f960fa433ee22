"""Retrieval quality and cost on the NQ-open oracle set (results in docs/benchmarks.md).

Queries: the 2,655 NQ-open questions of nelson-liu/lost-in-the-middle's oracle file, each with
its gold Wikipedia passage. Corpus: the 2,600 distinct gold passages plus the 1,000-passage
DPR-Wikipedia sample from FlashRAG (3,600 passages). Reports gold Recall@1/5/20 for BM25 and for
dense retrieval with MiniLM-L6, and the time to embed the corpus and the queries.

    python benchmarks/bench_retrieval.py [--work /tmp/bench_retrieval] [--actors 2]
        [--cpus-per-actor 1] [--methods bm25 dense]

The inputs are built with the same API as ``raglign data convert`` / ``raglign data corpus``.
A second run reuses the cached embeddings (delete WORK/dense to time embedding again).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

from raglign.data import convert, convert_corpus
from raglign.pipeline.retrieve import RetrieveConfig, retrieve

SHARED = Path(os.environ.get("RAGLIGN_SHARED_DATA",
                             Path(__file__).resolve().parents[2] / "shared" / "data"))


def build_inputs(work: Path) -> tuple[Path, Path]:
    oracle = SHARED / "nq_oracle" / "nq-open-oracle.jsonl.gz"
    queries, corpus = work / "queries", work / "corpus"
    if not queries.exists():
        convert("dpr", oracle, queries)
    if not corpus.exists():
        convert_corpus("dpr-ctxs", oracle, corpus / "nq_gold")
        convert_corpus("jsonl", SHARED / "flashrag" / "wiki_sample_1000.jsonl", corpus / "wiki")
    return queries, corpus


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="/tmp/bench_retrieval")
    ap.add_argument("--methods", nargs="+", default=["bm25", "dense"], choices=["bm25", "dense"])
    ap.add_argument("--encoder", default="minilm-l6")
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--cpus-per-actor", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--fresh", action="store_true", help="drop cached embeddings first")
    args = ap.parse_args()
    work = Path(args.work)
    queries, corpus = build_inputs(work)
    results = {}
    for method in args.methods:
        out = work / method
        if args.fresh and out.exists():
            shutil.rmtree(out)
        cfg = RetrieveConfig(queries=str(queries), corpus=str(corpus), output=str(out), k=20,
                             method=method, encoder=args.encoder, actors=args.actors,
                             cpus_per_actor=args.cpus_per_actor, batch_size=args.batch_size)
        results[method] = retrieve(cfg).to_dict()
    print("\n| retriever | R@1 | R@5 | R@20 | texts embedded | embed s | total s |")
    print("|---|---|---|---|---|---|---|")
    for method, s in results.items():
        r = s["recall"]
        name = "BM25 (bm25s)" if method == "bm25" else f"dense {args.encoder} (flat IP)"
        emb = ("-", "-") if method == "bm25" else (str(s["embedded_texts"]),
                                                  f"{s['embed_seconds']:.1f}")
        print(f"| {name} | {r['recall@1']:.3f} | {r['recall@5']:.3f} | {r['recall@20']:.3f} | "
              f"{emb[0]} | {emb[1]} | {s['seconds']:.1f} |")
    (work / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
