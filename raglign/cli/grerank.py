"""``raglign grerank``: G-Rerank's mining signal (Algorithm 2), its report and the Gumbel ablation.

* ``mine-weights DATA OUT --generator NAME [--baselines]`` — a labelling job (Ray Data, resumable;
  :mod:`raglign.pipeline.label`) writing the ``gumbel_weight`` signal per candidate, optionally
  with the lowest-perplexity, attention and leave-one-out baselines from the same prefill, then
  the comparison table ``_grerank_mining.{json,md}``. ``raglign eval --rank-by gumbel_weight``
  evaluates the output like any other signal.
* ``report DIR`` — that table again for a labelled directory.
* ``ablation DATA OUT --generator NAME`` — max mask weight per step with and without the Gumbel
  noise (``ablation.json`` + ``ablation.png``).

Training a reranker with the G-Rerank loss (Algorithm 1) is ``raglign train`` with
``objective: gumbel`` (jobs/train_grerank_hotpotqa.yaml).
"""

from __future__ import annotations

import json

from raglign.cli.recipe import Recipe, add_generator_args, flag_values, load_recipe
from raglign.errors import ConfigError

BASELINE_SIGNALS = ["answer_logprob", "attention", "loo_logprob"]
# G-Rerank reads the generator's attention and backpropagates through it (docs/grerank.md).
TRANSFORMERS_ONLY = ("the ablation runs Algorithm 2, which needs gradients through the "
                     "model's attention")
_OPTION_FLAGS = ("steps", "lr", "k", "tau", "kappa", "samples", "seed", "init", "init_std")


def _options(args) -> dict:
    out = {f: getattr(args, f) for f in _OPTION_FLAGS if getattr(args, f, None) is not None}
    if args.no_noise:
        out["noise"] = False
    return out


