"""``raglign train``: fine-tune a reranker with Ray Train (DDP) on mined groups or soft targets,
or end to end through a frozen generator (``objective: gumbel``, :mod:`.train_gumbel`).

Flow: the driver reads and validates the training rows (errors name file, record and field
before any worker starts), puts them once into the object store as an Arrow table, and runs a
``TorchTrainer``; every worker builds the reranker, wraps it with ``prepare_model`` (DDP, gloo on
CPU / NCCL on GPU) and walks the same seeded permutation of the rows. With a ``validation``
block the loop also scores held-out questions as ``raglign eval`` does
(:mod:`.train_validation`). At the end the driver exports the last model, or the best
validated one, or the starting model when no step beats it, and writes the metrics, a loss
curve and ``train_result.json`` (:mod:`.train_export`).

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
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
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
                     exclude: Callable[[str], bool] | None = None,
                     ) -> tuple[pa.Table, dict[str, list]]:
    """Validated training rows as a compact table ``{id, question, docs: [str], values: [float]}``.

    ``docs`` are the texts the reranker sees (:func:`~raglign.models.rerankers.doc_text`);
    ``values`` is the objective's per-document field (``labels``, ``target`` or
    ``lm_logprob``). Rows whose id ``exclude`` accepts (held out for validation) are skipped
    before ``limit`` counts. The second value is provenance for the model card: the distinct
    values of the mining columns ``method``/``signal``/``temperature`` where the rows carry them.
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
            rid = str(row.get("id") if row.get("id") is not None else f"{f.name}:{i}")
            if exclude is not None and exclude(rid):
                continue
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
            ids.append(rid)
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
    """Load a checkpoint into the live objects; returns (step, metrics history).

    A finished run's checkpoints keep only the model (:func:`~.train_export.slim_checkpoints`):
    there is nothing left to train, so the optimizer, schedule and RNG state stay as they are.
    """
    import torch

    with ckpt.as_directory() as d:
        d = Path(d)
        model.load_state_dict(torch.load(d / "model.pt", map_location=device))
        state = json.loads((d / "state.json").read_text())
        history = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()
                   if line.strip()]
        if not (d / "optimizer.pt").exists():
            return int(state["step"]), history
        optimizer.load_state_dict(torch.load(d / "optimizer.pt", map_location=device))
        scheduler.load_state_dict(torch.load(d / "scheduler.pt"))
        rng = d / f"rng-rank{rank}.pt"
        if rng.exists():
            saved = torch.load(rng)
            torch.set_rng_state(saved["cpu"])
            if saved.get("cuda") is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state(saved["cuda"], device)
        else:  # resumed with more workers than were saved: a fresh, still deterministic stream
            torch.manual_seed(state["seed"] + 7919 * (rank + 1) + state["step"])
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


def _console_line(metrics: dict, total: int, extra: list[str], validation) -> str:
    """The rank-0 progress line of a logged step (and of its validation, if any)."""
    if "loss" in metrics:
        line = (f"[raglign train] step {metrics['step']}/{total} epoch {metrics['epoch']:.2f} "
                f"loss {metrics['loss']:.4f} lr {metrics['lr']:.2e} "
                f"pairs/s {metrics['pairs_per_s']:.1f} peak RSS {metrics['peak_rss_mib']:.0f} MiB"
                + "".join(f" {k} {metrics[k]:.3f}" for k in extra))
    else:
        line = f"[raglign train] step 0/{total} (the starting model)"
    if validation is not None and validation.attribute in metrics:
        shown = dict.fromkeys([validation.options.metric, "recall@5", "ndcg@5", "mrr"])
        line += " | validation " + " ".join(f"{m} {metrics[f'val_{m}']:.4f}" for m in shown
                                             if f"val_{m}" in metrics)
    return line


