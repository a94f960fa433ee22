"""The ``raglign`` command line: thin argparse front ends over the Python API.

Each module in this package that defines ``register(subparsers)`` contributes its subcommands
(``data``, ``retrieve``, ``label`` …); discovery keeps the modules independent of each other.
Errors raglign anticipates (bad data, bad configs) print one clear message and exit with 2,
with the next step where raglign knows it: the closest valid name for a typo, the command that
makes a missing input. ``--verbose`` (before or after the subcommand) keeps Ray's own output on
the terminal.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from raglign import __version__, console
from raglign.errors import MissingInputError, RaglignError, did_you_mean

VERBOSE_HELP = ("show Ray's own logs, Ray Data's progress tables and Ray's worker output here "
                "instead of in the run's ray.log")

# command → the next step when the dataset it reads is missing: the command that makes it.
MADE_BY = {
    "data": "run `raglign data convert` (questions) or `raglign data corpus` (passages) "
            "first: they make this directory",
    "retrieve": "run `raglign data convert` first for the queries, `raglign data corpus` for "
                "the corpus",
    "label": "run `raglign retrieve` first: it makes the rows with candidates that labelling "
             "reads (or `raglign data convert`, for a dataset that ships its candidates, "
             "like HotpotQA's distractor setting)",
    "eval": "run `raglign retrieve` first: it makes the rows with candidates that eval ranks "
            "(or `raglign data convert`, for a dataset that ships its candidates)",
    "mine": "run `raglign label` first: it makes the labelled rows this command reads",
    "signals-eval": "run `raglign label` first: it makes the labelled rows this command reads",
    "grerank": "run `raglign retrieve` or `raglign data convert` first (rows with "
               "candidates); `grerank report` reads the labelled rows of `raglign label`",
    "report": "run `raglign eval DATA --output RUN.json` first: it writes the report this "
              "command compares",
    "train": "run `raglign mine` first: it makes the training groups and targets (gumbel and "
             "rrpo train on rows with candidates, from `raglign retrieve` or `raglign data "
             "convert`)",
}


class Parser(argparse.ArgumentParser):
    """argparse with the closest valid names added to an invalid choice (a subcommand, a
    ``--targets`` value), as recipes get them."""

    def _check_value(self, action: argparse.Action, value: object) -> None:
        if action.choices is not None and value not in action.choices:
            shown = ", ".join(repr(c) for c in action.choices)
            raise argparse.ArgumentError(action, f"invalid choice: {value!r}"
                                         f"{did_you_mean(value, action.choices)} "
                                         f"(choose from {shown})")
        super()._check_value(action, value)


def with_next_step(error: RaglignError, command: str | None) -> RaglignError:
    """``error`` with the command that makes a missing input, when ``command`` reads one."""
    if isinstance(error, MissingInputError) and command in MADE_BY and not error.hint:
        return error.with_hint(MADE_BY[command])
    return error


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="raglign",
        description="Align a RAG reranker with what its generator LLM needs: relabel corpora "
        "with LLM feedback on Ray, train rerankers on it, evaluate end to end.",
    )
    parser.add_argument("--version", action="version", version=f"raglign {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "register"):
            module.register(sub)
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    _accept_verbose_after_subcommands(parser)
    return parser


def _accept_verbose_after_subcommands(parser: argparse.ArgumentParser) -> None:
    """Let ``--verbose`` follow any (sub)subcommand too (``raglign label ... --verbose``);
    SUPPRESS keeps a subcommand from resetting a ``--verbose`` given before it."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                sub.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                                 help=VERBOSE_HELP)
                _accept_verbose_after_subcommands(sub)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    console.set_verbose(args.verbose)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(args.func(args) or 0)
    except RaglignError as e:
        print(f"raglign: error: {with_next_step(e, args.command)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("raglign: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
