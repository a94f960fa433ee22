"""Typed job configurations: pydantic v2 models loaded from YAML, validated with readable errors.

Each job (convert, retrieve, label, mine, train, eval, tune, demo …) defines one ``JobConfig``
subclass next to the code that runs it and lists it in :data:`JOBS`; a YAML recipe names its job
in a top-level ``job:`` key. Defaults follow the papers (../shared/design/methods.md).
"""

from __future__ import annotations

import importlib
import re
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from raglign import storage
from raglign.errors import ConfigError, MissingInputError, did_you_mean


class StrictModel(BaseModel):
    """Base for every config block: unknown keys are errors (a typo must not be ignored)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RayConfig(StrictModel):
    """Where to run: an existing cluster (``address``) or a local Ray started for this job; and
    how a job's actor pools (label, eval, retrieve) survive a lost actor or node.

    ``actor_restarts``: times Ray restarts a pool actor whose process or node died (it runs
    its constructor again, reloading its models); ``task_retries``: times a call that was
    running on a dead actor is sent again (to the restarted actor or another one), so a label
    shard in flight is redone whole. Neither retries a Python exception -- bad input still
    fails the job at once. Bounded, not Ray Data's unlimited default, so an actor that dies
    on every attempt (out of memory on one shard) fails the job with its cause instead of
    restarting forever; -1 is unlimited, 0 fails the job on the first death (docs/cluster.md).
    """

    address: str | None = None
    num_cpus: int | None = None
    num_gpus: int | None = None
    object_store_memory_mb: int = 512
    actor_restarts: int = Field(3, ge=-1)
    task_retries: int = Field(3, ge=-1)


class JobConfig(StrictModel):
    """Common to all jobs: the job's name (its YAML ``job:`` key) and where Ray runs."""

    job: str
    ray: RayConfig = RayConfig()


# job name → "module:ClassName"; imported lazily so `raglign --help` stays fast.
JOBS: dict[str, str] = {
    "eval": "raglign.pipeline.evaluate:EvalConfig",
    "demo": "raglign.pipeline.demo:DemoConfig",
    "label": "raglign.pipeline.label:LabelConfig",
    "mine": "raglign.pipeline.mine:MineConfig",
    "retrieve": "raglign.pipeline.retrieve:RetrieveConfig",
    "train": "raglign.training_config:TrainConfig",
    "tune": "raglign.pipeline.tune_config:TuneJobConfig",
}

C = TypeVar("C", bound=BaseModel)


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The config classes an annotation can hold (``X``, ``X | None``, ``list[X]`` …)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _fields_at(cls: type[BaseModel], path: tuple) -> list[str]:
    """The field names valid at ``path`` (an error's location without its last part) inside
    ``cls``; empty where the path leads out of config classes (a dict, a list index)."""
    models = [cls]
    for part in path:
        if isinstance(part, int):
            continue  # a list index: the item is the list's own model
        fields = [m.model_fields[part] for m in models if part in m.model_fields]
        models = [m for f in fields for m in _models_in(f.annotation)]
    return [name for m in models for name in m.model_fields]


def _dotted(loc: tuple) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def _unknown_key_line(loc: tuple, source: str, cls: type[BaseModel] | None) -> str:
    """``unknown key `ray.adress` in job.yaml (did you mean `ray.address`?)``; with no close
    name, the keys valid there, so the fix never needs the source code."""
    valid = _fields_at(cls, loc[:-1]) if cls else []
    prefix = "".join(f"{p}." for p in loc[:-1])
    line = f"unknown key `{_dotted(loc)}` in {source}"
    hint = did_you_mean(loc[-1], valid, prefix)
    if hint:
        return line + hint
    return line + (f"; valid keys{' under ' + prefix[:-1] if prefix else ''}: "
                   f"{', '.join(valid)}" if valid else "")


def _literal_choices(expected: str) -> list[str]:
    """The names in pydantic's ``'dense' or 'bm25'`` (a literal or enum error's ``expected``)."""
    return re.findall(r"'([^']*)'", expected)


def format_validation_error(err: ValidationError, source: str,
                            cls: type[BaseModel] | None = None) -> str:
    """One line per bad field: ``path.to.field: reason (got value)``, with the closest valid
    names for an unknown key or an invalid choice (``cls``, the validated class, knows the
    keys)."""
    lines = [f"invalid configuration in {source}:"]
    for e in err.errors():
        if e["type"] == "extra_forbidden":
            lines.append(f"  {_unknown_key_line(e['loc'], source, cls)}")
            continue
        got = e.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        hint = ""
        if e["type"] in ("literal_error", "enum") and isinstance(got, str):
            hint = did_you_mean(got, _literal_choices(e["ctx"]["expected"]))
        lines.append(f"  {_dotted(e['loc'])}: {e['msg']}{shown}{hint}")
    return "\n".join(lines)


def validate(cls: type[C], data: dict[str, Any], source: str = "<config>") -> C:
    """Build ``cls`` from ``data`` or raise :class:`ConfigError` naming each bad field."""
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source, cls)) from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from ``path`` (a file or a storage URI, e.g. the ``best_train.yaml`` a
    sweep wrote to ``s3://``), with a clear error for missing files and bad YAML."""
    try:
        data = yaml.safe_load(storage.read_text(path))
    except MissingInputError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def job_class(name: str) -> type[JobConfig]:
    """The config class registered for a job name."""
    if name not in JOBS:
        raise ConfigError(f"unknown job {name!r}{did_you_mean(name, JOBS)}; known jobs: "
                          f"{', '.join(sorted(JOBS))}")
    module, cls = JOBS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def load_job(path: str | Path, overrides: dict[str, Any] | None = None) -> JobConfig:
    """Load a job YAML (its ``job:`` key picks the config class), apply dotted overrides,
    validate; the command line's merge, which also checks the job, is
    :func:`raglign.cli.recipe.load_recipe`."""
    data = read_yaml(path)
    if "job" not in data:
        raise ConfigError(f"{path}: missing top-level key 'job' (one of {', '.join(sorted(JOBS))})")
    for dotted, value in (overrides or {}).items():
        set_dotted(data, dotted, value)
    return validate(job_class(data["job"]), data, str(path))


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """``data["a"]["b"] = value`` for ``"a.b"``: one override of a recipe. Mappings on the way
    are copied (a recipe shared with another config is not changed) and created where missing
    or not a mapping (``validation: null`` in the recipe, ``validation.fraction`` overridden);
    a string there is a block's shorthand for ``{name: string}`` (``generator: smollm2-135m``,
    ``generator.dtype`` overridden: raglign.models.generator_spec)."""
    node = data
    *parents, leaf = dotted.split(".")
    for part in parents:
        child = node.get(part)
        if isinstance(child, str):
            child = {"name": child}
        node[part] = child = dict(child) if isinstance(child, dict) else {}
        node = child
    node[leaf] = value


def dump_yaml(config: BaseModel) -> str:
    """The config as YAML (every default written out), for run directories and model cards."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
