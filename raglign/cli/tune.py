"""``raglign tune``: Ray Tune sweeps over a train recipe (docs/tuning.md)."""

from __future__ import annotations

from raglign.cli.recipe import add_recipe_args, job_config, load_recipe, parse_sets

# The tune job's Python API: load_tune_job(path, parse_sets(["num_samples=2", ...])).
__all__ = ["load_tune_job", "parse_sets", "set_tune_key"]


def set_tune_key(data: dict, key: str, value) -> None:
    """One override of a tune recipe (the tune job's hook into :mod:`raglign.cli.recipe`):
    ``train.*`` / ``mine.*`` keys go into the base recipe (read from its file first when the
    tune recipe names one), ``param_space.<key>`` replaces a swept key's space (the key holds
    dots of its own); any other key is set as in every other job."""
    from raglign.config import set_dotted
    from raglign.errors import ConfigError
    from raglign.pipeline.tune_config import base_recipe

    if key.startswith("param_space."):
        data.setdefault("param_space", {})[key.removeprefix("param_space.")] = value
        return
    step = key.split(".", 1)[0]
    if step in ("train", "mine") and "." in key and data.get(step) is not None:
        try:
            data[step] = base_recipe(data[step], step)[0]
        except ValueError as e:  # a base recipe of another job
            raise ConfigError(str(e)) from None
    set_dotted(data, key, value)


def load_tune_job(path: str, overrides: dict):
    """The tune recipe at ``path`` with ``overrides`` (``--set``'s) applied and validated: what
    ``raglign tune --config PATH --set ...`` runs, for Python callers."""
    return load_recipe("tune", path, overrides, set_key=set_tune_key)


def _tune(args) -> int:
    from raglign.pipeline.tune import run_tune

    summary = run_tune(job_config(args))
    return 0 if summary["best_trial"] is not None else 1


def register(sub) -> None:
    p = sub.add_parser("tune", help="sweep a train recipe's settings with Ray Tune (grid, "
                                    "random, Optuna TPE; FIFO or ASHA); re-running resumes")
    add_recipe_args(p, "tune", config_required=True, nested={"address": "ray.address"},
                    set_key=set_tune_key,
                    example="num_samples=2, train.max_steps=4 (into the base recipe), "
                            "'param_space.train.lr={grid: [3e-5, 6e-5]}'")
    p.add_argument("--output", help="the sweep's directory (overrides the recipe's output)")
    p.add_argument("--address", help="Ray cluster address (default: a private local Ray)")
    p.set_defaults(func=_tune)
