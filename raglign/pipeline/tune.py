"""``raglign tune``: Ray Tune sweeps over a train recipe (and the mine step before it).

Ray Train V2's pattern (docs.ray.io, "Hyperparameter Tuning with Ray Tune"): each trial is a
function trainable that builds the ``TorchTrainer`` -- through :func:`raglign.pipeline.train.train`,
the same code as ``raglign train`` -- with ``TuneReportCallback``, so every ``ray.train.report``
of its rank-0 worker (loss, the validation metrics, ``eval_round``) reaches Tune, where the
scheduler and searcher read them. The trial's Train run is named after the trial id and kept
under ``<storage>/train``, so a restarted trial (``max_failures``, or a re-run after the driver
died) resumes its own checkpoints; Train workers fail over inside a trial by the recipe's own
``max_failures``.

``output`` and ``storage_path`` are directories or storage URIs (``s3://``, ``gs://``):
everything the sweep writes -- Tune's experiment, the trials' Train runs, the mined data, the
report -- goes through :mod:`raglign.storage` or Ray's own pyarrow filesystems, and a re-run
resumes from whatever ``output`` holds.

The LLM labels are an input, never recomputed: a trial reads the mined Parquet, or mines it
from the labelled rows when a mining setting is swept. Mining of one configuration happens
once: its output directory is named by a hash of the mine recipe (``OUTPUT/mined/<hash>``) and
is mined by :class:`Miner`, one actor of the sweep that every trial asks for its data. The
actor holds a lock per configuration, so the first trial to ask has it mined and the others
wait for it and read it; a finished directory is recognised by its ``_summary.json``, which
``raglign mine`` writes last. Why an actor and not a file lock: an object store has no lock
and no atomic create-if-absent through pyarrow, and a file lock on a local disk only orders
the trials of one node; the actor orders every trial of the sweep on any node and any storage.
It lives as long as the driver: a killed sweep's half-mined directory (no ``_summary.json``)
is mined again, from the start, when the re-run's first trial asks for it. A mine step with
nothing swept runs here, before any trial.

Each trial's driver reserves ``driver_cpus`` (default 0: it only starts and watches its Train
workers) and 512 MiB of memory, so the number of trials at once follows the workers'
resources: ``max_concurrent_trials`` defaults to what the cluster holds of them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from raglign import console, storage
from raglign.config import dump_yaml, read_yaml
from raglign.data.io import parquet_files
from raglign.errors import ConfigError
from raglign.pipeline.tune_config import Space, TuneJobConfig
from raglign.training_config import TrainConfig

# Fields that may change between a sweep and its resumption: where and how fast it runs.
RESUMABLE_FIELDS = frozenset({"ray", "max_concurrent_trials", "max_failures", "driver_cpus"})
# What a trial's driver reserves besides ``driver_cpus``: Ray Tune places every trial in a
# placement group, which cannot be empty, and memory (the driver holds the training table it
# hands to its workers) is the resource it does use, without taking a CPU from the workers.
DRIVER_MEMORY_MB = 512


def _tune_space(space: Space):
    from ray import tune

    values = getattr(space, space.kind)
    if space.kind == "grid":
        return tune.grid_search(values)
    if space.kind == "choice":
        return tune.choice(values)
    return getattr(tune, space.kind)(*values)  # uniform, loguniform, randint


def mining_key(mine_cfg) -> str:
    """The name of one mining configuration's output: a hash of what it computes."""
    fields = mine_cfg.model_dump(mode="json", exclude={"output", "ray"})
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


def mined_dir(cfg: TuneJobConfig, values: dict[str, Any]) -> str | None:
    """Where the data of a trial with ``values`` is mined: one directory per mining
    configuration, named by what it computes, so trials that differ only in training settings
    share it (None without a mine step)."""
    if cfg.mine is None:
        return None
    return storage.join(cfg.output, "mined", mining_key(cfg.recipes(values)[1]))


def mine_if_absent(cfg: TuneJobConfig, values: dict[str, Any], progress=print) -> str:
    """The mined directory of ``values``, mined unless its ``_summary.json`` (written last)
    says it is complete. Not safe against a concurrent call for the same configuration: the
    sweep's :class:`Miner` orders those."""
    from raglign.pipeline.mine import run_mine

    out = mined_dir(cfg, values)
    if not storage.is_file(storage.join(out, "_summary.json")):
        run_mine(cfg.recipes(values)[1].model_copy(update={"output": out}), progress=progress)
    return out


