"""``raglign grerank train``: G-Rerank reranker training (Algorithm 1) on Ray Train.

Every worker holds the frozen generator (through the parallel-prefill
:class:`~raglign.engine.DocumentEngine`) and the reranker being trained. A step takes a global
batch of questions (a seeded permutation per epoch; worker r takes every W-th question of it),
prefills their first ``n`` candidates once without grad, scores the candidates with the
reranker, draws a relaxed top-k Gumbel mask and back-propagates the gold answer's NLL under
masked attention into the reranker alone (:func:`raglign.objectives.gumbel.gumbel_lm_loss`).
The reranker is routed through the trainer's DDP wrapper so gradients are averaged across
workers. Inference needs nothing of this: the saved reranker ranks, the generator reads the
hard top-k.

Memory per worker is the frozen LLM, one batch of document caches (B·n documents' keys and
values per layer) and the reranker's activations for B·n pairs; every step reports the process's
peak RSS so a run states what it needed. This entry point keeps no intermediate checkpoints
(training on the mining-size data sets here takes minutes); the final model is written as the
other objectives' are (``Reranker.save``: a CrossEncoder / SentenceTransformer directory).
"""

from __future__ import annotations

import json
import random
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Literal

from pydantic import Field, PositiveInt

from raglign.config import JobConfig, dump_yaml
from raglign.errors import DataError


class GumbelTrainConfig(JobConfig):
    """Algorithm 1's settings (paper: τ 0.5, κ 1.0, k = the generator's k2 = 5, n = k1 = 20)."""

    job: Literal["grerank-train"] = "grerank-train"
    data: str = Field(description="canonical rows with candidates and answers")
    output: str
    model: str = "minilm-l6"
    kind: Literal["cross", "bi"] = "cross"
    max_length: PositiveInt | None = 256
    generator: str = "smollm2-135m"
    generator_dtype: str = "auto"
    n: PositiveInt = Field(20, description="candidates per question (the first n; fewer if absent)")
    k: PositiveInt = 5
    tau: float = Field(0.5, gt=0)
    kappa: float = Field(1.0, gt=0)
    noise: bool = True
    samples: PositiveInt = 1
    batch_size: PositiveInt = 2
    lr: float = Field(2e-5, gt=0)
    epochs: PositiveInt = 1
    max_steps: PositiveInt | None = None
    seed: int = 0
    answer_alias: Literal["best", "first"] = "best"
    limit: PositiveInt | None = None
    num_workers: PositiveInt = 1
    cpus_per_worker: float = Field(1.0, gt=0)
    use_gpu: bool = False
    torch_threads: PositiveInt | None = None


def load_examples(cfg: GumbelTrainConfig) -> list[dict]:
    """``{"id", "question", "answer", "docs": [(title, text)]}`` per usable row (first n docs)."""
    from raglign.data.io import read_rows
    from raglign.pipeline.label import prepare_item
    from raglign.signals.base import Item

    out = []
    for row in read_rows(cfg.data, limit=cfg.limit):
        item = prepare_item(row, cfg.answer_alias)
        if isinstance(item, Item):
            out.append({"id": row["id"], "question": item.question, "answer": item.answer,
                        "docs": item.docs[:cfg.n]})
    if len(out) < cfg.batch_size:
        raise DataError(cfg.data, None, "candidates", f"{len(out)} rows with candidates and an "
                        f"answer, fewer than one batch (batch_size {cfg.batch_size})")
    return out


