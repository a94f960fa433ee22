"""``raglign data``: convert public datasets and corpora to the canonical Parquet format, and
look at the result."""

from __future__ import annotations

import json
import textwrap

from raglign.data import CORPUS_FORMATS, FORMATS, convert, convert_corpus
from raglign.data.io import read_rows
from raglign.data.schema import CANDIDATE_TYPE, SCHEMA
from raglign.errors import ConfigError


def _columns(pairs: list[str] | None) -> dict[str, str]:
    out = {}
    for pair in pairs or []:
        target, sep, column = pair.partition("=")
        if not sep or not target or not column:
            raise ConfigError(f"--column {pair!r}: expected TARGET=COLUMN, e.g. question=query")
        out[target] = column
    return out


def _convert(args) -> int:
    opts = {}
    if args.split is not None:
        opts["split"] = args.split
    if args.format == "hf":
        opts.update(columns=_columns(args.column), hf_split=args.hf_split, hf_config=args.hf_config)
    elif args.column or args.hf_split or args.hf_config:
        raise ConfigError("--column, --hf-split and --hf-config apply to --format hf only")
    print(convert(args.format, args.input, args.output_dir, skip_invalid=args.skip_invalid,
                  limit=args.limit, **opts))
    return 0


def _corpus(args) -> int:
    print(convert_corpus(args.format, args.input, args.output_dir,
                         skip_invalid=args.skip_invalid, limit=args.limit))
    return 0


def _short(text: str | None, width: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _show(args) -> int:
    rows = read_rows(args.dir, limit=args.n)
    for i, row in enumerate(rows, 1):
        if "question" not in row:  # a corpus
            print(f"[{i}] {row['doc_id']}  {row.get('title') or ''}")
            print(textwrap.indent(textwrap.fill(_short(row["text"], args.width), 100), "    "))
            continue
        print(f"[{i}] id: {row['id']}")
        print(f"    question: {row['question']}")
        print(f"    answers:  {json.dumps(row['answers'], ensure_ascii=False)}")
        if row.get("choices") is not None:
            for letter, choice in zip("ABCDEFGHIJ", row["choices"]):
                print(f"      {letter}. {_short(choice, args.width)}")
        print(f"    meta:     {_short(row.get('meta'), 300)}")
        for k, v in row.items():
            if k not in SCHEMA.names:
                print(f"    {k}: {_short(json.dumps(v, ensure_ascii=False, default=str), args.width)}")
        cands = row.get("candidates") or []
        print(f"    candidates: {len(cands)}")
        for j, c in enumerate(cands):
            score = "-" if c.get("score") is None else f"{c['score']:.4g}"
            gold = {True: "GOLD", False: "", None: "?"}[c.get("is_gold")]
            extra = "  ".join(f"{k}={v}" for k, v in c.items()
                              if k not in CANDIDATE_TYPE.names and v is not None)
            print(f"      {j:>3} {gold:4s} score={score:8s} {c['doc_id']}  [{c.get('title') or ''}]"
                  + (f"  {extra}" if extra else ""))
            print(f"          {_short(c['text'], args.width)}")
        print()
    return 0


def register(sub) -> None:
    p = sub.add_parser("data", help="convert datasets and corpora to raglign's Parquet format")
    s = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    c = s.add_parser("convert", help="convert a QA dataset to canonical rows (one per query)",
                     description="Formats: " + "; ".join(f"{n}: {f.help}" for n, f in FORMATS.items()))
    c.add_argument("--format", required=True, choices=list(FORMATS))
    c.add_argument("input", help="input file or directory (or a datasets id for --format hf)")
    c.add_argument("output_dir", help="directory for part-*.parquet, _summary.json, _rejects.jsonl")
    c.add_argument("--skip-invalid", action="store_true",
                   help="write bad records to OUTPUT_DIR/_rejects.jsonl instead of stopping")
    c.add_argument("--limit", type=int, help="stop after this many converted rows")
    c.add_argument("--split", help="split name recorded in meta; for mmlu, also selects the files "
                   "<subject>_<split>.csv")
    c.add_argument("--column", action="append", metavar="TARGET=COLUMN",
                   help="hf: map a canonical field (id, question, answers, choices, candidates) "
                   "to a dataset column; repeatable")
    c.add_argument("--hf-split", help="hf: the datasets split to load (default: the split named "
                   "--split if the dataset has one, else its only split)")
    c.add_argument("--hf-config", help="hf: the dataset configuration name")
    c.set_defaults(func=_convert)

    k = s.add_parser("corpus", help="convert a passage collection to a corpus (doc_id, title, text)")
    k.add_argument("--format", required=True, choices=list(CORPUS_FORMATS))
    k.add_argument("input")
    k.add_argument("output_dir")
    k.add_argument("--skip-invalid", action="store_true")
    k.add_argument("--limit", type=int, help="stop after this many documents")
    k.set_defaults(func=_corpus)

    w = s.add_parser("show", help="print a few rows of a converted dataset or corpus")
    w.add_argument("dir")
    w.add_argument("-n", type=int, default=3, help="rows to show (default 3)")
    w.add_argument("--width", type=int, default=160, help="truncate texts to this many characters")
    w.set_defaults(func=_show)