class Miner:
    """The sweep's one mining actor (module docstring): ``mine`` returns the mined directory
    of a trial's values, mining each configuration once however many trials ask at once.

    A threaded actor: each waiting trial holds one of its threads, and mining runs in the
    thread of the first caller, under that configuration's lock.
    """

    def __init__(self, job: dict):
        self.cfg = TuneJobConfig.model_validate(job)
        self.guard = threading.Lock()
        self.locks: dict[str, threading.Lock] = {}

    def mine(self, values: dict[str, Any]) -> str:
        key = mined_dir(self.cfg, values)
        with self.guard:
            lock = self.locks.setdefault(key, threading.Lock())
        with lock:
            return mine_if_absent(self.cfg, values)


def start_miner(cfg: TuneJobConfig, concurrent: int):
    """The :class:`Miner` actor of this sweep, with a thread per trial that can wait on it. It
    reserves no CPU, as a trial's driver reserves none by default: mining is a short in-process
    step (no Ray tasks), and a reserved CPU would be taken from the trials' workers for the
    whole sweep."""
    import ray

    return ray.remote(Miner).options(num_cpus=0, max_concurrency=max(2, concurrent + 1)).remote(
        cfg.model_dump(mode="json"))


def ray_storage(cfg: TuneJobConfig) -> str:
    """Ray Tune's ``storage_path``: the one given, else ``OUTPUT/ray`` (absolute when local)."""
    if cfg.storage_path:
        return cfg.storage_path
    if storage.is_remote(cfg.output):
        return storage.join(cfg.output, "ray")
    return str(Path(storage.local_path(cfg.output)).resolve() / "ray")


def _check_resumable(cfg: TuneJobConfig, path: str) -> None:
    """A re-run of a sweep must sweep the same thing; say which fields differ."""
    if not storage.is_file(path):
        return
    old, new = read_yaml(path), cfg.model_dump(mode="json")
    changed = sorted(k for k in set(old) | set(new)
                     if k not in RESUMABLE_FIELDS and old.get(k) != new.get(k))
    if changed:
        raise ConfigError(f"{path}: the sweep in {cfg.output} was started with different "
                          f"settings ({', '.join(changed)} changed); resuming would mix two "
                          "sweeps. Use a new output, or restore the old values.")


def trial_resources(cfg: TuneJobConfig) -> tuple[dict[str, float], dict[str, float]]:
    """(one Train worker's resources, a whole trial's), the largest over the swept values. A
    trial's RRPO reward actors (:mod:`.reward_actors`) count in the trial's share."""
    recipes = [cfg.recipes({})[0]] + [cfg.recipes({k: v})[0] for k, s in cfg.param_space.items()
                                      for v in s.probes() if k.startswith("train.")]
    worker = {"CPU": max(float(r.cpus_per_worker) for r in recipes),
              "GPU": max(float(r.use_gpu) for r in recipes)}
    workers = max(r.num_workers for r in recipes)

    def actors(unit: str) -> float:
        return max((r.rrpo.reward_actors * getattr(r.rrpo, f"reward_actor_{unit}")
                    for r in recipes if r.rrpo is not None), default=0.0)

    trial = {"CPU": worker["CPU"] * workers + cfg.driver_cpus + actors("cpus"),
             "GPU": worker["GPU"] * workers + actors("gpus")}
    return worker, trial


