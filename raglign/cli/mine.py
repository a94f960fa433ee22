"""``raglign mine``: training groups (RADIO's top-k shifted by N), distillation soft targets or
EMDR / REPLUG log-probability rows from a labelled directory."""

from __future__ import annotations

import argparse

from raglign.cli.recipe import add_recipe_args, job_config


def _ranks(text: str) -> list[int]:
    """``--fixed-ranks 3,4,6`` as a list; a non-integer is a usage error, as argparse's own."""
    try:
        return [int(r) for r in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, e.g. 3,4,6; got "
                                         f"{text!r}") from None


def _mine(args) -> int:
    from raglign.pipeline.mine import run_mine

    run_mine(job_config(args))
    return 0


def register(sub) -> None:
    p = sub.add_parser("mine", help="labelled candidates → training groups, soft targets or "
                                    "LM log-probability rows")
    p.add_argument("input", nargs="?", help="a labelled directory (raglign label output)")
    p.add_argument("output", nargs="?", help="where part-00000.parquet and _summary.json go")
    add_recipe_args(p, "mine", example="descending=true",
                    needs={"input": "input", "output": "output"})
    p.add_argument("--signal", help="candidate field to rank by → InfoNCE groups")
    p.add_argument("--n", type=int, help="shift: negatives come from ranks >= n (default 3)")
    p.add_argument("--m", type=int, help="negatives per group (default 6)")
    p.add_argument("--seed", type=int, help="sampling seed shared by all methods (default 42)")
    p.add_argument("--fixed-ranks", dest="fixed_ranks", type=_ranks,
                   help="fixed negative rank positions, e.g. 3,4,6,9,13,18 (RADIO's code)")
    p.add_argument("--alpha", type=float, help="mix the signal with the retrieval score")
    p.add_argument("--targets", choices=["pdist", "loop", "adist", "replug"],
                   help="soft targets instead of groups")
    p.add_argument("--lm-logprobs", dest="lm_logprobs", action="store_const", const=True,
                   help="rows of raw answer_logprob per candidate (lm_logprob) for the emdr and "
                        "replug objectives, instead of groups")
    p.add_argument("--temperature", type=float, help="target temperature (default 0.01)")
    p.add_argument("--k", type=int, help="targets / lm_logprob rows over the first k "
                                         "candidates (default all)")
    p.add_argument("--limit", type=int, help="only the first N rows")
    p.set_defaults(func=_mine)
