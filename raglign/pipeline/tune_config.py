"""``TuneJobConfig``: the ``tune`` job — a base train recipe (optionally after a mine step), a
search space over its keys, the search algorithm, the scheduler and the trial budget.

A swept key is dotted into the base recipes: ``train.lr``, ``train.gumbel.tau``,
``mine.alpha``. Each value of the space must be one the recipe's own schema accepts, and that is
checked here, before any trial starts (grid and choice values each; uniform, loguniform and
randint at both ends), so a typo or an out-of-range bound fails with the recipe's own message
and the key named, not as a failed trial an hour into a sweep.

``search.algorithm``:

* ``random`` — Ray Tune's ``BasicVariantGenerator``: ``grid`` entries are crossed and every
  combination is repeated ``num_samples`` times with fresh random draws of the other entries;
* ``grid`` — every entry must be a ``grid``; ``num_samples`` repeats the full grid;
* ``optuna`` — Optuna's TPE sampler through ``ray.tune.search.optuna`` (no ``grid`` entries:
  TPE samples, it does not enumerate); ``num_samples`` trials in all.

``scheduler.name``: ``fifo`` runs every trial to the end; ``asha`` stops the worse trials at
rungs counted in validations (the train loop's ``eval_round``: 0 is the starting model, 1 the
first validation after training began), so ``grace_period: 1`` judges a trial after its first
``eval_every`` steps.

This module imports no torch or Ray, so config validation stays fast.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PositiveInt, ValidationError, model_validator

from raglign import storage
from raglign.config import JobConfig, StrictModel, format_validation_error, read_yaml, set_dotted
from raglign.errors import did_you_mean
from raglign.pipeline.mine import MineConfig
from raglign.training_config import VALIDATION_METRICS, TrainConfig

# Keys a trial sets itself (where its run lives, what it reads); sweeping them is an error.
TRIAL_KEYS = frozenset({"train.output", "train.run_name", "train.storage_path", "train.ray",
                        "mine.output", "mine.ray"})
KINDS = ("grid", "choice", "uniform", "loguniform", "randint")


class Space(StrictModel):
    """One swept key: exactly one of ``grid`` / ``choice`` (value lists), ``uniform`` /
    ``loguniform`` ([low, high], floats) or ``randint`` ([low, high), integers, as Ray Tune's)."""

    grid: list[Any] | None = None
    choice: list[Any] | None = None
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = None

    @model_validator(mode="after")
    def _one(self) -> Space:
        given = [k for k in KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(KINDS)} (got "
                             f"{', '.join(given) or 'none'})")
        values = getattr(self, self.kind)
        if self.kind in ("grid", "choice") and not values:
            raise ValueError(f"{self.kind} is empty: nothing to search")
        if self.kind in ("uniform", "loguniform", "randint") and not values[0] < values[1]:
            raise ValueError(f"{self.kind} needs low < high, got {list(values)}")
        if self.kind == "loguniform" and values[0] <= 0:
            raise ValueError(f"loguniform needs low > 0, got {values[0]}")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in KINDS if getattr(self, k) is not None)

    def probes(self) -> list[Any]:
        """The values the base recipe must accept: every listed value, or both ends."""
        values = getattr(self, self.kind)
        if self.kind == "randint":
            return [values[0], values[1] - 1]
        return list(values)

    def size(self) -> int | None:
        """How many distinct trials a grid entry makes (None for sampled entries)."""
        return len(self.grid) if self.kind == "grid" else None


class SearchOptions(StrictModel):
    algorithm: Literal["random", "grid", "optuna"] = "random"
    seed: int = Field(0, description="seed of the sampler (random draws, TPE)")


class SchedulerOptions(StrictModel):
    """ASHA's settings, in validations (``eval_round``), not steps: a trial's validations fall
    at the same fractions of training whatever its batch size or epochs."""

    name: Literal["fifo", "asha"] = "fifo"
    grace_period: PositiveInt = Field(1, description="validations before a trial can be stopped")
    reduction_factor: float = Field(2.0, gt=1, description="1/reduction_factor of the trials go "
                                                           "on at each rung")
    max_t: PositiveInt = Field(100, description="validations after which ASHA stops any trial")


