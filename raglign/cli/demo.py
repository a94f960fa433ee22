"""``raglign demo``: label, train and evaluate RADIO and PDist rerankers on a small real dataset."""

from __future__ import annotations

from raglign.cli.recipe import add_generator_args, add_recipe_args, job_config


def _demo(args) -> int:
    from raglign.pipeline.demo import run_demo

    run_demo(job_config(args))
    return 0


def register(sub) -> None:
    p = sub.add_parser("demo", help="the main job: label HotpotQA with RADIO and PDist, train "
                       "rerankers on Ray, compare them with the base on held-out questions")
    generator = add_generator_args(p, what="the reader that labels and answers (default "
                                   "smollm2-135m, offline)")
    add_recipe_args(p, "demo", example="test_fraction=0.3",
                    nested={"address": "ray.address", **generator})
    p.add_argument("--input", help="HotpotQA distractor JSON (default: ../shared/data/hotpotqa/"
                   "hotpotqa_train.json or $RAGLIGN_SHARED_DATA)")
    p.add_argument("--output", help="run directory (default runs/demo); re-running resumes")
    p.add_argument("--limit", type=int, help="use only the first N questions")
    p.add_argument("--actors", type=int, help="Ray Data actors for labelling and evaluation")
    p.add_argument("--gpus-per-actor", dest="gpus_per_actor", type=float,
                   help="GPUs per actor (fractions share a GPU; default 0)")
    p.add_argument("--no-generate", dest="generate", action="store_const", const=False,
                   help="skip the generator setting")
    p.add_argument("--address", help="Ray cluster address (default: a private local Ray)")
    p.set_defaults(func=_demo)
