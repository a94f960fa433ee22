"""``raglign train``: fine-tune a reranker with Ray Train (DDP) on mined groups or soft targets,
or end to end through a frozen generator (``objective: gumbel``, :mod:`.train_gumbel`).

Flow: the driver reads and validates the training rows (errors name file, record and field
before any worker starts), puts them once into the object store as an Arrow table, and runs a
``TorchTrainer``; every worker builds the reranker, wraps it with ``prepare_model`` (DDP, gloo on
CPU / NCCL on GPU) and walks the same seeded permutation of the rows. At the end the driver
copies the model out of the last checkpoint and writes the metrics and a loss curve.

Why the data are not a Ray Data stream: training sets here are small (RADIO: 20k queries), and
resuming must continue the *same* data order from step K. A seeded per-epoch permutation over an
in-memory table gives that exactly, where a streaming split hands blocks to workers in whatever
order they finish. Global batch b of epoch e is ``perm_e[b*B:(b+1)*B]``; worker r's micro-batch
a is its slice ``(a*W + r)*mb …`` (W workers, mb = B / (W * accumulation)), so the update of a
step is the same whatever W is.

Checkpoints (every ``checkpoint_every`` steps, at ``max_steps`` and at the end) hold the model,
optimizer, scheduler, step, metrics so far and every rank's RNG state (dropout), reported with
``ray.train.report``; Ray Train merges the ranks' files into one directory. Re-running with the
same ``run_name``/``storage_path`` makes ``ray.train.get_checkpoint()`` return the latest one
and training continues at its step with the same data order and optimizer state
(tests/test_train.py: a 2-worker run stopped at ``max_steps`` and resumed ends with the weights
and losses of an uninterrupted one-process run of the same global batches).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from raglign.config import dump_yaml, read_yaml
from raglign.data.io import parquet_files
from raglign.errors import ConfigError, DataError, RaglignError
from raglign.training_config import LM_OBJECTIVES, RESUMABLE_FIELDS, TrainConfig

LABEL_TOLERANCE = 1e-3  # how far a target row may sum from 1 (float32 writers round)


# ---------------------------------------------------------------------------------------------
# Training rows
# ---------------------------------------------------------------------------------------------

def _objective_field(objective: str) -> str:
    from raglign.objectives import OBJECTIVES

    return OBJECTIVES[objective].field


def _check_values(values: Any, n_docs: int, objective: str, field: str, src: str, rec) -> list[float]:
    if not isinstance(values, list) or len(values) != n_docs:
        got = len(values) if isinstance(values, list) else type(values).__name__
        raise DataError(src, rec, field, f"expected a list of {n_docs} numbers (one per doc), got {got}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise DataError(src, rec, field, f"expected finite numbers, got {v!r}")
        out.append(float(v))
    if field == "labels":
        if any(v < 0 or v > 1 for v in out):
            raise DataError(src, rec, field, "labels must lie in [0, 1]")
        if objective == "infonce" and (sum(v == 1.0 for v in out) != 1 or sum(v != 0 for v in out) != 1):
            raise DataError(src, rec, field, f"infonce needs exactly one positive (label 1) and "
                                             f"zeros elsewhere, got {out}")
    elif field == "target":
        if any(v < 0 for v in out) or abs(sum(out) - 1.0) > LABEL_TOLERANCE:
            raise DataError(src, rec, field, f"a target must be a distribution (>= 0, sums to 1; "
                                             f"sums to {sum(out):.6f})")
    elif field == "lm_logprob" and any(v > 1e-6 for v in out):
        raise DataError(src, rec, field, "log-probabilities must be <= 0")
    return out


def load_train_table(path: str, objective: str, limit: int | None = None,
                     ) -> tuple[pa.Table, dict[str, list]]:
    """Validated training rows as a compact table ``{id, question, docs: [str], values: [float]}``.

    ``docs`` are the texts the reranker sees (:func:`~raglign.models.rerankers.doc_text`);
    ``values`` is the objective's per-document field (``labels``, ``target`` or
    ``lm_logprob``). The second value is provenance for the model card: the distinct values of
    the mining columns ``method``/``signal``/``temperature`` where the rows carry them.
    """
    from raglign.models.rerankers import doc_text

    field = _objective_field(objective)
    ids, questions, docs, values = [], [], [], []
    provenance: dict[str, list] = {}
    for f in parquet_files(path):
        src = str(f)
        table = pq.read_table(f)
        for col in ("question", "docs", field):
            if col not in table.column_names:
                hint = {"labels": "groups (`raglign mine LABELLED OUT --signal FIELD`)",
                        "target": "soft targets (`raglign mine LABELLED OUT --targets "
                                  "pdist|loop|adist|replug`)",
                        "lm_logprob": "per-document answer log-probabilities (`raglign mine "
                                      "LABELLED OUT --lm-logprobs`)"}[field]
                raise DataError(src, None, col, f"missing column; objective {objective!r} trains "
                                                f"on {hint}; columns are {table.column_names}")
        for col in ("method", "signal", "temperature"):
            if col in table.column_names:
                seen = provenance.setdefault(col, [])
                seen.extend(v for v in table.column(col).unique().to_pylist() if v not in seen)
        for i, row in enumerate(table.select(
                [c for c in ("id", "question", "docs", field) if c in table.column_names]).to_pylist()):
            rec = row.get("id") or i
            q = row["question"]
            if not isinstance(q, str) or not q.strip():
                raise DataError(src, rec, "question", "must be a non-empty string")
            ds = row["docs"]
            if not isinstance(ds, list) or not ds:
                raise DataError(src, rec, "docs", "expected a non-empty list of documents")
            texts = []
            for j, d in enumerate(ds):
                if not isinstance(d, dict) or not isinstance(d.get("text"), str):
                    raise DataError(src, rec, f"docs[{j}].text", "missing or not a string")
                texts.append(doc_text(d.get("title"), d["text"]))
            values.append(_check_values(row[field], len(ds), objective, field, src, rec))
            ids.append(str(row.get("id") if row.get("id") is not None else f"{f.name}:{i}"))
            questions.append(q)
            docs.append(texts)
            if limit is not None and len(ids) >= limit:
                break
        if limit is not None and len(ids) >= limit:
            break
    table = pa.table({"id": ids, "question": questions, "docs": docs, "values": values})
    return table, provenance


# ---------------------------------------------------------------------------------------------
# Batching: the same global order on every worker, for any number of workers
# ---------------------------------------------------------------------------------------------

def epoch_permutation(n_rows: int, seed: int, epoch: int) -> list[int]:
    """The row order of ``epoch``: a function of (seed, epoch) only, hence resumable."""
    import torch

    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n_rows, generator=g).tolist()


def micro_batch_rows(perm: list[int], step_in_epoch: int, cfg: TrainConfig, rank: int,
                     world: int, accum_index: int) -> list[int]:
    """Row indices of worker ``rank``'s micro-batch ``accum_index`` within a global step."""
    start = step_in_epoch * cfg.batch_size + (accum_index * world + rank) * cfg.micro_batch
    return perm[start:start + cfg.micro_batch]