def train_loop_per_worker(loop_config: dict) -> dict | None:
    """One Ray Train worker: restore, then optimizer steps over the seeded global batches.

    With validation, the starting model is scored first (step 0), then every ``eval_every``
    steps and at every checkpoint, and a step at least as good as every earlier validation is
    checkpointed at once, so Ray Train (``CheckpointConfig`` ranked by the validation metric)
    holds the best model. Local mode has no checkpoint manager: it keeps the best step's
    directory itself and returns ``{"best_checkpoint": path, "best_metrics": …}``.
    """
    import ray
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist
    from transformers import get_linear_schedule_with_warmup

    from raglign.pipeline.train_validation import is_new_best, validate

    cfg = TrainConfig.model_validate(loop_config["config"])
    local = cfg.num_workers == 0  # Ray Train local mode: the table was passed as is
    table: pa.Table = loop_config["table"] if local else ray.get(loop_config["table"])
    validation = loop_config["validation"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()

    compute_loss = build_loss(cfg, device)  # gumbel: loads the frozen generator
    reranker = build_reranker(cfg, device)
    # No find_unused_parameters: every trainable parameter takes part in the scores (the
    # encoder freezes BERT's pooler, which mean/CLS pooling never reads), so DDP needs no
    # extra graph traversal per step (tests/test_train.py checks every parameter gets a grad).
    model = ray.train.torch.prepare_model(_scorer_class()(reranker, cfg.in_batch_negatives))
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
    log_every = cfg.log_interval(total)
    print_every = max(log_every, math.ceil(total / 10))  # about ten lines a run on the console
    eval_every = cfg.eval_interval(total)
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                              enabled=cfg.bf16 and device.type == "cuda")

    if validation is not None and not history:  # the starting model, once per run
        metrics = {"step": 0, "epoch": 0.0, "total_steps": total, "eval_round": 0,
                   **validate(reranker, validation, rank, world, device)}
        history.append(metrics)
        if rank == 0:
            print(_console_line(metrics, total, [], validation), flush=True)
        ray.train.report(metrics)

    local_best: tuple[Path, dict] | None = None
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
        # Every checkpoint is validated, so Ray Train can rank all of them by the metric.
        validate_now = validation is not None and (step % eval_every == 0 or checkpoint_now)
        if step % log_every and not (checkpoint_now or validate_now):
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
        new_best = False
        if validate_now:
            metrics.update(validate(reranker, validation, rank, world, device),
                           eval_round=sum(validation.attribute in h for h in history))
            new_best = is_new_best(metrics, history, validation.attribute)
        history.append(metrics)
        if rank == 0 and (step % print_every == 0 or validate_now or step == stop_at):
            print(_console_line(metrics, total, list(means), validation), flush=True)
        # Local mode keeps no intermediate checkpoints (it cannot resume) except the best one.
        if new_best or (checkpoint_now and (step == stop_at or not local)):
            tmp = Path(tempfile.mkdtemp(prefix="raglign-ckpt-"))
            _save(tmp, reranker, optimizer, scheduler, step, cfg, rank, history)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=f"step-{step:08d}")
            if not local:  # uploaded to the run's storage by report()
                shutil.rmtree(tmp, ignore_errors=True)
            elif new_best:  # the driver exports from it, so it outlives this function
                if local_best is not None:
                    shutil.rmtree(local_best[0], ignore_errors=True)
                local_best = (tmp, metrics)
        else:
            ray.train.report(metrics)
        window_loss, window_pairs, window_steps, t0 = 0.0, 0, 0, time.perf_counter()
    if local_best is None:
        return None
    return {"best_checkpoint": str(local_best[0]), "best_metrics": local_best[1]}


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------

@dataclass
class TrainResult:
    output: Path
    model_dir: Path | None  # None: a run that exports nothing (a tune trial)
    step: int
    total_steps: int
    final_loss: float
    checkpoint: str | None  # where Ray Train keeps the last checkpoint (None in local mode)
    exported_step: int  # the step whose model is in model_dir (0: the starting model)
    export: str  # "last", "best" (by validation) or "base" (no trained step beat step 0)
    note: str  # one sentence: which model was exported and why
    validation: dict | None  # the validation metrics of step 0 and of the exported step
    freed_mib: float  # training state removed from a finished run's checkpoints

    def to_json(self) -> str:
        fields = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}
        return json.dumps(fields, indent=2) + "\n"


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


def _load_training_rows(cfg: TrainConfig, split) -> tuple[pa.Table, dict[str, list]]:
    """The objective's training table, without the questions ``split`` holds out."""
    exclude = split.exclude if split is not None else None
    if cfg.objective in LM_OBJECTIVES:
        from raglign.pipeline.lm_table import load_lm_table

        # An RRPO episode chooses k documents, so each row needs k candidates.
        return load_lm_table(cfg.data, cfg.lm_options, cfg.objective, cfg.limit,
                             cfg.rrpo.k if cfg.rrpo else 1, exclude)
    return load_train_table(cfg.data, cfg.objective, cfg.limit, exclude)


def _checkpoint_config(cfg: TrainConfig):
    """Ray Train keeps the ``keep_checkpoints`` best checkpoints and always the latest; with
    validation "best" is the validation metric (higher is better), else recency."""
    import ray.train

    if cfg.validation is None:
        return ray.train.CheckpointConfig(num_to_keep=cfg.keep_checkpoints)
    return ray.train.CheckpointConfig(num_to_keep=cfg.keep_checkpoints,
                                      checkpoint_score_attribute=cfg.validation.score_attribute,
                                      checkpoint_score_order="max")


