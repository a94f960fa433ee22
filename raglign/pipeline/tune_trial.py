"""One trial of ``raglign tune``, run by Ray Tune in its own actor: its mined data from the
sweep's mining actor, then ``raglign train``'s own code with Tune reporting
(raglign.pipeline.tune)."""

from __future__ import annotations

import ray
from ray.tune import get_context
from ray.tune.integration.ray_train import TuneReportCallback

from raglign import storage
from raglign.pipeline.train import train
from raglign.pipeline.tune import ray_storage
from raglign.pipeline.tune_config import TuneJobConfig


class ValidationReports(TuneReportCallback):
    """Ray Train's reports that carry the sweep's metric, and only those, go on to Tune.

    The train loop also reports the loss at log steps; Tune checks that every result holds the
    metric it compares (and Optuna reads it from each), so Tune sees one result per validation
    -- the step 0 starting model first. Every checkpoint is validated, so none is lost; the loss
    stays in the trial's metrics.jsonl.
    """

    def __init__(self, metric: str):
        super().__init__()
        self.metric = metric

    def after_report(self, run_context, metrics, checkpoint):
        if self.metric in metrics[0]:
            super().after_report(run_context, metrics, checkpoint)


def run_trial(config: dict, job: dict, miner=None) -> None:
    """Tune's function trainable: ``config`` holds the swept values (dotted keys), ``job`` the
    resolved tune job, ``miner`` the sweep's :class:`~raglign.pipeline.tune.Miner` (when it
    has a mine step). The Train run is named after the trial id, so a restarted trial resumes
    its own checkpoints."""
    cfg = TuneJobConfig.model_validate(job)
    trial_id = get_context().get_trial_id()
    mined = ray.get(miner.mine.remote(config)) if miner is not None else None
    train_cfg, _ = cfg.recipes(config, trial_dir=storage.join(cfg.output, "trials", trial_id),
                               mined_dir=mined)
    train_cfg.storage_path = storage.join(ray_storage(cfg), "train")
    train(train_cfg, callbacks=(ValidationReports(cfg.score_metric),), export=False,
          step_bar=False)