@dataclass
class Batch:
    queries: list[str]
    docs: list[list[str]]  # padded with "" to the longest group
    values: Any  # torch.Tensor [b, n] float32; None for a table without values (gumbel)
    mask: Any  # torch.Tensor [b, n] bool, False on padding
    columns: dict[str, list]  # every column of the rows, unpadded (gumbel: answer, titles …)


def make_batch(table: pa.Table, rows: list[int]) -> Batch:
    import torch

    part = table.take(pa.array(rows, type=pa.int64())).to_pydict()
    n = max(len(d) for d in part["docs"])
    docs = [d + [""] * (n - len(d)) for d in part["docs"]]
    values = None
    if "values" in part:
        values = torch.tensor([v + [0.0] * (n - len(v)) for v in part["values"]],
                              dtype=torch.float32)
    mask = torch.tensor([[True] * len(d) + [False] * (n - len(d)) for d in part["docs"]])
    return Batch(part["question"], docs, values, mask, part)


# ---------------------------------------------------------------------------------------------
# The model as DDP sees it
# ---------------------------------------------------------------------------------------------

def _scorer_class():
    import torch
    import torch.nn.functional as F

    class Scorer(torch.nn.Module):
        """Routes ``forward`` to the reranker's scoring so DDP's forward hooks run.

        DDP synchronises gradients only for computation that went through its own ``forward``;
        calling ``ddp.module.forward_scores`` would silently train each worker on its own data.
        With in-batch negatives a bi-encoder embeds the batch's documents once and scores every
        query against all of them (``[B, B*n]``, group-major, as :func:`infonce` expects).
        """

        def __init__(self, reranker, in_batch_negatives: bool):
            super().__init__()
            self.reranker = reranker
            self.in_batch_negatives = in_batch_negatives

        def forward(self, queries: list[str], docs: list[list[str]]):
            if not self.in_batch_negatives:
                return self.reranker.forward_scores(queries, docs)
            enc = self.reranker.encoder
            q = enc.embed(list(queries))
            d = enc.embed([t for group in docs for t in group])
            if self.reranker.similarity == "cosine":
                q, d = F.normalize(q, dim=-1), F.normalize(d, dim=-1)
            return q @ d.T

    return Scorer