def _best_trained(cfg: TrainConfig, result, local: bool) -> tuple[Any, dict] | None:
    """The best validated checkpoint and its metrics: Ray Train's ranking
    (``Result.get_best_checkpoint``'s, with the metrics), or the local loop's own."""
    if cfg.validation is None:
        return None
    if local:
        kept = result.return_value
        if kept is None:
            return None
        import ray.train

        return ray.train.Checkpoint.from_directory(kept["best_checkpoint"]), kept["best_metrics"]
    attribute = cfg.validation.score_attribute
    ranked = [(c, m) for c, m in result.best_checkpoints or [] if attribute in m]
    return max(ranked, key=lambda cm: cm[1][attribute]) if ranked else None


def train(cfg: TrainConfig, *, callbacks: tuple = (), export: bool = True) -> TrainResult:
    """Run (or resume) the training job and export ``OUTPUT/model``, metrics and loss curve.

    ``callbacks`` go to Ray Train's ``RunConfig`` (a tune trial passes ``TuneReportCallback``);
    ``export=False`` leaves the model in its checkpoint (a sweep exports none of its trials: the
    best one's recipe and checkpoint are in the sweep's ``best.json``).
    """
    from raglign.pipeline.train_export import (choose_export, export_model, model_card,
                                               plot_loss_curve, slim_checkpoints)
    from raglign.pipeline.train_validation import held_out, load_validation
    from raglign.ray_session import ray_session

    split = held_out(cfg)
    table, provenance = _load_training_rows(cfg, split)
    validation = None
    if cfg.validation is not None:
        validation = load_validation(cfg, table.column("id").to_pylist(), split)
        left_out = f"; {split.turned_away} training questions held out" if split else ""
        print(f"[raglign train] validation: {validation.describe()}{left_out}", flush=True)
    if table.num_rows < cfg.batch_size:
        raise DataError(cfg.data, None, None, f"{table.num_rows} training rows, fewer than one "
                                              f"batch (batch_size {cfg.batch_size})")
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    _check_resumable(cfg, out / "train_config.yaml")
    (out / "train_config.yaml").write_text(dump_yaml(cfg))

    local = cfg.num_workers == 0
    # Local mode needs no Ray cluster: the loop runs here and gets the table itself.
    with contextlib.nullcontext() if local else ray_session(cfg.ray, log_dir=out):
        import ray
        import ray.train
        from ray.train.torch import TorchTrainer

        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"config": cfg.model_dump(mode="json"), "validation": validation,
                               "table": table if local else ray.put(table)},
            scaling_config=ray.train.ScalingConfig(
                num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                resources_per_worker={"CPU": cfg.cpus_per_worker}),
            run_config=ray.train.RunConfig(
                name=cfg.run_name, storage_path=cfg.storage,
                checkpoint_config=_checkpoint_config(cfg),
                failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
                callbacks=list(callbacks),
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
        state = json.loads((Path(d) / "state.json").read_text())
        shutil.copyfile(Path(d) / "metrics.jsonl", out / "metrics.jsonl")
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    step = state["step"]
    total = history[-1]["total_steps"] if history else step
    best = _best_trained(cfg, result, local)
    choice = choose_export(cfg, history, result.checkpoint, step, best)
    if export:
        export_model(cfg, choice.checkpoint, out / "model", model_card(
            cfg, provenance, table.num_rows, step, total, history, choice,
            validation.describe() if validation else None))
    print(f"[raglign train] {choice.note}", flush=True)
    if local:  # the loop's own temporary directories, nothing of Ray's
        for kept in {result.checkpoint.path, best[0].path if best else None} - {None}:
            shutil.rmtree(kept, ignore_errors=True)
    freed = 0
    if not local and step >= total:
        kept = [result.checkpoint, *(c for c, _ in result.best_checkpoints or [])]
        freed = slim_checkpoints(kept)
        if freed:
            names = sorted({Path(c.path).name for c in kept})
            print(f"[raglign train] finished: {freed / 2**20:.0f} MiB freed by removing the "
                  f"optimizer and RNG state from {', '.join(names)} in "
                  f"{cfg.storage}/{cfg.run_name} (their model weights stay)", flush=True)
    losses = [h["loss"] for h in history if "loss" in h]
    attribute = cfg.validation.score_attribute if cfg.validation else None
    if losses:
        plot_loss_curve(history, out / "loss_curve.png",
                        f"raglign train: {cfg.objective}, {cfg.kind}-encoder {Path(cfg.model).name}",
                        attribute, choice.step if attribute else None)
    scores = None
    if attribute:
        scores = {"metric": cfg.validation.metric,
                  "step_0": {k: v for h in history if h["step"] == 0 for k, v in h.items()
                             if k.startswith("val_")},
                  "exported": {k: v for h in history if h["step"] == choice.step
                               for k, v in h.items() if k.startswith("val_")}}
    train_result = TrainResult(out, out / "model" if export else None, step, total,
                               losses[-1] if losses else float("nan"),
                               None if local else result.checkpoint.path, choice.step,
                               choice.kind, choice.note, scores, round(freed / 2**20, 1))
    (out / "train_result.json").write_text(train_result.to_json())
    return train_result
