"""Run (or resume) a labelling job: plan shards, label the unfinished ones on Ray Data, write
the summary and the signal evaluation. The transformers backend labels in :class:`LabelWorker`
actors; ``vllm`` and ``http`` go through :mod:`raglign.pipeline.label.llm`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from raglign import storage
from raglign.pipeline.label.config import LabelConfig
from raglign.pipeline.label.llm import label_shards_llm
from raglign.pipeline.label.rows import label_rows, load_models, model_needs
from raglign.pipeline.label.workers import LabelWorker, map_shards
from raglign.pipeline.shards import (COUNTS_COL, REJECT_COL, Shard, ShardCollector, ShardStore,
                                     choose_shard_rows, count_rows, plan_shards)
from raglign.signals import SIGNALS
from raglign.signals.base import Models

def run_label(cfg: LabelConfig, progress: Callable[[str], None] = print) -> dict:
    """Run (or resume) a labelling job; returns the summary also written to ``_summary.json``.

    Starts a private local Ray unless one is running or ``cfg.ray.address`` names a cluster.
    ``progress`` gets the job's first and last lines; rows show on a progress bar.
    """
    from raglign.console import progress_bar
    from raglign.ray_session import ray_session

    store = ShardStore(cfg.output, "label")
    shard_rows = choose_shard_rows(store, cfg.shard_rows, count_rows(cfg.input, cfg.limit),
                                   cfg.actors)
    shards = plan_shards(cfg.input, shard_rows, cfg.limit)
    store.open({**cfg.fingerprint(), "shard_rows": shard_rows,
                "inputs": [[storage.name(s.path), s.start, s.stop] for s in shards]})
    finished = store.finished()
    todo = [s for s in shards if s.name not in finished]
    total = sum(s.rows for s in shards)
    progress(f"[label] {len(shards)} shards of up to {shard_rows} rows, {total} rows; "
             f"{len(shards) - len(todo)} shards already finished; signals: "
             f"{', '.join(cfg.signals)}")
    started = time.monotonic()
    if todo:
        with ray_session(cfg.ray, log_dir=cfg.output), \
                progress_bar(sum(s.rows for s in todo), "[label] rows") as bar:
            collector = ShardCollector(store, todo, bar.update)
            if cfg.generator.backend == "transformers":
                _label_shards_ray(cfg, todo, collector, progress)
            else:
                label_shards_llm(cfg, todo, collector, progress)
        if not collector.finished():
            raise RuntimeError(f"labelling ended with unfinished shards: {sorted(collector.pending)}")
    elapsed = time.monotonic() - started
    done_rows = sum(s.rows for s in todo)
    summary = store.finish(shards, {
        "signals": cfg.signals, "generator": cfg.generator.name, "context": cfg.context,
        "backend": cfg.generator.backend, "rows_this_run": done_rows,
        "seconds_this_run": round(elapsed, 3),
        "rows_per_second_this_run": round(done_rows / elapsed, 4) if done_rows and elapsed else None,
    })
    if cfg.eval.enabled:
        from raglign.evaluate.signals import write_signal_eval

        summary["signal_eval"] = write_signal_eval(cfg.output, cfg.signals, cfg.eval.ks)
    unparse = summary["counts"].get("judge_unparseable")
    extra = f", {unparse} unparseable judge outputs" if unparse is not None else ""
    progress(f"[label] done: {summary['rows_out']} rows labelled, {summary['rows_rejected']} "
             f"rejected{extra} ({summary['shards_finished']}/{summary['shards']} shards) "
             f"-> {cfg.output}")
    return summary


# Executions of the map that a lost node or actor may fail, one after another, before the job
# gives up; each labels only the shards not committed yet.
NODE_LOSS_RETRIES = 3


def _label_shards_ray(cfg: LabelConfig, todo: list[Shard], collector: ShardCollector,
                      progress: Callable[[str], None]) -> None:
    """Label ``todo`` through the actor pool. Ray restarts a label actor lost with its node, but
    a block its task had already produced lives in that node's object store, and Ray Data
    fails the whole execution when it cannot get it (``ActorUnavailableError``, an object
    lost). Then the shards not committed yet are labelled again in a new execution, up to
    :data:`NODE_LOSS_RETRIES` times; committed shards are never redone. An error raised by the
    labelling code itself is not a lost node and is not retried."""
    from ray.exceptions import ObjectLostError, RayActorError

    left = todo
    for attempt in range(NODE_LOSS_RETRIES + 1):
        try:
            for block in map_shards(cfg, left, LabelWorker).iter_batches(batch_format="pyarrow",
                                                                         batch_size=None):
                collector.add(block)
            return
        except (RayActorError, ObjectLostError) as e:
            if attempt == NODE_LOSS_RETRIES:
                raise
            left = collector.restart()
            progress(f"[label] {type(e).__name__}: a label actor or its node was lost; labelling "
                     f"the {len(left)} unfinished shards again (retry {attempt + 1} of "
                     f"{NODE_LOSS_RETRIES})")


def label_in_process(cfg: LabelConfig, rows: list[dict], models: Models | None = None) -> list[dict]:
    """Label ``rows`` in this process without Ray (the plain loop the benchmark compares Ray
    Data against, and a convenience for notebooks); rejected rows are dropped."""
    signals = [SIGNALS[n] for n in cfg.signals]
    models = models or load_models(cfg, model_needs(signals, cfg))
    out = []
    for start in range(0, len(rows), cfg.batch_size):
        out += label_rows(rows[start:start + cfg.batch_size], signals, models, cfg)
    return [{k: v for k, v in r.items() if k not in (REJECT_COL, COUNTS_COL)}
            for r in out if r[REJECT_COL] is None]

