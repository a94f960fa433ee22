"""The Ray Train loop of ``raglign train``: what every worker runs, whatever the objective.

Each worker builds the configured loss (:func:`raglign.training.loss.build_loss`) and the
reranker (:mod:`raglign.training.reranker`), wraps the reranker with ``prepare_model`` (DDP, gloo
on CPU / NCCL on GPU), restores the latest checkpoint if the run is resumed
(:mod:`raglign.training.checkpoint`), and walks its share of the seeded global batches
(:mod:`raglign.training.batches`: dealt to the workers by size, so that no worker waits on one
holding the long rows), taking the optimizer updates the loss plans for each (one,
or RRPO's PPO epochs x mini-batches; :meth:`raglign.training.loss.Loss.update_plan`). A step is
one global batch, so checkpoints fall between batches and a resumed run never needs a half-used
rollout; a loss that looks ahead (RRPO's overlapped rollouts) is shown the next step's
micro-batches, except across a checkpoint. Every logging window it reduces the loss and the loss's own
metrics over the workers and reports them with ``ray.train.report``, with a checkpoint when one
is due or when validation (:mod:`.train_validation`) found a new best step. This is the one
module of training that imports Ray; the job's driver is :mod:`.train`.
"""

from __future__ import annotations

import contextlib
import math
import resource
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow as pa

from raglign.training.batches import (
    epoch_permutation,
    make_batch,
    micro_batch_rows,
    row_sizes,
)
from raglign.training.checkpoint import restore, save
from raglign.training.loss import build_loss
from raglign.training.reranker import build_optimizer, build_reranker, scorer_class
from raglign.training_config import TrainConfig


# The gradients are views into DDP's all-reduce buckets, so DDP neither keeps separate .grad
# tensors beside them (91 MB for MiniLM-L6) nor copies the reduced buckets into those each step:
# the same numbers (tests/test_train.py, 2 gloo processes vs 1), a lower peak RSS (25-47 MiB
# per worker measured, docs/benchmarks.md).
DDP_OPTIONS = {"gradient_as_bucket_view": True}