def check_fits(cfg: TuneJobConfig, nodes: list[dict[str, float]]) -> int:
    """Trials the cluster runs at once (``max_concurrent_trials`` or what it holds); a
    ConfigError, before any trial, when one worker fits on no node or one trial not in the
    whole cluster."""
    worker, trial = trial_resources(cfg)
    needed = {k: v for k, v in worker.items() if v}
    if not any(all(node.get(k, 0) >= v for k, v in needed.items()) for node in nodes):
        largest = max(nodes, key=lambda n: n.get("CPU", 0), default={})
        raise ConfigError(
            f"a trial's Train worker asks for {_shown(needed)}, more than any node has (largest: "
            f"{_shown({k: largest.get(k, 0) for k in needed})}); lower train.cpus_per_worker or "
            "train.use_gpu, or add larger nodes")
    total = {k: sum(n.get(k, 0) for n in nodes) for k in trial}
    short = {k: v for k, v in trial.items() if v > total[k]}
    if short:
        raise ConfigError(f"a trial asks for {_shown(trial)} (num_workers x cpus_per_worker + "
                          f"driver_cpus + RRPO reward actors), more than the cluster's "
                          f"{_shown(total)}; lower train.num_workers or train.cpus_per_worker")
    if cfg.max_concurrent_trials:
        return cfg.max_concurrent_trials
    return max(1, min(int(total[k] // v) for k, v in trial.items() if v))


def _shown(resources: dict[str, float]) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in resources.items() if v or k == "CPU")


def _check_inputs(cfg: TuneJobConfig) -> None:
    """The sweep's input exists before any trial: the labelled rows (mine step) or the
    training data (train recipe), as each step would check it (MissingInputError)."""
    train_cfg, mine_cfg = cfg.recipes({})
    parquet_files(mine_cfg.input if mine_cfg is not None else train_cfg.data)
    if train_cfg.validation is not None and train_cfg.validation.data:
        parquet_files(train_cfg.validation.data)


def _finished_trials(experiment: str) -> int:
    from ray.tune import ExperimentAnalysis

    try:
        analysis = ExperimentAnalysis(experiment)
    except Exception:  # noqa: BLE001 -- an experiment that never saved its state: none finished
        return 0
    return sum(t.status == "TERMINATED" for t in analysis.trials)


def run_tune(cfg: TuneJobConfig, progress=print) -> dict[str, Any]:
    """Run (or resume) the sweep; write results.csv, best.json, best_train.yaml, report.md."""
    from raglign.pipeline.tune_report import SINKS, TrialLines, write_outputs
    from raglign.ray_session import ray_session

    cfg = cfg.resolved()
    out = cfg.output
    _check_inputs(cfg)
    storage.check_output(out)
    storage.makedirs(out)
    _check_resumable(cfg, storage.join(out, "tune_config.yaml"))
    storage.write_text(storage.join(out, "tune_config.yaml"), dump_yaml(cfg))
    if cfg.mine is not None and not any(k.startswith("mine.") for k in cfg.param_space):
        mine_if_absent(cfg, {}, progress)  # nothing of mining swept: once, before any trial
    started = time.perf_counter()
    # the State API: a trial the scheduler stops must give its Train workers' CPUs back
    with ray_session(cfg.ray, log_dir=out, state_api=True):
        import ray
        from ray import tune

        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        concurrent = check_fits(cfg, nodes)
        experiment = storage.join(ray_storage(cfg), cfg.name)
        from raglign.pipeline.tune_trial import run_trial

        miner = start_miner(cfg, concurrent) if cfg.mine is not None else None
        trainable = tune.with_resources(
            tune.with_parameters(run_trial, job=cfg.model_dump(mode="json"), miner=miner),
            {"cpu": cfg.driver_cpus, "memory": DRIVER_MEMORY_MB * 2**20})
        total = cfg.grid_size()
        SINKS[experiment] = progress
        lines = TrialLines(cfg, total, experiment)
        if tune.Tuner.can_restore(experiment):
            done = _finished_trials(experiment)
            progress(f"[raglign tune] resuming {experiment}: {done} of {total} trials already "
                     "finished, the others run (a trial that was running resumes its Train "
                     "checkpoints)")
            tuner = tune.Tuner.restore(experiment, trainable, resume_unfinished=True,
                                       resume_errored=True)
        else:
            progress(f"[raglign tune] {total} trials, up to {concurrent} at once; "
                     f"{cfg.search.algorithm} search, {cfg.scheduler.name} scheduler on "
                     f"{cfg.score_metric} ({cfg.mode}); experiment {experiment}")
            tuner = tune.Tuner(
                trainable,
                param_space={k: _tune_space(s) for k, s in cfg.param_space.items()},
                tune_config=tune.TuneConfig(
                    metric=cfg.score_metric, mode=cfg.mode, num_samples=cfg.num_samples,
                    search_alg=_searcher(cfg, concurrent), scheduler=_scheduler(cfg),
                    max_concurrent_trials=concurrent if cfg.search.algorithm == "optuna"
                    else None),
                run_config=tune.RunConfig(
                    name=cfg.name, storage_path=ray_storage(cfg),
                    failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
                    callbacks=[lines], verbose=1 if console.is_verbose() else 0))
        try:
            with _tune_output(), _no_credentials_in_runtime_envs():
                grid = tuner.fit()
        finally:
            SINKS.pop(experiment, None)
            if miner is not None:  # a session that outlives the sweep (a test's, a cluster's)
                ray.kill(miner)
        summary = write_outputs(cfg, grid, out)
    summary["wall_s"] = round(time.perf_counter() - started, 1)
    best = (f"best {cfg.score_metric} {summary['best_value']:.4f} (trial "
            f"{summary['best_trial']})" if summary["best_trial"] is not None else
            f"no trial reported {cfg.score_metric} ({summary['errors']} failed: see ray.log)")
    progress(f"[raglign tune] {summary['trials']} trials in {summary['wall_s']:.0f} s; {best}; "
             f"{storage.join(out, 'report.md')}")
    return summary


# The credential variables Ray Tune copies from the driver's environment into every trial
# actor's runtime env (``ray.tune.execution.class_cache.ENV_VARS_TO_PROPAGATE``, Ray 2.60).
CREDENTIAL_VARS = frozenset({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN",
                             "AWS_SESSION_TOKEN"})


@contextlib.contextmanager
def _no_credentials_in_runtime_envs():
    """Ray Tune without its copy of the driver's AWS credentials into the trials' runtime env.

    Tune's trial actors get ``runtime_env={"env_vars": …}`` holding ``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY`` and session tokens from the driver's ``os.environ``, and Ray
    writes every runtime env it creates, in plain text, to the session's
    ``runtime_env_agent.log`` ("Creating runtime env: …") and shows it in the dashboard and
    State API (ray-project/ray#39502 asks for secret env vars for this reason;
    tests/test_storage.py found the secret key there). Without it a trial's process takes the
    credentials where every other raglign worker does -- label and eval actors, Train workers,
    the mining actor: from the environment its node's Ray was started with (a local Ray: the
    driver's, inherited at ``ray.init``; a cluster: each node's, docs/cluster.md#storage), which
    Ray neither logs nor shows. Tune reads the set when it registers the trainable, in this
    process, so replacing it for the duration of ``fit`` is enough.
    """
    from ray.tune.execution import class_cache

    propagated = class_cache.ENV_VARS_TO_PROPAGATE
    class_cache.ENV_VARS_TO_PROPAGATE = propagated - CREDENTIAL_VARS
    try:
        yield
    finally:
        class_cache.ENV_VARS_TO_PROPAGATE = propagated


@contextlib.contextmanager
def _tune_output():
    """Ray Tune's own console output, off unless ``--verbose``: its new output engine prints
    the experiment's box and results path even at ``verbose=0``
    (``TuneTerminalReporter.experiment_started``), its legacy engine honours ``verbose=0``;
    ``RAY_AIR_NEW_OUTPUT=0`` is Ray's own switch between them."""
    if console.is_verbose():
        yield
        return
    before = os.environ.get("RAY_AIR_NEW_OUTPUT")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT")
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = before


def _searcher(cfg: TuneJobConfig, concurrent: int):
    """Optuna's TPE (Tune wraps it in a ConcurrencyLimiter), or Tune's variant generator,
    which takes the concurrency limit itself."""
    if cfg.search.algorithm == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(sampler=optuna.samplers.TPESampler(seed=cfg.search.seed))
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(max_concurrent=concurrent, random_state=cfg.search.seed)


def _scheduler(cfg: TuneJobConfig):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if cfg.scheduler.name == "fifo":
        return FIFOScheduler()
    s = cfg.scheduler
    return ASHAScheduler(time_attr="eval_round", max_t=s.max_t, grace_period=s.grace_period,
                         reduction_factor=s.reduction_factor)


def best_recipe(cfg: TuneJobConfig, values: dict[str, Any]) -> TrainConfig:
    """The runnable train recipe of a trial's values: trains into ``OUTPUT/best``."""
    mined = mined_dir(cfg, values)
    train_cfg, _ = cfg.recipes(values, trial_dir=storage.join(cfg.output, "best"),
                               mined_dir=mined)
    return train_cfg
