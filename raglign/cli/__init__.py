"""The ``raglign`` command line: thin argparse front ends over the Python API.

Each module in this package that defines ``register(subparsers)`` contributes its subcommands
(``data``, ``retrieve``, ``label`` …); discovery keeps the modules independent of each other.
Errors raglign anticipates (bad data, bad configs) print one clear message and exit with 2.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from raglign import __version__
from raglign.errors import RaglignError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(args.func(args) or 0)
    except RaglignError as e:
        print(f"raglign: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("raglign: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
