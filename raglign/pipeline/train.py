"""``raglign train``: fine-tune a reranker with Ray Train (DDP) on mined groups or soft targets,
or end to end through a frozen generator (``objective: gumbel``, ``rrpo``). This is the job's
driver; what every worker runs is :mod:`.train_loop`, and the Ray-free parts of training
(losses, tables, batches, reranker, checkpoints, export, model card) are :mod:`raglign.training`.

Flow: the driver reads and validates the training rows (errors name file, record and field
before any worker starts): mined rows (:mod:`raglign.training.tables`) or canonical ones
(:mod:`.lm_table`), as the objective's registry line says. It puts them once into the object
store as an Arrow table and runs a ``TorchTrainer`` over :func:`.train_loop.train_loop_per_worker`
(``objective: rrpo`` first starts the reward actors the workers share, :mod:`.reward_actors`,
and kills them when training ends).
With a ``validation`` block the loop also scores held-out questions as ``raglign eval`` does
(:mod:`.train_validation`). At the end the driver exports the last model, or the best validated
one, or the starting model when no step beats it, and writes the metrics, a loss curve and
``train_result.json`` (:mod:`raglign.training.export`).

Re-running with the same ``run_name``/``storage_path`` makes ``ray.train.get_checkpoint()``
return the latest checkpoint and training continues at its step with the same data order and
optimizer state (tests/test_train.py: a 2-worker run stopped at ``max_steps`` and resumed ends
with the weights and losses of an uninterrupted one-process run of the same global batches).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import yaml

from raglign import storage
from raglign.config import dump_yaml
from raglign.errors import ConfigError, DataError, RaglignError
from raglign.training.reranker import build_reranker  # noqa: F401 (public: README, tests, tune)
from raglign.training.tables import load_train_table
from raglign.training_config import OBJECTIVES, RESUMABLE_FIELDS, TrainConfig


@dataclass
class TrainResult:
    output: Path | str  # a local Path, or the storage URI (str) the run wrote to
    model_dir: Path | str | None  # None: a run that exports nothing (a tune trial)
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


def _check_resumable(cfg: TrainConfig, path: str) -> None:
    """A re-run of the same run must compute the same thing; say which fields differ."""
    if not storage.is_file(path):
        return
    old = yaml.safe_load(storage.read_text(path))
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
    if OBJECTIVES[cfg.objective].rows == "canonical":
        from raglign.pipeline.lm_table import load_lm_table

        return load_lm_table(cfg.data, cfg.lm_options, cfg.objective, cfg.limit,
                             cfg.lm_options.min_candidates, exclude)
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


def _check_fits(cfg: TrainConfig, resources: dict) -> None:
    """On a fixed-size Ray (local, or a cluster without an autoscaler to grow it), the Train
    workers and RRPO's reward actors must fit together, or Ray Train waits for them forever
    (every reader, vLLM and HTTP included, runs inside its actor's own reservation)."""
    import os

    if cfg.ray.address or os.environ.get("RAY_ADDRESS"):
        return  # a cluster may scale up to what the job asks for
    actors = cfg.rrpo.reward_actors if cfg.rrpo is not None else 0
    for unit, workers, per_actor in [
            ("CPU", cfg.num_workers * cfg.cpus_per_worker,
             cfg.rrpo.reward_actor_cpus if actors else 0.0),
            ("GPU", cfg.num_workers if cfg.use_gpu else 0,
             cfg.rrpo.reward_actor_gpus if actors else 0.0)]:
        need = workers + actors * per_actor
        if need > resources.get(unit, 0.0) + 1e-9:
            raise ConfigError(
                f"the job needs {need:g} {unit}s ({workers:g} for {cfg.num_workers} Train workers"
                + (f" + {actors} RRPO reward actors x {per_actor:g}" if actors else "")
                + f") but this Ray has {resources.get(unit, 0.0):g}: lower num_workers, "
                f"cpus_per_worker / use_gpu" + (", rrpo.reward_actors or its CPUs / GPUs"
                                                if actors else ""))


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


def train(cfg: TrainConfig, *, callbacks: tuple = (), export: bool = True,
          step_bar: bool = True) -> TrainResult:
    """Run (or resume) the training job and export ``OUTPUT/model``, metrics and loss curve.

    ``callbacks`` go to Ray Train's ``RunConfig`` (a tune trial passes ``TuneReportCallback``);
    ``export=False`` leaves the model in its checkpoint (a sweep exports none of its trials: the
    best one's recipe and checkpoint are in the sweep's ``best.json``); ``step_bar=False``
    leaves out rank 0's bar of steps (a sweep's trials report a line each instead).
    """
    from raglign.pipeline.train_loop import train_loop_per_worker
    from raglign.pipeline.train_validation import held_out, load_validation
    from raglign.ray_session import ray_session
    from raglign.training.checkpoint import slim_checkpoints
    from raglign.training.export import choose_export, export_model
    from raglign.training.loss_curve import plot_loss_curve
    from raglign.training.model_card import model_card

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
    out = cfg.output  # a path or storage URI
    storage.check_output(out)
    storage.makedirs(out)
    _check_resumable(cfg, storage.join(out, "train_config.yaml"))
    storage.write_text(storage.join(out, "train_config.yaml"), dump_yaml(cfg))

    local = cfg.num_workers == 0
    # Local mode needs no Ray cluster: the loop runs here and gets the table itself.
    with contextlib.ExitStack() as stack:
        if not local:
            _check_fits(cfg, stack.enter_context(ray_session(cfg.ray, log_dir=out)))
        import ray
        import ray.train
        from ray.train.torch import TorchTrainer

        reward_actors = []
        if cfg.rrpo is not None and cfg.rrpo.reward_actors:
            from raglign.pipeline.reward_actors import start_reward_actors, stop_reward_actors

            reward_actors = start_reward_actors(cfg.rrpo)
            stack.callback(stop_reward_actors, reward_actors)
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"config": cfg.model_dump(mode="json"), "validation": validation,
                               "step_bar": step_bar, "reward_actors": reward_actors,
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
        metrics = (Path(d) / "metrics.jsonl").read_text()
    storage.write_text(storage.join(out, "metrics.jsonl"), metrics)
    history = [json.loads(line) for line in metrics.splitlines() if line]
    step = state["step"]
    total = history[-1]["total_steps"] if history else step
    best = _best_trained(cfg, result, local)
    choice = choose_export(cfg, history, result.checkpoint, step, best)
    if export:
        export_model(cfg, choice.checkpoint, storage.join(out, "model"), model_card(
            cfg, provenance, table.num_rows, step, total, history, choice,
            validation.describe() if validation else None))
    if local:  # the loop's own temporary directories, nothing of Ray's
        for kept in {result.checkpoint.path, best[0].path if best else None} - {None}:
            shutil.rmtree(kept, ignore_errors=True)
    freed = 0
    if not local and step >= total:
        # a finished run's checkpoints keep their model weights only (docs/training.md, Disk)
        freed = slim_checkpoints([result.checkpoint, *(c for c, _ in result.best_checkpoints
                                                        or [])])
    slimmed = (f"; {freed / 2**20:.0f} MiB of optimizer/RNG state removed from its checkpoints"
               if freed else "")
    print(f"[raglign train] {choice.note}{slimmed}", flush=True)
    losses = [h["loss"] for h in history if "loss" in h]
    attribute = cfg.validation.score_attribute if cfg.validation else None
    if losses:
        with tempfile.TemporaryDirectory(prefix="raglign-plot-") as tmp:
            plot_loss_curve(history, Path(tmp) / "loss_curve.png",
                            f"raglign train: {cfg.objective}, {cfg.kind}-encoder "
                            f"{storage.name(cfg.model)}", attribute,
                            choice.step if attribute else None)
            storage.write_bytes(storage.join(out, "loss_curve.png"),
                                (Path(tmp) / "loss_curve.png").read_bytes())
    scores = None
    if attribute:
        scores = {"metric": cfg.validation.metric,
                  "step_0": {k: v for h in history if h["step"] == 0 for k, v in h.items()
                             if k.startswith("val_")},
                  "exported": {k: v for h in history if h["step"] == choice.step
                               for k, v in h.items() if k.startswith("val_")}}
    here = (lambda p: p) if storage.is_remote(out) else Path
    train_result = TrainResult(here(out), here(storage.join(out, "model")) if export else None,
                               step, total,
                               losses[-1] if losses else float("nan"),
                               None if local else result.checkpoint.path, choice.step,
                               choice.kind, choice.note, scores, round(freed / 2**20, 1))
    storage.write_text(storage.join(out, "train_result.json"), train_result.to_json())
    return train_result