def base_recipe(value: str | dict, job: str) -> tuple[dict, str]:
    """A base recipe as a mapping and where it came from (a YAML path or inline)."""
    if isinstance(value, dict):
        data, source = copy.deepcopy(value), f"the tune recipe's inline {job}: block"
    else:
        data, source = read_yaml(value), str(value)
    if data.setdefault("job", job) != job:
        raise ValueError(f"{source}: a {job} job is needed here, got job: {data['job']}")
    return data, source


class TuneJobConfig(JobConfig):
    """Sweep a train recipe's settings with Ray Tune; one Ray Train run per trial."""

    job: Literal["tune"] = "tune"
    train: str | dict[str, Any] = Field(description="the base train recipe: a jobs/train_*.yaml "
                                                    "path or an inline mapping")
    mine: str | dict[str, Any] | None = Field(
        None, description="a mine recipe run before training (path or mapping) when mining "
                          "settings are swept; its output is per mining configuration")
    param_space: dict[str, Space] = Field(description="dotted key -> {grid|choice|uniform|"
                                                      "loguniform|randint: …}")
    output: str = Field(description="results.csv, best.json, report.md, trials/, mined/ go "
                                    "here: a directory or a storage URI (s3://, gs://)")
    search: SearchOptions = SearchOptions()
    scheduler: SchedulerOptions = SchedulerOptions()
    num_samples: PositiveInt = 1
    max_concurrent_trials: PositiveInt | None = Field(
        None, description="default: as many as the cluster's CPUs (GPUs) hold trials' workers")
    metric: str | None = Field(None, description="val_<metric>; default: val_ + the base "
                                                 "recipe's validation.metric")
    mode: Literal["max", "min"] = "max"
    name: str = "tune"
    storage_path: str | None = None  # Ray Tune / Train storage (a path or URI); None: <output>/ray
    max_failures: int = Field(0, ge=-1, description="restarts of a failed trial (its Train run "
                                                    "resumes from its own checkpoints)")
    driver_cpus: float = Field(0.0, ge=0, description="CPUs reserved for each trial's driver, "
                               "which only starts and watches its Train workers")

    @model_validator(mode="after")
    def _check(self) -> TuneJobConfig:
        if not self.param_space:
            raise ValueError("param_space is empty: name at least one key to sweep")
        base = self.recipes({})[0]
        for key, space in self.param_space.items():
            if key in TRIAL_KEYS or key.split(".")[0] not in ("train", "mine") or "." not in key:
                raise ValueError(f"param_space key {key!r}: sweep train.<key> or mine.<key> "
                                 f"(not {', '.join(sorted(TRIAL_KEYS))}: each trial sets those)")
            if key == "train.base_merge":
                raise ValueError("param_space key 'train.base_merge': the merge happens at "
                                 "export, after validation, so every trial would report the "
                                 "same metric; merge the best model at several weights with "
                                 "`raglign models merge` and evaluate each (docs/training.md)")
            if key.startswith("mine.") and self.mine is None:
                raise ValueError(f"param_space key {key!r} needs a mine: recipe to sweep")
            if self.search.algorithm == "grid" and space.kind != "grid":
                raise ValueError(f"param_space key {key!r}: search.algorithm grid takes grid "
                                 f"entries only, got {space.kind}")
            if self.search.algorithm == "optuna" and space.kind == "grid":
                raise ValueError(f"param_space key {key!r}: Optuna samples, it does not "
                                 "enumerate a grid; use choice")
            for value in space.probes():
                self.recipes({key: value})
        if base.validation is None:
            raise ValueError("the train recipe has no validation block: a sweep needs a "
                             "validation metric to compare trials (validation.fraction or "
                             "validation.data)")
        if base.num_workers < 1:
            raise ValueError("the train recipe runs in local mode (num_workers: 0); a trial "
                             "runs its training on Ray Train workers: num_workers >= 1")
        known = [f"val_{m}" for m in VALIDATION_METRICS]
        if self.metric is not None and self.metric not in known:
            raise ValueError(f"metric {self.metric!r} is not one training reports"
                             f"{did_you_mean(self.metric, known)}; known: {', '.join(known)}")
        return self

    @property
    def score_metric(self) -> str:
        """The metric trials are compared on: ``metric``, or the base recipe's validation
        metric (``val_`` + ``validation.metric``, what picks its best checkpoint)."""
        return self.metric or self.recipes({})[0].validation.score_attribute

    def resolved(self) -> TuneJobConfig:
        """This job with its base recipes inline and ``output`` absolute: what a trial on any
        node runs and what a resumed sweep compares (a changed recipe file is a change)."""
        return self.model_copy(update={
            "train": _absolute(base_recipe(self.train, "train")[0]),
            "mine": (_absolute(base_recipe(self.mine, "mine")[0]) if self.mine is not None
                     else None),
            "output": (self.output if storage.is_remote(self.output)
                       else str(Path(storage.local_path(self.output)).resolve()))})

    def recipes(self, values: dict[str, Any], trial_dir: str | None = None,
                mined_dir: str | None = None) -> tuple[TrainConfig, Any]:
        """The base recipes with ``values`` (dotted keys) applied: ``(TrainConfig,
        MineConfig or None)``, validated; a rejected value names its key. ``trial_dir`` and
        ``mined_dir`` set where a trial writes and what it trains on."""
        train, train_src = base_recipe(self.train, "train")
        mine = base_recipe(self.mine, "mine") if self.mine is not None else None
        for key, value in values.items():
            step, rest = key.split(".", 1)
            set_dotted(train if step == "train" else mine[0], rest, value)
        # Where a trial writes is the job's: a base recipe needs no output of its own.
        train.update(output=trial_dir or "(per trial)")
        if trial_dir is not None:
            train["run_name"] = storage.name(trial_dir)
        if mine is not None:  # the mined data is per mining configuration (the job's)
            mine[0]["output"] = train["data"] = mined_dir or "(per mining configuration)"
        shown = ", ".join(f"{k}={v!r}" for k, v in values.items())
        suffix = f" with {shown}" if shown else ""
        mine_cfg = None
        if mine is not None:
            mine_cfg = _validated(MineConfig, mine[0], mine[1] + suffix)
        return _validated(TrainConfig, train, train_src + suffix), mine_cfg

    def planned_steps(self, values: dict[str, Any], total_steps: int) -> int:
        """The steps a trial with ``values`` runs when no scheduler stops it: its recipe's
        ``max_steps`` when that comes first."""
        max_steps = self.recipes(values)[0].max_steps
        return min(total_steps, max_steps) if max_steps else total_steps

    def grid_size(self) -> int | None:
        """Trials in the sweep when it is finite (grid entries crossed, times num_samples)."""
        sizes = [s.size() for s in self.param_space.values()]
        if self.search.algorithm == "optuna":
            return self.num_samples
        return math.prod(s for s in sizes if s is not None) * self.num_samples


def _absolute(recipe: dict) -> dict:
    """Relative paths of a recipe made absolute: a trial runs in its own directory (Ray Tune
    changes into it). Inputs always; models and generators only where such a local directory
    exists (otherwise they are registry names or hub ids)."""
    def fix(node: dict, key: str, must_exist: bool) -> None:
        value = node.get(key)
        if isinstance(value, str) and "://" not in value and not Path(value).is_absolute() \
                and (not must_exist or Path(value).exists()):
            node[key] = str(Path(value).resolve())

    for key in ("data", "input", "storage_path"):
        fix(recipe, key, must_exist=False)
    fix(recipe, "model", must_exist=True)
    if isinstance(recipe.get("validation"), dict):
        fix(recipe["validation"], "data", must_exist=False)
    for block in ("gumbel", "rrpo"):  # a generator spec's name, or its shorthand string
        node = recipe.get(block)
        if isinstance(node, dict):
            spec = node.get("generator")
            fix(*((spec, "name") if isinstance(spec, dict) else (node, "generator")),
                must_exist=True)
    return recipe


def _validated(cls, data: dict, source: str):
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ValueError(format_validation_error(e, source, cls)) from None
