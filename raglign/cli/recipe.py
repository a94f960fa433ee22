"""How every command turns a recipe, ``--set`` overrides and its flags into the config it runs.

One helper, so that ``raglign retrieve``, ``label``, ``mine``, ``train``, ``eval``, ``demo`` and
``tune`` agree on the rules (before it each command merged its own way and the copies
disagreed):

* precedence: the ``--config`` recipe < ``--set KEY=VALUE`` < the command's own flags (and
  positional arguments); without ``--config`` the same merge starts from the config's defaults;
* ``--set`` takes a dotted key (``validation.fraction=0.1``) and a YAML value (``2``, ``1e-5``,
  ``[3, 4]``, ``{grid: [1, 2]}``), so any field is reachable without a flag of its own;
* a recipe of another job (``raglign train --config jobs/label_x.yaml``) is an error naming the
  file and both jobs, before anything runs;
* a bad value, from any of the three, is one :class:`~raglign.errors.ConfigError` naming the
  field's dotted path (``raglign.cli.main`` prints it and exits with 2), never a traceback or a
  bare ``SystemExit``;
* ``--generator``, ``--backend``, ``--dtype`` and ``--device`` mean the same on every command
  that runs a model (:func:`add_generator_args`): they set ``name``, ``backend``, ``dtype`` and
  ``device`` of the config's generator spec
  (:class:`~raglign.models.generator_spec.GeneratorSpec`), keeping its other keys.

A command registers with :func:`add_recipe_args` and builds its config with
:func:`job_config`; :func:`load_recipe` is the same merge without argparse.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from raglign.config import JobConfig, job_class, read_yaml, set_dotted, validate
from raglign.errors import ConfigError

SetKey = Callable[[dict, str, Any], None]


class SetValueLoader(yaml.SafeLoader):
    """YAML for ``--set`` values, with YAML 1.2's floats: ``1e-5`` is a number (YAML 1.1 wants
    ``1.0e-5`` and reads ``1e-5`` as a string, which a swept ``{grid: [1e-5, 3e-5]}`` keeps)."""


SetValueLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+.0123456789"))


@dataclass(frozen=True)
class Recipe:
    """What :func:`job_config` needs to know about a command beyond its parsed arguments.

    ``nested``: flag destination -> dotted key, for flags that set a field inside a block
    (``address`` -> ``ray.address``); every other flag whose destination is a top-level field of
    the job's config sets that field. ``needs``: top-level key -> how the command line gives it
    (``"output"``, ``"--output"``), named when it is missing (pydantic's "field required" would
    not say which argument that is). ``set_key``: how one override is applied (the tune job's
    keys reach into its base recipes).
    """

    job: str
    nested: Mapping[str, str] = field(default_factory=dict)
    needs: Mapping[str, str] = field(default_factory=dict)
    set_key: SetKey = set_dotted


def add_recipe_args(parser: argparse.ArgumentParser, job: str, *, example: str,
                    config_required: bool = False, nested: Mapping[str, str] | None = None,
                    needs: Mapping[str, str] | None = None,
                    set_key: SetKey = set_dotted) -> None:
    """``--config`` and ``--set`` for a command that runs ``job``; ``example`` is a ``--set``
    shown in the help. :func:`job_config` then builds the command's config from the parsed
    arguments."""
    parser.add_argument("--config", required=config_required,
                        help=f"a YAML recipe with job: {job} (see jobs/); --set and flags "
                             "override it")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help=f"override a config field, dotted, with a YAML value (e.g. "
                             f"{example}); repeatable; applied after --config, before flags")
    parser.set_defaults(recipe=Recipe(job, dict(nested or {}), dict(needs or {}), set_key))


def add_generator_args(parser: argparse.ArgumentParser, block: str = "generator",
                       what: str = "LLM") -> dict[str, str]:
    """The generator flags, the same on every command; returns them as ``nested`` entries of
    :func:`add_recipe_args` (flag -> dotted key of ``block``'s spec). A recipe's shorthand
    ``generator: NAME`` becomes ``{name: NAME}`` when a flag reaches into it."""
    from raglign.models.generator_spec import BACKENDS, FLAG_FIELDS

    parser.add_argument("--generator", help=f"{what}: packaged short name, local dir, .gguf or "
                        "hub id (the generator spec's name)")
    parser.add_argument("--backend", choices=BACKENDS,
                        help="transformers (default), vllm (ray.data.llm engines on GPUs) or http "
                             f"(an OpenAI-compatible server: {block}.http.base_url)")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"],
                        help="the generator's weights (default auto: bf16 where fast)")
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N (transformers backend)")
    return {flag: f"{block}.{field}" for flag, field in FLAG_FIELDS.items()}


def parse_sets(pairs: list[str] | None) -> dict[str, Any]:
    """``--set key=value`` pairs as dotted overrides; values are YAML (``2``, ``1e-5``,
    ``[0, 0.5]``, ``{grid: [1, 2]}``), so a list or a mapping needs no flag syntax of its own."""
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {pair!r}: expected KEY=VALUE, e.g. --set limit=10")
        try:
            out[key.strip()] = yaml.load(value, SetValueLoader)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {pair!r}: the value is not valid YAML: {e}") from None
    return out


def flag_values(args: argparse.Namespace, recipe: Recipe) -> dict[str, Any]:
    """The flags given on the command line (argparse leaves the others None) as dotted keys.

    Flags are matched to the job's fields by destination name, so a new flag needs no entry
    anywhere else; a flag meant to mean "not given" must default to None (``store_const``, not
    ``store_true``).
    """
    fields = job_class(recipe.job).model_fields
    out = {name: value for name, value in vars(args).items()
           if name in fields and name not in ("job", "ray", *recipe.nested) and value is not None}
    out.update({key: getattr(args, dest) for dest, key in recipe.nested.items()
                if getattr(args, dest, None) is not None})
    return out


def load_recipe(job: str, path: str | Path | None = None, sets: Mapping[str, Any] | None = None,
                flags: Mapping[str, Any] | None = None, *,
                needs: Mapping[str, str] | None = None, set_key: SetKey = set_dotted) -> JobConfig:
    """The validated config of ``job``: the recipe at ``path`` (or only the defaults), then
    ``sets``, then ``flags``, each a mapping of dotted key -> value applied with ``set_key``.

    Raises :class:`ConfigError` for a recipe of another job (naming the file and both jobs), a
    missing top-level ``needs`` key (naming how the command line gives it) and any invalid field
    (its dotted path, with the closest valid names).
    """
    if path is None:
        data: dict[str, Any] = {"job": job}
        source = "command line"
    else:
        data = read_yaml(path)
        if data.get("job") != job:
            got = f"job: {data['job']}" if "job" in data else "no top-level `job:` key"
            raise ConfigError(f"{path}: `raglign {job}` runs recipes with job: {job}; this one "
                              f"has {got}")
        source = str(path) if not (sets or flags) else f"{path} with command-line overrides"
    for overrides in (sets or {}, flags or {}):
        for key, value in overrides.items():
            set_key(data, key, value)
    missing = {key: how for key, how in (needs or {}).items() if key not in data}
    if missing:
        raise ConfigError(f"`raglign {job}` needs {', '.join(missing.values())} (or "
                          f"{', '.join(missing)} in the --config recipe or a --set)")
    return validate(job_class(job), data, source)


def job_config(args: argparse.Namespace) -> JobConfig:
    """The config a command registered with :func:`add_recipe_args` runs, from its parsed
    arguments; callable without running the job (the tests check it that way)."""
    recipe: Recipe = args.recipe
    return load_recipe(recipe.job, args.config, parse_sets(args.set), flag_values(args, recipe),
                       needs=recipe.needs, set_key=recipe.set_key)