def build_reranker(cfg: TrainConfig, device=None):
    """The reranker to fine-tune, initialised identically on every worker (seeded head)."""
    import torch

    from raglign.models.rerankers import load_reranker

    torch.manual_seed(cfg.seed)
    kw = {"similarity": cfg.similarity} if cfg.similarity else {}
    reranker = load_reranker(cfg.model, kind=cfg.kind, max_length=cfg.max_length, device=device, **kw)
    return reranker.train()


def _param_groups(model, weight_decay: float) -> list[dict]:
    """No weight decay on biases and LayerNorm weights (the standard BERT fine-tuning recipe)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


class WindowMetrics:
    """What a loss reports per logging window besides the loss: ``pop_metrics()`` peaks
    (maximised over workers), ``pop_means()`` means (averaged over workers); none by default."""

    def pop_metrics(self) -> dict[str, float]:
        return {}

    def pop_means(self) -> dict[str, float]:
        return {}


@dataclass
class ScoreLoss(WindowMetrics):
    """A loss of the reranker's scores against the rows' per-document values (OBJECTIVES)."""

    objective: Any  # raglign.objectives.Objective
    params: Any  # raglign.objectives.LossParams
    device: Any

    def __call__(self, model, batch: Batch):
        scores = model(batch.queries, batch.docs)
        return self.objective.loss(scores.float(), batch.values.to(self.device),
                                   batch.mask.to(self.device), self.params)


def build_loss(cfg: TrainConfig, device):
    """``loss(model, batch) -> scalar`` for the configured objective, built once per worker;
    ``pop_metrics()`` gives its own per-window peaks (gumbel: document-cache MiB), maximised
    over workers, and ``pop_means()`` its per-window means (rrpo: rewards, KL), averaged."""
    if cfg.objective == "gumbel":
        from raglign.pipeline.train_gumbel import GumbelLoss

        return GumbelLoss(cfg.gumbel, device)
    if cfg.objective == "rrpo":
        from raglign.pipeline.train_rrpo import RRPOLoss

        return RRPOLoss(cfg, device)
    from raglign.objectives import OBJECTIVES, LossParams

    return ScoreLoss(OBJECTIVES[cfg.objective],
                     LossParams(cfg.score_temperature, cfg.beta, cfg.in_batch_negatives,
                                cfg.kind), device)


def peak_rss_mib() -> float:
    """This process's peak resident set size so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _memory_metrics(device) -> dict[str, float]:
    import torch

    out = {"peak_rss_mib": peak_rss_mib()}
    if device.type == "cuda":
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


