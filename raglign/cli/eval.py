"""``raglign eval`` and ``raglign report``: evaluate rerankers end to end; compare runs."""

from __future__ import annotations

from raglign import storage
from raglign.cli.recipe import add_generator_args, add_recipe_args, job_config


def _eval(args) -> int:
    from raglign.pipeline.evaluate import evaluate

    evaluate(job_config(args))
    return 0


def _report(args) -> int:
    from raglign.evaluate.report import bar_plot, load_runs, markdown_table

    runs = load_runs(args.runs)
    table = markdown_table(runs)
    print(table)
    if args.output:  # a file or a storage URI; the plot goes beside it
        out = args.output
        png = bar_plot(runs, storage.with_suffix(out, ".png"))
        storage.write_text(out, f"# raglign comparison\n\n{table}\n\n"
                                f"![runs]({storage.name(png)})\n")
        print(f"wrote {out} and {png}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("eval", help="rank candidates with a reranker (or a signal) and evaluate "
                       "retrieval metrics and, with --generator, end-to-end QA")
    p.add_argument("data", nargs="?", help="canonical dataset directory (rows with candidates)")
    generator = add_generator_args(p, what="the generator setting's reader")
    add_recipe_args(p, "eval", example="ks=[1,5,10]",
                    nested={"address": "ray.address", **generator},
                    needs={"data": "data", "output": "--output"})
    p.add_argument("--output", help="report JSON path (a .rows.parquet and .md go beside it)")
    p.add_argument("--reranker", help="reranker name or path; 'none' keeps the retrieval order, "
                   "'oracle' puts the gold documents first (the ceiling of any reranker)")
    p.add_argument("--reranker-kind", choices=["cross", "bi"])
    p.add_argument("--rank-by", help="rank by a candidate field instead (mining setting), in "
                   "the direction its signal declares (loo_logprob lowest first; nulls last)")
    p.add_argument("--k", type=int, help="documents to the generator and @k (default 5)")
    p.add_argument("--k1", type=int, help="candidates the reranker sees (default 20)")
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--limit", type=int)
    p.add_argument("--split", help="only rows whose meta.split is this")
    p.add_argument("--category-key", help="meta key for the per-category breakdown")
    p.add_argument("--actors", type=int, help="Ray Data actors per model stage")
    p.add_argument("--gpus-per-actor", dest="gpus_per_actor", type=float,
                   help="GPUs per actor (fractions share a GPU; default 0)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--name", help="run name in reports")
    p.add_argument("--address", help="Ray cluster address (default: a local Ray)")
    p.set_defaults(func=_eval)

    r = sub.add_parser("report", help="compare eval runs: Markdown table (+ PNG with --output)")
    r.add_argument("runs", nargs="+", help="JSON reports written by raglign eval")
    r.add_argument("--output", help="Markdown file to write; the plot goes beside it")
    r.set_defaults(func=_report)
