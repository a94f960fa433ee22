"""``raglign tune``: Ray Tune sweeps over a train recipe (docs/tuning.md)."""

from __future__ import annotations


def parse_sets(pairs: list[str]) -> dict:
    """``--set key=value`` pairs as overrides; values are YAML (``2``, ``1e-5``, ``[0, 0.5]``,
    ``{grid: [1, 2]}``). ``param_space.<key>`` names a whole swept key (which holds dots)."""
    import yaml

    from raglign.errors import ConfigError

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {pair!r}: expected key=value, e.g. --set num_samples=4")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {pair!r}: the value is not valid YAML: {e}") from None
    return out


def load_tune_job(path: str, overrides: dict):
    """The tune recipe at ``path`` with ``overrides`` applied: ``train.*`` / ``mine.*`` keys go
    into the base recipe (read from its file first when the tune recipe names one),
    ``param_space.<key>`` replaces a swept key's space; validated."""
    from raglign.config import read_yaml, validate
    from raglign.errors import ConfigError
    from raglign.pipeline.tune_config import TuneJobConfig, base_recipe, set_dotted

    data = read_yaml(path)
    if data.get("job") != "tune":
        raise ConfigError(f"{path}: `raglign tune` runs a tune job (job: tune), got "
                          f"job: {data.get('job')}")
    for key, value in overrides.items():
        if key.startswith("param_space."):
            data.setdefault("param_space", {})[key.removeprefix("param_space.")] = value
            continue
        step = key.split(".", 1)[0]
        if step in ("train", "mine") and "." in key and data.get(step) is not None:
            data[step] = base_recipe(data[step], step)[0]
        set_dotted(data, key, value)
    return validate(TuneJobConfig, data, path)


def _tune(args) -> int:
    from raglign.pipeline.tune import run_tune

    overrides = parse_sets(args.set or [])
    if args.output:
        overrides["output"] = args.output
    if args.address:
        overrides["ray.address"] = args.address
    summary = run_tune(load_tune_job(args.config, overrides))
    return 0 if summary["best_trial"] is not None else 1


def register(sub) -> None:
    p = sub.add_parser("tune", help="sweep a train recipe's settings with Ray Tune (grid, "
                                    "random, Optuna TPE; FIFO or ASHA); re-running resumes")
    p.add_argument("--config", required=True, help="a tune job YAML (jobs/tune_*.yaml)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a recipe key (YAML value), e.g. num_samples=2, "
                        "train.max_steps=4, 'param_space.train.lr={grid: [3e-5, 6e-5]}'; "
                        "repeatable")
    p.add_argument("--output", help="the sweep's directory (overrides the recipe's output)")
    p.add_argument("--address", help="Ray cluster address (default: a private local Ray)")
    p.set_defaults(func=_tune)
