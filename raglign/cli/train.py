"""``raglign train``: fine-tune a reranker on mined groups or soft targets with Ray Train."""

from __future__ import annotations

from raglign.cli.recipe import add_recipe_args, job_config

# Flags that set a field of a nested block: flag destination -> dotted config key.
NESTED_FLAGS = {"address": "ray.address", "validation_data": "validation.data",
                "validation_fraction": "validation.fraction",
                "validation_metric": "validation.metric"}


def _train(args) -> int:
    from raglign.pipeline.train import train

    result = train(job_config(args))
    print(f"trained {result.step}/{result.total_steps} steps, final loss {result.final_loss:.4f}")
    if result.export == "base":
        print("model: the STARTING model, unchanged (no trained step beat it on validation)")
    print(f"model: {result.model_dir} (step {result.exported_step}, {result.export})")
    print(f"metrics: {result.output / 'metrics.jsonl'}, curve: {result.output / 'loss_curve.png'}, "
          f"summary: {result.output / 'train_result.json'}")
    if result.step < result.total_steps:
        print("stopped at max_steps: re-run the same command (without --max-steps) to resume")
    return 0


def register(sub) -> None:
    from raglign.training_config import OBJECTIVE_NAMES

    p = sub.add_parser("train", help="fine-tune a cross-/bi-encoder reranker with Ray Train; "
                                     "re-running the same command resumes")
    p.add_argument("data", nargs="?", help="groups or soft-target rows (raglign mine output); "
                                           "canonical rows with candidates for gumbel and rrpo")
    p.add_argument("output", nargs="?", help="run directory: model/, metrics.jsonl, loss_curve.png")
    add_recipe_args(p, "train", example="gumbel.tau=0.5", nested=NESTED_FLAGS,
                    needs={"data": "data", "output": "output"})
    p.add_argument("--model", help="base reranker: short name, directory or hub id (minilm-l6)")
    p.add_argument("--kind", choices=["cross", "bi"], help="cross-encoder (default) or bi-encoder")
    p.add_argument("--objective", choices=list(OBJECTIVE_NAMES),
                   help="loss (default infonce; gumbel: G-Rerank through a frozen LLM, rrpo: "
                        "RL against a frozen reader; options in the YAML's gumbel: / rrpo: "
                        "block; see docs/training.md)")
    p.add_argument("--temperature", type=float,
                   help="score temperature (default 1.0 cross, 0.02 bi); rrpo: the policy's")
    p.add_argument("--beta", type=float, help="REPLUG's LM temperature (default 1.0)")
    p.add_argument("--in-batch-negatives", dest="in_batch_negatives", action="store_const",
                   const=True, help="InfoNCE with all groups' documents as negatives (bi only)")
    p.add_argument("--epochs", type=int, help="default 2")
    p.add_argument("--batch-size", dest="batch_size", type=int,
                   help="groups per optimizer step over all workers (default 16)")
    p.add_argument("--grad-accumulation", dest="grad_accumulation", type=int)
    p.add_argument("--lr", type=float, help="default 6e-5")
    p.add_argument("--max-length", dest="max_length", type=int, help="default 512")
    p.add_argument("--limit", type=int, help="train on the first N rows only")
    p.add_argument("--num-workers", dest="num_workers", type=int,
                   help="Ray Train workers (default 1; 0 = local mode in this process)")
    p.add_argument("--use-gpu", dest="use_gpu", action="store_const", const=True,
                   help="one GPU per worker, bf16 autocast")
    p.add_argument("--max-steps", dest="max_steps", type=int,
                   help="stop after this many optimizer steps (resumable)")
    p.add_argument("--checkpoint-every", dest="checkpoint_every", type=int, help="default 500")
    p.add_argument("--log-every", dest="log_every", type=int,
                   help="steps between metric lines (default: every step below 100 steps)")
    p.add_argument("--validation-data", dest="validation_data",
                   help="canonical rows to validate on (question, candidates with is_gold)")
    p.add_argument("--validation-fraction", dest="validation_fraction", type=float,
                   help="hold out this fraction of the training questions (fixed id hash) "
                        "and validate on them")
    p.add_argument("--validation-metric", dest="validation_metric",
                   help="the metric that picks the exported model (default mrr)")
    p.add_argument("--eval-every", dest="eval_every", type=int,
                   help="steps between validations (default: about 10 per run)")
    p.add_argument("--max-failures", dest="max_failures", type=int,
                   help="worker-group restarts from the last checkpoint (default 3)")
    p.add_argument("--run-name", dest="run_name", help="Ray Train run name (default 'train')")
    p.add_argument("--storage-path", dest="storage_path",
                   help="Ray Train storage (default OUTPUT/ray; shared FS or s3:// on clusters)")
    p.add_argument("--seed", type=int, help="default 42")
    p.add_argument("--address", help="Ray cluster address (default: a private local Ray)")
    p.set_defaults(func=_train)
