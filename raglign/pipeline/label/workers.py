"""The Ray Data actors of the label job: one shard per call, labelled ``batch_size`` rows at a
time. :class:`LabelWorker` holds the models (transformers backend); the ``ray.data.llm`` path
finishes its shards with its own worker on the same base (:mod:`raglign.pipeline.label.llm`).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import asdict

import pyarrow as pa

from raglign.pipeline.label.config import LabelConfig
from raglign.pipeline.label.rows import label_rows, load_models, model_needs, output_schema
from raglign.pipeline.shards import Shard, read_shard
from raglign.signals import SIGNALS


def set_torch_threads(cfg: LabelConfig) -> int:
    """Threads for this worker: ``torch_threads``, else its CPU share (at least 1), so N actors
    on N cores do not each start one thread per core and thrash."""
    import torch

    n = cfg.torch_threads or max(1, int(cfg.cpus_per_actor))
    torch.set_num_threads(n)
    return n


class ShardWorker(ABC):
    """Base of the Ray Data label actors: each call gets shard *descriptors*, reads each shard
    inside the actor and labels it in slices of ``batch_size`` rows (:meth:`label`).

    Why not a read task followed by an actor map: Ray Data fuses the cheap read map into the
    actor map after it, and the fused operator bundles its inputs -- the one-row descriptors --
    up to the actor's batch size, so with 4 shards and ``batch_size: 8`` every shard went to
    one actor and the pool shrank to 1. Mapped with ``batch_size=1`` (:func:`map_shards`),
    each call is one shard and shards spread over the pool.
    """

    cfg: LabelConfig

    @abstractmethod
    def label(self, batch: pa.Table) -> pa.Table:
        """Labelled rows of ``batch`` (at most ``batch_size`` rows of one shard)."""

    def __call__(self, descriptors: pa.Table) -> pa.Table:
        out = []
        for d in descriptors.to_pylist():
            shard, started = Shard(**d), time.monotonic()
            table, step = read_shard(shard), self.cfg.batch_size
            for i in range(0, table.num_rows, step):
                out.append(self.label(table.slice(i, step)))
                if table.num_rows > step:  # progress inside a shard (Ray forwards actor stdout)
                    print(f"[label] {shard.name}: {min(i + step, table.num_rows)}/"
                          f"{table.num_rows} rows ({time.monotonic() - started:.0f}s)", flush=True)
        return pa.concat_tables(out, promote_options="permissive")


def map_shards(cfg: LabelConfig, todo: list[Shard], worker: type[ShardWorker],
               **constructor_kwargs):
    """A streaming Dataset of labelled rows: one shard per call of a ``worker`` actor pool."""
    import ray

    from raglign.ray_session import actor_pool_map

    ds = ray.data.from_items([asdict(s) for s in todo], override_num_blocks=len(todo))
    gpus = {"num_gpus": cfg.gpus_per_actor} if cfg.gpus_per_actor else {}
    return actor_pool_map(
        ds, worker, cfg.actors, cfg.ray,
        fn_constructor_kwargs={"config": cfg.model_dump(mode="json"), **constructor_kwargs},
        batch_size=1, batch_format="pyarrow", num_cpus=cfg.cpus_per_actor, **gpus)


class LabelWorker(ShardWorker):
    """Ray Data actor: loads the models once, labels whole shards."""

    def __init__(self, config: dict):
        self.cfg = LabelConfig.model_validate(config)
        set_torch_threads(self.cfg)
        self.signals = [SIGNALS[n] for n in self.cfg.signals]
        self.models = load_models(self.cfg, model_needs(self.signals, self.cfg))

    def label(self, batch: pa.Table) -> pa.Table:
        schema = output_schema(batch.schema, self.signals)
        rows = label_rows(batch.to_pylist(), self.signals, self.models, self.cfg)
        return pa.Table.from_pylist(rows, schema=schema)