# ---------------------------------------------------------------------------------------------
# The Ray Train loop
# ---------------------------------------------------------------------------------------------

def _restore(ckpt, model, optimizer, scheduler, rank: int, device) -> tuple[int, list[dict]]:
    """Load a checkpoint into the live objects; returns (step, metrics history)."""
    import torch

    with ckpt.as_directory() as d:
        d = Path(d)
        model.load_state_dict(torch.load(d / "model.pt", map_location=device))
        optimizer.load_state_dict(torch.load(d / "optimizer.pt", map_location=device))
        scheduler.load_state_dict(torch.load(d / "scheduler.pt"))
        state = json.loads((d / "state.json").read_text())
        rng = d / f"rng-rank{rank}.pt"
        if rng.exists():
            saved = torch.load(rng)
            torch.set_rng_state(saved["cpu"])
            if saved.get("cuda") is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state(saved["cuda"], device)
        else:  # resumed with more workers than were saved: a fresh, still deterministic stream
            torch.manual_seed(state["seed"] + 7919 * (rank + 1) + state["step"])
        history = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()
                   if line.strip()]
    return int(state["step"]), history


def _save(directory: Path, model, optimizer, scheduler, step: int, cfg: TrainConfig, rank: int,
          history: list[dict]) -> None:
    import torch

    if rank == 0:
        torch.save(model.state_dict(), directory / "model.pt")
        torch.save(optimizer.state_dict(), directory / "optimizer.pt")
        torch.save(scheduler.state_dict(), directory / "scheduler.pt")
        (directory / "state.json").write_text(json.dumps({"step": step, "seed": cfg.seed}))
        (directory / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() else None
    torch.save({"cpu": torch.get_rng_state(), "cuda": cuda}, directory / f"rng-rank{rank}.pt")


def train_loop_per_worker(loop_config: dict) -> None:
    """One Ray Train worker: restore, then optimizer steps over the seeded global batches."""
    import ray
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist
    from transformers import get_linear_schedule_with_warmup

    cfg = TrainConfig.model_validate(loop_config["config"])
    local = cfg.num_workers == 0  # Ray Train local mode: the table was passed as is
    table: pa.Table = loop_config["table"] if local else ray.get(loop_config["table"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()

    compute_loss = build_loss(cfg, device)  # gumbel: loads the frozen generator
    reranker = build_reranker(cfg, device)
    ddp_kwargs = {"find_unused_parameters": True} if cfg.kind == "bi" else {}  # unused pooler
    model = ray.train.torch.prepare_model(_scorer_class()(reranker, cfg.in_batch_negatives),
                                          parallel_strategy_kwargs=ddp_kwargs)
    optimizer = torch.optim.AdamW(_param_groups(reranker, cfg.weight_decay), lr=cfg.lr)
    steps_per_epoch = table.num_rows // cfg.batch_size
    total = steps_per_epoch * cfg.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(cfg.warmup_ratio * total), total)
    torch.manual_seed(cfg.seed + 7919 * (rank + 1))  # per-rank dropout stream

    step, history = 0, []
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        step, history = _restore(ckpt, reranker, optimizer, scheduler, rank, device)
        if rank == 0:
            print(f"[raglign train] resumed from step {step}/{total}", flush=True)
    stop_at = total if cfg.max_steps is None else min(total, cfg.max_steps)
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                              enabled=cfg.bf16 and device.type == "cuda")

    window_loss, window_pairs, window_steps, t0 = 0.0, 0, 0, time.perf_counter()
    perm_epoch, perm = -1, []
    while step < stop_at:
        epoch, in_epoch = divmod(step, steps_per_epoch)
        if epoch != perm_epoch:
            perm, perm_epoch = epoch_permutation(table.num_rows, cfg.seed, epoch), epoch
        model.train()
        step_loss, step_pairs = 0.0, 0
        for a in range(cfg.grad_accumulation):
            batch = make_batch(table, micro_batch_rows(perm, in_epoch, cfg, rank, world, a))
            sync = world == 1 or a == cfg.grad_accumulation - 1
            with (contextlib.nullcontext() if sync else model.no_sync()), autocast:
                loss = compute_loss(model, batch)
            (loss / cfg.grad_accumulation).backward()
            step_loss += loss.item() / cfg.grad_accumulation
            step_pairs += int(batch.mask.sum())
        if cfg.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(reranker.parameters(), cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        window_loss, window_pairs, window_steps = window_loss + step_loss, window_pairs + step_pairs, window_steps + 1

        checkpoint_now = step % cfg.checkpoint_every == 0 or step == stop_at
        if step % cfg.log_every and not checkpoint_now:
            continue
        # On the device: NCCL (GPU workers) reduces CUDA tensors only.
        stats = torch.tensor([window_loss, float(window_pairs)], dtype=torch.float64, device=device)
        # Memory: the largest over the workers (peak RSS is monotone, so at a log step it is
        # the peak of every step so far).
        memory = {**_memory_metrics(device), **compute_loss.pop_metrics()}
        peaks = torch.tensor(list(memory.values()), dtype=torch.float64, device=device)
        means = compute_loss.pop_means()
        mean_values = torch.tensor(list(means.values()), dtype=torch.float64, device=device)
        if world > 1:
            dist.all_reduce(stats)
            dist.all_reduce(peaks, op=dist.ReduceOp.MAX)
            dist.all_reduce(mean_values)
        elapsed = time.perf_counter() - t0
        metrics = {"step": step, "epoch": round(step / steps_per_epoch, 4),
                   "loss": stats[0].item() / (window_steps * world),
                   "lr": scheduler.get_last_lr()[0], "pairs_per_s": stats[1].item() / elapsed,
                   "total_steps": total,
                   **{k: round(v, 1) for k, v in zip(memory, peaks.tolist())},
                   **{k: v / world for k, v in zip(means, mean_values.tolist())}}
        history.append(metrics)
        if rank == 0:
            print(f"[raglign train] step {step}/{total} epoch {metrics['epoch']:.2f} "
                  f"loss {metrics['loss']:.4f} lr {metrics['lr']:.2e} "
                  f"pairs/s {metrics['pairs_per_s']:.1f} peak RSS {metrics['peak_rss_mib']:.0f} MiB"
                  + "".join(f" {k} {metrics[k]:.3f}" for k in means), flush=True)
        if checkpoint_now and (step == stop_at or not local):
            # Local mode keeps no intermediate checkpoints (it cannot resume) and hands the
            # final directory itself to the driver, so that one must outlive this function.
            tmp = Path(tempfile.mkdtemp(prefix="raglign-ckpt-"))
            _save(tmp, reranker, optimizer, scheduler, step, cfg, rank, history)
            if rank == 0 and step == stop_at:
                reranker.save(tmp / "model", model_card=model_card(
                    cfg, loop_config["provenance"], table.num_rows, step, total, history))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=f"step-{step:08d}")
            if not local:  # uploaded to the run's storage by report()
                shutil.rmtree(tmp, ignore_errors=True)
        else:
            ray.train.report(metrics)
        window_loss, window_pairs, window_steps, t0 = 0.0, 0, 0, time.perf_counter()


# ---------------------------------------------------------------------------------------------
# Outputs: model card, metrics, loss curve
# ---------------------------------------------------------------------------------------------

def model_card(cfg: TrainConfig, provenance: dict[str, list], n_rows: int, step: int, total: int,
               history: list[dict]) -> str:
    """A README.md for the exported model: data, signal, objective, hyper-parameters, result."""
    data, objective = _card_objective(cfg)
    library = "sentence-transformers"
    if cfg.kind == "cross":
        usage = ("from sentence_transformers import CrossEncoder\n\nmodel = CrossEncoder(\"PATH\")\n"
                 "scores = model.predict([(query, doc) for doc in docs])  # higher = more relevant")
    else:
        usage = ("from sentence_transformers import SentenceTransformer\n\nmodel = SentenceTransformer(\"PATH\")\n"
                 "scores = model.similarity(model.encode([query]), model.encode(docs))")
    signal = ", ".join(f"{k}: {', '.join(map(str, v))}" for k, v in provenance.items()) or "not recorded"
    final = history[-1]["loss"] if history else float("nan")
    status = "complete" if step >= total else f"stopped early at max_steps ({step} of {total})"
    return f"""---
library_name: {library}
base_model: {cfg.model}
tags: [reranker, {cfg.kind}-encoder, raglign, {cfg.objective}]
---

# {cfg.kind}-encoder reranker fine-tuned with raglign ({cfg.objective})

Fine-tuned from `{cfg.model}` with `raglign train` to rank documents by what a RAG generator
needs.

- **Data**: `{cfg.data}` — {n_rows} training queries, {data}
- **Signal** (from the training rows): {signal}
- **Objective**: `{cfg.objective}` — {objective}
- **Training**: {step} optimizer steps ({status}); {cfg.epochs} epochs of {total // cfg.epochs}
  steps; final loss {final:.4f}

## Usage

```python
{usage}
```

## Hyper-parameters

AdamW (lr {cfg.lr}, weight decay {cfg.weight_decay}), linear warmup over {cfg.warmup_ratio:.0%}
of the steps then linear decay, {cfg.batch_size} groups per step, max length {cfg.max_length},
seed {cfg.seed}, {cfg.num_workers} Ray Train worker(s). The full job configuration:

```yaml
{dump_yaml(cfg).strip()}
```
"""


def _card_objective(cfg: TrainConfig) -> tuple[str, str]:
    """What the rows supervise and what the loss is, for the model card."""
    if cfg.objective == "gumbel":
        g = cfg.gumbel
        loss = (f"G-Rerank: the gold answer's per-token NLL under the frozen generator "
                f"`{g.generator}` ({g.dtype}) reading the candidates through a Gumbel relaxed "
                f"top-{g.k} mask of the scores (tau {g.tau}, kappa {g.kappa}, noise {g.noise}, "
                f"{g.samples} mask(s) per query)")
        return f"gold answers (alias `{g.answer_alias}`) over the first {g.n} candidates", loss
    if cfg.objective == "rrpo":
        r = cfg.rrpo
        loss = (f"RRPO: PPO clipped surrogate (eps {r.clip_eps}) on episodes of {r.k} documents "
                f"sampled from the Plackett-Luce policy of the scores (temperature "
                f"{cfg.score_temperature}), reward `{r.reward}` from the frozen reader "
                f"`{r.generator}` ({r.dtype}), advantages against the initial reranker's greedy "
                f"episode (gamma {r.gamma}, GAE lambda {r.lam}), KL weight {r.kl_beta}")
        return f"gold answers over the first {r.n} candidates", loss
    from raglign.objectives import OBJECTIVES

    obj = OBJECTIVES[cfg.objective]
    beta = f", beta {cfg.beta}" if cfg.objective == "replug" else ""
    return (f"per-document field `{obj.field}`",
            f"{obj.description}; score temperature {cfg.score_temperature}{beta}")


def plot_loss_curve(history: list[dict], path: Path, title: str = "raglign train") -> None:
    """Loss (left axis) and learning rate (right axis) against the optimizer step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [h["step"] for h in history]
    ax.plot(steps, [h["loss"] for h in history], color="tab:blue", label="loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss", color="tab:blue")
    lr_ax = ax.twinx()
    lr_ax.plot(steps, [h["lr"] for h in history], color="tab:gray", linestyle="--", label="lr")
    lr_ax.set_ylabel("learning rate", color="tab:gray")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------

@dataclass
class TrainResult:
    output: Path
    model_dir: Path
    step: int
    total_steps: int
    final_loss: float
    checkpoint: str | None  # where Ray Train keeps the last checkpoint (None in local mode)


def _check_resumable(cfg: TrainConfig, path: Path) -> None:
    """A re-run of the same run must compute the same thing; say which fields differ."""
    if not path.exists():
        return
    old = read_yaml(path)
    if (old.get("run_name"), old.get("storage_path")) != (cfg.run_name, cfg.storage_path):
        return  # a different run writing into the same output directory
    new = cfg.model_dump(mode="json")
    changed = sorted(k for k in set(old) | set(new)
                     if k not in RESUMABLE_FIELDS and old.get(k) != new.get(k))
    if changed:
        details = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed)
        raise ConfigError(f"{path}: run {cfg.run_name!r} was started with different settings "
                          f"({details}); resuming would mix two trainings. Use a new run_name "
                          "or output, or restore the old values.")


def _replace_dir(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex}")
    shutil.copytree(src, tmp)
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(tmp, dst)


@contextlib.contextmanager
def _torch_threads(n: int | None):
    """Give local mode the thread budget of one worker, as Ray does with OMP_NUM_THREADS.

    Without it torch takes every core of the driver, and on a shared machine its OpenMP threads
    spin against each other (measured here: 20x slower steps with 2 threads than with 1).
    """
    if n is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train(cfg: TrainConfig) -> TrainResult:
    """Run (or resume) the training job and export ``OUTPUT/model``, metrics and loss curve."""
    from raglign.ray_session import ray_session

    if cfg.objective in LM_OBJECTIVES:
        from raglign.pipeline.lm_table import load_lm_table

        # An RRPO episode chooses k documents, so each row needs k candidates.
        table, provenance = load_lm_table(cfg.data, cfg.lm_options, cfg.objective, cfg.limit,
                                          cfg.rrpo.k if cfg.rrpo else 1)
    else:
        table, provenance = load_train_table(cfg.data, cfg.objective, cfg.limit)
    if table.num_rows < cfg.batch_size:
        raise DataError(cfg.data, None, None, f"{table.num_rows} training rows, fewer than one "
                                              f"batch (batch_size {cfg.batch_size})")
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    _check_resumable(cfg, out / "train_config.yaml")
    (out / "train_config.yaml").write_text(dump_yaml(cfg))

    local = cfg.num_workers == 0
    # Local mode needs no Ray cluster: the loop runs here and gets the table itself.
    with contextlib.nullcontext() if local else ray_session(cfg.ray):
        import ray
        import ray.train
        from ray.train.torch import TorchTrainer

        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"config": cfg.model_dump(mode="json"), "provenance": provenance,
                               "table": table if local else ray.put(table)},
            scaling_config=ray.train.ScalingConfig(
                num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                resources_per_worker={"CPU": cfg.cpus_per_worker}),
            run_config=ray.train.RunConfig(
                name=cfg.run_name, storage_path=cfg.storage,
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
                failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
                worker_runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}}),
        )
        try:
            with _torch_threads(cfg.cpus_per_worker if local else None):
                result = trainer.fit()
        except ray.train.TrainingFailedError as e:
            raise RaglignError(f"training failed; re-run the same command to resume from the "
                               f"last checkpoint in {cfg.storage}/{cfg.run_name}: {e}") from e
    if result.checkpoint is None:
        raise RaglignError(f"training reported no checkpoint under {cfg.storage}/{cfg.run_name}")
    with result.checkpoint.as_directory() as d:
        d = Path(d)
        state = json.loads((d / "state.json").read_text())
        _replace_dir(d / "model", out / "model")
        shutil.copyfile(d / "metrics.jsonl", out / "metrics.jsonl")
    if local:  # the loop's own temporary directory, nothing of Ray's
        shutil.rmtree(result.checkpoint.path, ignore_errors=True)
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    if history:
        plot_loss_curve(history, out / "loss_curve.png",
                        f"raglign train: {cfg.objective}, {cfg.kind}-encoder {Path(cfg.model).name}")
    total = history[-1]["total_steps"] if history else state["step"]
    return TrainResult(out, out / "model", state["step"], total,
                       history[-1]["loss"] if history else float("nan"),
                       None if local else result.checkpoint.path)
