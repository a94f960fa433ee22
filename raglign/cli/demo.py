"""``raglign demo``: label, train and evaluate RADIO and PDist rerankers on a small real dataset."""

from __future__ import annotations


def _demo(args) -> int:
    from raglign.config import load_job, validate
    from raglign.pipeline.demo import DemoConfig, run_demo

    if args.config:
        cfg = load_job(args.config)
    else:
        fields = {k: v for k, v in (("input", args.input), ("output", args.output),
                                    ("generator", args.generator), ("limit", args.limit))
                  if v is not None}
        if args.no_generate:
            fields["generate"] = False
        if args.address:
            fields["ray"] = {"address": args.address}
        cfg = validate(DemoConfig, {"job": "demo", **fields}, "command line")
    run_demo(cfg)
    return 0


def register(sub) -> None:
    p = sub.add_parser("demo", help="the main job: label HotpotQA with RADIO and PDist, train "
                       "rerankers on Ray, compare them with the base on held-out questions")
    p.add_argument("--config", help="a demo job YAML (jobs/demo.yaml)")
    p.add_argument("--input", help="HotpotQA distractor JSON (default: ../shared/data/hotpotqa/"
                   "hotpotqa_train.json or $RAGLIGN_SHARED_DATA)")
    p.add_argument("--output", help="run directory (default runs/demo); re-running resumes")
    p.add_argument("--generator", help="generator LLM (default smollm2-135m, offline)")
    p.add_argument("--limit", type=int, help="use only the first N questions")
    p.add_argument("--no-generate", action="store_true", help="skip the generator setting")
    p.add_argument("--address", help="Ray cluster address (default: a private local Ray)")
    p.set_defaults(func=_demo)
