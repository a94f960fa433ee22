"""``raglign retrieve``: top-k passages per query from a corpus (dense + faiss on Ray, or BM25)."""

from __future__ import annotations

from raglign.cli.recipe import add_recipe_args, job_config


def _retrieve(args) -> int:
    from raglign.pipeline.retrieve import retrieve

    retrieve(job_config(args))
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "retrieve", help="retrieve the top-k corpus passages for each query (dense or BM25)",
        description="Embeds corpus and queries with an encoder in a Ray Data actor pool and "
        "searches a faiss index (or ranks with BM25); writes canonical rows whose candidates are "
        "the retrieved passages, is_gold filled from the input's gold passages. Flags override "
        "--set, which overrides the values of --config.")
    p.add_argument("queries", nargs="?", help="canonical query rows (Parquet dir)")
    p.add_argument("corpus", nargs="?", help="corpus Parquet dir (doc_id, title, text)")
    p.add_argument("output", nargs="?", help="output dir (rows, _summary.json, _cache/)")
    add_recipe_args(p, "retrieve", example="bm25_k1=1.2", nested={"address": "ray.address"},
                    needs={"queries": "queries", "corpus": "corpus", "output": "output"})
    p.add_argument("--k", type=int, help="passages per query (default 20)")
    method = p.add_mutually_exclusive_group()
    method.add_argument("--encoder", help="dense encoder: short name, dir or hub id "
                        "(default minilm-l6)")
    method.add_argument("--bm25", dest="method", action="store_const", const="bm25",
                        help="BM25 (bm25s) instead of dense")
    p.add_argument("--index", choices=["flat", "ivf", "hnsw"], help="faiss index (default flat)")
    p.add_argument("--ivf-nlist", type=int)
    p.add_argument("--ivf-nprobe", type=int)
    p.add_argument("--hnsw-m", type=int)
    p.add_argument("--hnsw-ef-search", type=int)
    p.add_argument("--max-length", type=int, help="encoder token limit (default: the model's)")
    p.add_argument("--dtype", help="encoder dtype: bfloat16, float16, float32")
    p.add_argument("--query-prefix", help="text prepended to queries (e.g. 'query: ')")
    p.add_argument("--doc-prefix", help="text prepended to passages (e.g. 'passage: ')")
    p.add_argument("--actors", type=int, help="Ray Data encoder actors (0 = in process)")
    p.add_argument("--batch-size", type=int, help="texts per encoder batch (default 64)")
    p.add_argument("--cpus-per-actor", type=float)
    p.add_argument("--gpus-per-actor", type=float)
    p.add_argument("--limit", type=int, help="only the first N queries")
    p.add_argument("--address", help="Ray cluster address (default: a local Ray)")
    p.set_defaults(func=_retrieve)
