"""The batch relabelling job: LLM signals for every candidate, on Ray Data actor pools.

Data flow (one Ray Dataset, streaming)::

    unfinished shard descriptors ──LabelWorker (actor pool; reads its shard)──▶ labelled rows
        ──driver: reassemble per shard──▶ part-<shard>.parquet + _shards/<shard>.json

* Each :class:`~raglign.pipeline.label.workers.LabelWorker` actor loads its models once in
  ``__init__`` (generator, document engine, sentence encoder — only those the chosen signals
  need), takes one shard per call and labels it ``batch_size`` rows at a time: it gathers every
  signal's requests for the batch, runs them deduplicated and batched
  (:mod:`raglign.signals.execute`), then lets each signal turn results into values.
* Output is committed per input shard by :class:`raglign.pipeline.shards.ShardStore`, so a
  killed job resumes where it stopped and ends with exactly the rows of an uninterrupted run.
* Rows without candidates or answers are not labelled: they go to ``_rejects.jsonl`` with the
  reason, and the summary counts them.

Signals express their LLM work as backend-neutral requests (:mod:`raglign.signals.base`), so
``backend: vllm`` and ``backend: http`` run the same signals through ``ray.data.llm`` processors
(:mod:`raglign.pipeline.label.llm`), except those that declare they read the model's internals.

Modules, each importing only those listed after it: ``job`` (run a job) > ``llm`` (the
``ray.data.llm`` path) > ``processors`` > ``request_rows`` > ``workers`` (the Ray Data actors) >
``rows`` (labelling a batch) > ``config`` (``LabelConfig``). The names below are the job's
Python API, importable from ``raglign.pipeline.label`` as before it was a package.
"""

from raglign.pipeline.label.config import LabelConfig, load_label_config
from raglign.pipeline.label.job import label_in_process, run_label
from raglign.pipeline.label.rows import label_rows, load_models, model_needs
from raglign.pipeline.label.workers import ShardWorker, map_shards

__all__ = ["LabelConfig", "ShardWorker", "label_in_process", "label_rows", "load_label_config",
           "load_models", "map_shards", "model_needs", "run_label"]