def peak_rss_mib() -> float:
    """This process's peak resident set size so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _memory_metrics(device) -> dict[str, float]:
    import torch

    out = {"peak_rss_mib": peak_rss_mib()}
    if device.type == "cuda":
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


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


def autocast_bf16(cfg: TrainConfig, device) -> bool:
    """Whether the step runs under bf16 autocast: GPU workers when ``bf16``, CPU workers when
    ``cpu_bf16`` (``auto``: decided on the worker, whose CPU may differ from the driver's)."""
    if device.type == "cuda":
        return cfg.bf16
    if cfg.cpu_bf16 == "auto":
        from raglign.models.generator import cpu_has_fast_bf16

        return cpu_has_fast_bf16()
    return cfg.cpu_bf16


def _step_bar(local: bool, total: int, done: int):
    """Rank 0's bar of optimizer steps, drawn on the driver's terminal: a plain tqdm in local
    mode (the loop runs there), else Ray's ``tqdm_ray``, whose state updates the driver draws
    even while the worker's printed lines go to ray.log (raglign.ray_session)."""
    if local:
        from raglign.console import progress_bar

        bar = progress_bar(total, "[raglign train] steps", unit="step")
    else:
        from ray.experimental.tqdm_ray import tqdm

        bar = tqdm(total=total, desc="[raglign train] steps", unit="step")
    bar.update(done)
    return bar


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

    # gumbel loads the frozen generator here; rrpo too, unless the job started reward actors.
    services = {}
    if loop_config.get("reward_actors"):
        from raglign.pipeline.reward_actors import RewardPool

        services["rewards"] = RewardPool(loop_config["reward_actors"])
    compute_loss = build_loss(cfg, device, **services)
    reranker = build_reranker(cfg, device)
    # No find_unused_parameters: every trainable parameter takes part in the scores (the
    # encoder freezes BERT's pooler, which mean/CLS pooling never reads), so DDP needs no
    # extra graph traversal per step (tests/test_train.py checks every parameter gets a grad).
    model = ray.train.torch.prepare_model(scorer_class()(reranker, cfg.in_batch_negatives),
                                          parallel_strategy_kwargs=DDP_OPTIONS)
    optimizer = build_optimizer(reranker, cfg.lr, cfg.weight_decay)
    steps_per_epoch = table.num_rows // cfg.batch_size
    total = steps_per_epoch * cfg.epochs
    # A step is one global batch; an objective may take several optimizer updates on it (RRPO's
    # PPO epochs), and the schedule counts updates.
    updates = total * len(compute_loss.update_plan(cfg.grad_accumulation))
    scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(cfg.warmup_ratio * updates),
                                                updates)
    torch.manual_seed(cfg.seed + 7919 * (rank + 1))  # per-rank dropout stream

    step, history = 0, []
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        step, history = restore(ckpt, reranker, optimizer, scheduler, rank, device)
        if rank == 0:
            print(f"[raglign train] resumed from step {step}/{total}", flush=True)
    stop_at = total if cfg.max_steps is None else min(total, cfg.max_steps)
    log_every = cfg.log_interval(total)
    print_every = max(log_every, math.ceil(total / 10))  # about ten lines a run on the console
    eval_every = cfg.eval_interval(total)
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                              enabled=autocast_bf16(cfg, device))

    if validation is not None and not history:  # the starting model, once per run
        metrics = {"step": 0, "epoch": 0.0, "total_steps": total, "eval_round": 0,
                   **validate(reranker, validation, rank, world, device)}
        history.append(metrics)
        if rank == 0:
            print(_console_line(metrics, total, [], validation), flush=True)
        ray.train.report(metrics)

    bar = _step_bar(local, stop_at, step) if rank == 0 and loop_config["step_bar"] else None
    local_best: tuple[Path, dict] | None = None
    window_loss, window_pairs, window_steps, t0 = 0.0, 0, 0, time.perf_counter()
    perms: dict[int, list[int]] = {}
    sizes = row_sizes(table)

    def step_batches(at: int) -> list:
        """This worker's micro-batches of global batch ``at`` (0-based)."""
        epoch, in_epoch = divmod(at, steps_per_epoch)
        if epoch not in perms:
            perms.clear()
            perms[epoch] = epoch_permutation(table.num_rows, cfg.seed, epoch)
        return [make_batch(table, micro_batch_rows(perms[epoch], in_epoch, cfg, rank, world, a,
                                                    sizes))
                for a in range(cfg.grad_accumulation)]

    upcoming = None
    while step < stop_at:
        model.train()
        batches = upcoming or step_batches(step)
        step_pairs = sum(int(b.mask.sum()) for b in batches)
        plan = compute_loss.update_plan(len(batches))
        # Never past a checkpoint: a run resumed there must see what this one does.
        ends_in_checkpoint = (step + 1) % cfg.checkpoint_every == 0 or step + 1 == stop_at
        upcoming = (step_batches(step + 1) if compute_loss.looks_ahead and not ends_in_checkpoint
                    else None)
        with autocast:
            compute_loss.before_updates(model, batches, upcoming)
        step_loss = 0.0  # mean over the step's updates of each update's mean micro-batch loss
        for update in plan:
            for j, a in enumerate(update):
                sync = world == 1 or j == len(update) - 1
                with (contextlib.nullcontext() if sync else model.no_sync()), autocast:
                    loss = compute_loss(model, batches[a])
                (loss / len(update)).backward()
                step_loss += loss.item() / (len(update) * len(plan))
            if cfg.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(reranker.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        step += 1
        window_loss, window_pairs, window_steps = window_loss + step_loss, window_pairs + step_pairs, window_steps + 1
        if bar is not None:
            bar.update(1)

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
                   # Rank 0's clocks at the window's end: differences between lines time a run
                   # including what falls between windows (reports, checkpoints), which
                   # pairs_per_s leaves out; CPU over wall is the share of a core the worker got
                   # (on a shared machine, what throughput is measured against).
                   "wall_time": time.time(), "cpu_time": time.process_time(),
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
            save(tmp, reranker, optimizer, scheduler, step, cfg, rank, history)
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
    if bar is not None:
        bar.close()
    if local_best is None:
        return None
    return {"best_checkpoint": str(local_best[0]), "best_metrics": local_best[1]}