def peak_rss_mib() -> float:
    """This process's peak resident set size (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train_loop_per_worker(loop_config: dict) -> None:
    import ray.train
    import ray.train.torch
    import torch

    from raglign.engine import DocumentEngine
    from raglign.models.generator import TransformersGenerator
    from raglign.models.rerankers import doc_text, load_reranker
    from raglign.objectives.gumbel import gumbel_lm_loss, max_mask_weight
    from raglign.pipeline.train import _scorer_class

    cfg = GumbelTrainConfig.model_validate(loop_config["config"])
    examples = loop_config["examples"]
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    gen = TransformersGenerator.from_name(cfg.generator, dtype=cfg.generator_dtype,
                                          device=str(device))
    engine = DocumentEngine(gen.model, gen.tokenizer)  # frozen: requires_grad_(False)
    torch.manual_seed(cfg.seed)  # the same (seeded) head on every worker
    reranker = load_reranker(cfg.model, kind=cfg.kind, max_length=cfg.max_length,
                             device=device).train()
    model = ray.train.torch.prepare_model(
        _scorer_class()(reranker, False),
        parallel_strategy_kwargs={"find_unused_parameters": True} if cfg.kind == "bi" else {})
    optimizer = torch.optim.AdamW(reranker.parameters(), lr=cfg.lr)
    noise = torch.Generator().manual_seed(cfg.seed + 7919 * (rank + 1))
    per_epoch = len(examples) // cfg.batch_size
    total = per_epoch * cfg.epochs if cfg.max_steps is None else min(cfg.max_steps,
                                                                     per_epoch * cfg.epochs)
    history = []
    for step in range(total):
        epoch, b = divmod(step, per_epoch)
        perm = list(range(len(examples)))
        random.Random(cfg.seed * 1000 + epoch).shuffle(perm)
        batch = [examples[i] for i in perm[b * cfg.batch_size:(b + 1) * cfg.batch_size][rank::world]]
        t0 = time.perf_counter()
        caches = engine.prepare_many([e["question"] for e in batch], [e["docs"] for e in batch])
        n = max(len(e["docs"]) for e in batch)
        texts = [[doc_text(t, x) for t, x in e["docs"]] + [""] * (n - len(e["docs"]))
                 for e in batch]
        valid = torch.tensor([[i < len(e["docs"]) for i in range(n)] for e in batch])
        scores = model([e["question"] for e in batch], texts)
        loss = gumbel_lm_loss(engine, caches, [e["answer"] for e in batch], scores.float(), cfg.k,
                              cfg.tau, cfg.kappa, cfg.noise, noise, valid.to(scores.device),
                              cfg.samples)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            masked = scores.detach().float().cpu().masked_fill(~valid, float("-inf"))
        metrics = {"step": step + 1, "total_steps": total, "loss": float(loss.detach()),
                   "max_weight": float(max_mask_weight(masked)), "n": n,
                   "step_seconds": round(time.perf_counter() - t0, 3),
                   "peak_rss_mib": round(peak_rss_mib(), 1),
                   "cache_mib": round(sum(c.nbytes() for c in caches) / 2**20, 1)}
        history.append(metrics)
        if rank == 0:
            print(f"[grerank train] step {step + 1}/{total} loss {metrics['loss']:.4f} max weight "
                  f"{metrics['max_weight']:.3f} peak RSS {metrics['peak_rss_mib']:.0f} MiB "
                  f"({metrics['step_seconds']:.1f}s)", flush=True)
        if step + 1 == total:
            tmp = Path(tempfile.mkdtemp(prefix="raglign-grerank-"))
            if rank == 0:
                reranker.save(tmp / "model", model_card=model_card(cfg, len(examples), total))
                (tmp / "history.json").write_text(json.dumps(history))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)


def model_card(cfg: GumbelTrainConfig, n_rows: int, steps: int) -> str:
    return (f"# G-Rerank reranker ({cfg.kind}-encoder from {cfg.model})\n\n"
            f"Trained end to end through the frozen generator `{cfg.generator}` with Gumbel "
            f"relaxed top-{cfg.k} masks over {cfg.n} candidates (tau {cfg.tau}, kappa {cfg.kappa}, "
            f"noise {cfg.noise}) by raglign: {steps} steps of batch {cfg.batch_size} over "
            f"{n_rows} questions from `{cfg.data}`.\n\n```yaml\n{dump_yaml(cfg)}```\n")


def train_gumbel(cfg: GumbelTrainConfig) -> dict:
    """Run the job; writes ``OUTPUT/model``, ``metrics.json`` and ``train_config.yaml``."""
    from raglign.ray_session import ray_session

    examples = load_examples(cfg)
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_config.yaml").write_text(dump_yaml(cfg))
    with ray_session(cfg.ray):
        import ray.train
        from ray.train.torch import TorchTrainer

        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"config": cfg.model_dump(mode="json"), "examples": examples},
            scaling_config=ray.train.ScalingConfig(
                num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                resources_per_worker={"CPU": cfg.cpus_per_worker}),
            run_config=ray.train.RunConfig(name=f"grerank-{out.name}",
                                           storage_path=str(out.resolve() / "ray_results")))
        result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError("training ended without a final checkpoint")
    with result.checkpoint.as_directory() as ckpt:
        if (out / "model").exists():
            shutil.rmtree(out / "model")
        shutil.copytree(Path(ckpt) / "model", out / "model")
        history = json.loads((Path(ckpt) / "history.json").read_text())  # rank 0's steps
    summary = {"model": str(out / "model"), "rows": len(examples), "history": history,
               "peak_rss_mib": max(h["peak_rss_mib"] for h in history)}
    (out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
