"""``raglign label``: LLM-feedback labelling of candidates; ``raglign signals-eval``: how well
each signal of a labelled directory finds the gold documents."""

from __future__ import annotations

import json

from raglign.cli.recipe import add_generator_args, add_recipe_args, job_config


def _signals(text: str) -> list[str]:
    """``--signals rationale_score,answer_logprob`` as the list a recipe's ``signals:`` holds."""
    return [s.strip() for s in text.split(",") if s.strip()]


def _label(args) -> int:
    from raglign.pipeline.label import run_label

    run_label(job_config(args))
    return 0


def _signals_eval(args) -> int:
    from raglign.evaluate.signals import to_markdown, write_signal_eval

    ks = [int(k) for k in args.ks.split(",")]
    signals = args.signals.split(",") if args.signals else None
    result = write_signal_eval(args.dir, signals, ks)
    print(json.dumps(result, indent=2) if args.json else to_markdown(result), end="")
    return 0


def register(sub) -> None:
    p = sub.add_parser("label", help="label every candidate with LLM-feedback signals (Ray Data)",
                       description="Label candidates with LLM signals; resumable: re-run the same "
                       "command to finish an interrupted job.")
    p.add_argument("input", nargs="?", metavar="input_dir",
                   help="canonical Parquet rows with candidates")
    p.add_argument("output", nargs="?", metavar="output_dir",
                   help="where part-*.parquet, _summary.json go")
    generator = add_generator_args(p)
    add_recipe_args(p, "label", example="rationale.alpha=0.3",
                    nested={"address": "ray.address", **generator},
                    needs={"input": "input_dir", "output": "output_dir"})
    p.add_argument("--signals", type=_signals, help="comma-separated: rationale_score, "
                   "answer_logprob, loo_logprob, attention, judge, answer_quality, dpa")
    p.add_argument("--encoder", help="sentence encoder for rationale_score (default minilm-l6)")
    p.add_argument("--context", choices=["parallel", "concat"])
    p.add_argument("--answer-alias", dest="answer_alias", choices=["best", "first"])
    p.add_argument("--limit", type=int, help="label only the first N rows")
    p.add_argument("--actors", type=int, help="size of the labelling actor pool")
    p.add_argument("--batch-size", dest="batch_size", type=int, help="rows per actor call")
    p.add_argument("--shard-rows", dest="shard_rows", type=int,
                   help="rows per output partition (the unit of resumption; default: two "
                   "per actor, at most 256; a resumed job keeps its own)")
    p.add_argument("--cpus-per-actor", dest="cpus_per_actor", type=float)
    p.add_argument("--gpus-per-actor", dest="gpus_per_actor", type=float)
    p.add_argument("--torch-threads", dest="torch_threads", type=int)
    p.add_argument("--address", help="Ray cluster address (default: a private local Ray)")
    p.set_defaults(func=_label)

    e = sub.add_parser("signals-eval", help="Recall@k / NDCG@k / MRR of each signal at finding "
                       "the gold documents of a labelled directory")
    e.add_argument("dir", help="a labelled directory (output of raglign label)")
    e.add_argument("--signals", help="comma-separated signal fields (default: all present)")
    e.add_argument("--ks", default="1,2,5,10", help="cut-offs, comma-separated")
    e.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    e.set_defaults(func=_signals_eval)