def _ks(text: str) -> list[int]:
    try:
        ks = [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        raise ConfigError(f"--ks {text!r}: expected comma-separated integers, e.g. 2,5") from None
    if not ks or any(k < 1 for k in ks):
        raise ConfigError(f"--ks {text!r}: expected positive integers")
    return ks


def _mine(args) -> int:
    from raglign.gumbel.report import to_markdown, write_mining_report
    from raglign.pipeline.label import run_label

    signals = ["gumbel_weight"] + (BASELINE_SIGNALS if args.baselines else [])
    fields = {"input": args.data, "output": args.out, "signals": signals,
              "gumbel": _options(args), "loo": {"k": args.loo_k}, "context": "parallel"}
    label = Recipe("label", {"address": "ray.address", **args.generator_flags})
    run_label(load_recipe("label", flags={**fields, **flag_values(args, label)},
                          needs={"generator": "--generator"}))
    report = write_mining_report(args.out, signals, _ks(args.ks))
    print(to_markdown(report), end="")
    return 0


def _report(args) -> int:
    from raglign.gumbel.report import to_markdown, write_mining_report

    signals = args.signals.split(",") if args.signals else None
    try:
        report = write_mining_report(args.dir, signals, _ks(args.ks))
    except ValueError as e:
        raise ConfigError(f"{args.dir}: {e}") from None
    print(json.dumps(report, indent=2) if args.json else to_markdown(report), end="")
    return 0


def _ablation(args) -> int:
    from raglign.config import validate
    from raglign.data.io import read_rows
    from raglign.engine import DocumentEngine
    from raglign.gumbel.ablation import run_ablation, write_ablation
    from raglign.gumbel.options import SamplingWeightOptions
    from raglign.models.generator_spec import FLAG_FIELDS, GeneratorSpec, build_generator
    from raglign.signals.items import Item, prepare_item

    options = validate(SamplingWeightOptions, {"init": "normal", **_options(args)},
                       "command line")
    if args.generator is None:
        raise ConfigError("`raglign grerank ablation` needs --generator")
    given = {field: getattr(args, flag) for flag, field in FLAG_FIELDS.items()
             if getattr(args, flag) is not None}
    spec = validate(GeneratorSpec, given, "command line")
    try:
        spec.require_transformers(TRANSFORMERS_ONLY)
    except ValueError as e:
        raise ConfigError(f"--backend: {e}") from None
    rows = read_rows(args.data, limit=args.limit)
    items = [it for it in (prepare_item(r, "best") for r in rows) if isinstance(it, Item)]
    if not items:
        raise ConfigError(f"{args.data}: no row has both candidates and an answer")
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    gen = build_generator(spec)
    result = run_ablation(DocumentEngine(gen.model, gen.tokenizer), items, options)
    result["generator"] = spec.name
    paths = write_ablation(result, args.out)
    print(json.dumps({"uniform": result["uniform"],
                      "with_noise_final": result["with_noise"]["mean"][-1],
                      "without_noise_final": result["without_noise"]["mean"][-1], **paths},
                     indent=2))
    return 0


def _add_options(p, init_default: str) -> None:
    g = p.add_argument_group("Algorithm 2 (paper: tau 0.5, kappa 1.0, k 5)")
    g.add_argument("--steps", type=int, help="Adam steps per question (default 30)")
    g.add_argument("--lr", type=float, help="Adam learning rate (default 0.1)")
    g.add_argument("--k", type=int, help="subset size k (default 5)")
    g.add_argument("--tau", type=float)
    g.add_argument("--kappa", type=float)
    g.add_argument("--samples", type=int, help="Gumbel masks averaged per step (default 1)")
    g.add_argument("--seed", type=int)
    g.add_argument("--init", choices=["zeros", "normal"], help=f"initial weights ({init_default})")
    g.add_argument("--init-std", dest="init_std", type=float)
    g.add_argument("--no-noise", dest="no_noise", action="store_true",
                   help="drop the Gumbel noise (the paper's ablation)")


def register(sub) -> None:
    p = sub.add_parser("grerank", help="G-Rerank: Algorithm 2 mining weights, report, ablation")
    gsub = p.add_subparsers(dest="grerank_command", metavar="SUBCOMMAND", required=True)

    m = gsub.add_parser("mine-weights", help="learn Algorithm 2 weights per candidate (Ray Data)",
                        description="Label every candidate with G-Rerank's learnable sampling "
                        "weight (field gumbel_weight); resumable like raglign label.")
    m.add_argument("data", help="canonical Parquet rows with candidates and answers")
    m.add_argument("out", help="output directory (labelled rows + reports)")
    m.set_defaults(generator_flags=add_generator_args(m, what="frozen LLM"))
    m.add_argument("--baselines", action="store_true", help="also label answer_logprob, "
                   "attention and loo_logprob (the paper's Figure-5 baselines)")
    m.add_argument("--loo-k", dest="loo_k", type=int, default=20,
                   help="leave-one-out over the first K candidates (default 20: all of them)")
    m.add_argument("--ks", default="2,5", help="Recall@k cut-offs of the report (default 2,5)")
    for flag, kw in (("--limit", {"type": int}), ("--shard-rows", {"type": int}),
                     ("--batch-size", {"type": int}),
                     ("--actors", {"type": int}), ("--gpus-per-actor", {"type": float}),
                     ("--torch-threads", {"type": int}), ("--cpus-per-actor", {"type": float}),
                     ("--answer-alias", {"choices": ["best", "first"]}), ("--address", {})):
        m.add_argument(flag, dest=flag[2:].replace("-", "_"), **kw)
    _add_options(m, "zeros")
    m.set_defaults(func=_mine)

    r = gsub.add_parser("report", help="mining table with bootstrap CIs for a labelled directory")
    r.add_argument("dir")
    r.add_argument("--signals", help="comma-separated fields (default: those present)")
    r.add_argument("--ks", default="2,5")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=_report)

    a = gsub.add_parser("ablation", help="max mask weight per step with/without Gumbel noise")
    a.add_argument("data", help="canonical Parquet rows with candidates and answers")
    a.add_argument("out", help="directory for ablation.json and ablation.png")
    add_generator_args(a, what="frozen LLM (transformers backend)")
    a.add_argument("--limit", type=int, default=4, help="questions (default 4)")
    a.add_argument("--torch-threads", dest="torch_threads", type=int)
    _add_options(a, "normal")
    a.set_defaults(func=_ablation)
