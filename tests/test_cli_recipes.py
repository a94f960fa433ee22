"""Every command that takes a recipe merges it the same way (raglign.cli.recipe): recipe <
``--set`` < flags, a recipe of another job is refused naming the file and both jobs, and a bad
value from any of the three is one ConfigError with the field's dotted path (exit 2, stderr).

The configs are checked as the commands would run them (``job_config`` on the parsed arguments,
or the command with its run function replaced), so no job runs here.
"""

from __future__ import annotations

import re

import pytest
import yaml

from raglign.cli import build_parser, main
from raglign.cli.recipe import job_config, load_recipe, parse_sets
from raglign.errors import ConfigError

TRAIN = {"job": "train", "data": "groups", "output": "run", "model": "minilm-l6", "lr": 1e-3,
         "num_workers": 1, "validation": {"fraction": 0.25}, "eval_every": 2}

# command -> (its recipe, a flag and the field it sets, a --set and the field it sets)
RECIPES = {
    "retrieve": ({"job": "retrieve", "queries": "q", "corpus": "c", "output": "o", "k": 3},
                 (["--k", "7"], "k", 7), ("bm25_k1=1.2", "bm25_k1", 1.2)),
    "label": ({"job": "label", "input": "i", "output": "o", "signals": ["answer_logprob"],
               "generator": "smollm2-135m", "limit": 3},
              (["--limit", "7"], "limit", 7), ("loo.k=4", "loo.k", 4)),
    "mine": ({"job": "mine", "input": "i", "output": "o", "signal": "answer_logprob", "n": 3},
             (["--n", "7"], "n", 7), ("fixed_ranks=[3, 4]", "fixed_ranks", [3, 4])),
    "train": (TRAIN, (["--eval-every", "7"], "eval_every", 7),
              ("validation.metric=ndcg@5", "validation.metric", "ndcg@5")),
    "eval": ({"job": "eval", "data": "d", "output": "o.json", "k": 3},
             (["--k", "7"], "k", 7), ("ks=[1, 2]", "ks", [1, 2])),
    "demo": ({"job": "demo", "output": "o", "limit": 8},
             (["--limit", "9"], "limit", 9), ("test_fraction=0.4", "test_fraction", 0.4)),
    "tune": ({"job": "tune", "train": TRAIN, "output": "sweep",
              "param_space": {"train.lr": {"grid": [1e-3, 1e-2]}}},
             (["--output", "elsewhere"], "output", "elsewhere"),
             ("num_samples=3", "num_samples", 3)),
}


def _get(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _recipe(tmp_path, data: dict, name: str = "recipe.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _config(argv: list[str]):
    """The validated config the command of ``argv`` would run."""
    return job_config(build_parser().parse_args(argv))


@pytest.mark.parametrize("command", RECIPES)
def test_flags_override_the_recipe_and_set_reaches_any_field(command, tmp_path):
    recipe, (flag, flag_field, flag_value), (pair, set_field, set_value) = RECIPES[command]
    path = _recipe(tmp_path, recipe)
    assert _get(_config([command, "--config", path]), flag_field) == recipe[flag_field]
    cfg = _config([command, "--config", path, *flag, "--set", pair])
    assert _get(cfg, flag_field) == flag_value  # the flag beats the recipe
    assert _get(cfg, set_field) == set_value
    if command != "mine":  # mine runs without Ray: no --address
        assert _config([command, "--config", path, "--address", "auto"]).ray.address == "auto"
    # recipe < --set < flags, whichever order they are written in
    assert _get(_config([command, "--config", path, "--set", f"{flag_field}={recipe[flag_field]}"]
                        ), flag_field) == recipe[flag_field]
    assert _get(_config([command, *flag, "--config", path, "--set",
                         f"{flag_field}={recipe[flag_field]}"]), flag_field) == flag_value


@pytest.mark.parametrize("command", [c for c in RECIPES if c != "tune"])
def test_without_a_recipe_set_and_flags_build_the_same_config(command, tmp_path):
    recipe, (flag, flag_field, _), _ = RECIPES[command]
    sets = [a for key, value in recipe.items() if key not in ("job", flag_field)
            for a in ("--set", f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}")]
    cfg = _config([command, *sets, *flag])
    assert cfg == _config([command, "--config", _recipe(tmp_path, recipe), *flag])


def test_positional_arguments_and_flag_conversions_are_fields():
    cfg = _config(["retrieve", "q", "c", "o", "--bm25"])
    assert (cfg.queries, cfg.corpus, cfg.output, cfg.method) == ("q", "c", "o", "bm25")
    assert _config(["mine", "i", "o", "--signal", "s", "--fixed-ranks", "3,4,6"]).fixed_ranks \
        == [3, 4, 6]
    cfg = _config(["label", "i", "o", "--generator", "g", "--signals", "answer_logprob, attention"])
    assert (cfg.input, cfg.output, cfg.signals) == ("i", "o", ["answer_logprob", "attention"])
    assert _config(["demo", "--no-generate"]).generate is False
    cfg = _config(["train", "d", "o", "--validation-fraction", "0.1", "--validation-metric",
                   "ndcg@5"])
    assert (cfg.validation.fraction, cfg.validation.metric) == (0.1, "ndcg@5")


def test_the_tune_hook_sets_base_recipe_keys_and_swept_spaces(tmp_path):
    train = _recipe(tmp_path, TRAIN, "train.yaml")
    path = _recipe(tmp_path, {**RECIPES["tune"][0], "train": train})
    cfg = _config(["tune", "--config", path, "--set", "train.epochs=3", "--set",
                   "param_space.train.lr={grid: [1e-4]}", "--output", "o"])
    assert cfg.train["epochs"] == 3 and cfg.train["lr"] == 1e-3  # the file read, then changed
    assert cfg.param_space["train.lr"].grid == [1e-4] and cfg.output == "o"


def test_raglign_eval_applies_flags_given_with_a_recipe(tmp_path, monkeypatch):
    """It used to ignore them: `raglign eval --config X --k 7` ran the recipe's k."""
    import raglign.pipeline.evaluate

    ran = []
    monkeypatch.setattr(raglign.pipeline.evaluate, "evaluate", ran.append)
    path = _recipe(tmp_path, RECIPES["eval"][0])
    assert main(["eval", "--config", path, "--k", "7", "--name", "flagged"]) == 0
    assert (ran[0].k, ran[0].name, ran[0].data) == (7, "flagged", "d")


def test_grerank_mine_weights_builds_its_label_job_with_the_same_merge(tmp_path, monkeypatch):
    import raglign.pipeline.label

    class Ran(Exception):
        pass

    def run_label(cfg):
        raise Ran(cfg)

    monkeypatch.setattr(raglign.pipeline.label, "run_label", run_label)
    with pytest.raises(Ran) as ran:
        main(["grerank", "mine-weights", "d", "o", "--generator", "g", "--limit", "2",
              "--steps", "5", "--address", "auto"])
    cfg = ran.value.args[0]
    assert (cfg.input, cfg.generator.name, cfg.limit, cfg.gumbel.steps, cfg.ray.address) == \
        ("d", "g", 2, 5, "auto")


@pytest.mark.parametrize("command", RECIPES)
def test_a_recipe_of_another_job_is_refused_naming_the_file_and_both_jobs(command, tmp_path,
                                                                          capsys):
    other = "mine" if command != "mine" else "train"
    path = _recipe(tmp_path, RECIPES[other][0], f"{other}.yaml")
    assert main([command, "--config", path]) == 2
    err = capsys.readouterr().err
    assert path in err and f"job: {command}" in err and f"job: {other}" in err, err


def test_a_recipe_without_a_job_key_is_refused(tmp_path):
    path = _recipe(tmp_path, {"data": "d", "output": "o"})
    with pytest.raises(ConfigError, match=rf"{re.escape(path)}: `raglign train` runs recipes "
                                          r"with job: train; this one has no top-level `job:`"):
        load_recipe("train", path)


@pytest.mark.parametrize("argv,message", [
    (["--set", "lr=0"], r"with command-line overrides:\n  lr: Input should be greater than 0"),
    (["--lr", "0"], r"\n  lr: Input should be greater than 0 \(got 0.0\)"),
    (["--validation-fraction", "2"], r"\n  validation.fraction: Input should be less than 1"),
    (["--set", "validation.fractoin=0.1"],
     r"unknown key `validation.fractoin`.*did you mean `validation.fraction`"),
    (["--set", "gumbel.tua=0.5"], r"unknown key `gumbel.tua`.*did you mean `gumbel.tau`"),
    (["--set", "lr"], r"--set 'lr': expected KEY=VALUE"),
    (["--set", "lr=[1"], r"--set 'lr=\[1': the value is not valid YAML"),
])
def test_a_bad_value_is_one_config_error_with_the_dotted_path(argv, message, tmp_path, capsys):
    path = _recipe(tmp_path, TRAIN)
    assert main(["train", "--config", path, *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("raglign: error:") == 1 and "Traceback" not in err
    assert re.search(message, err), err


@pytest.mark.parametrize("argv,message", [
    (["retrieve", "q"], "`raglign retrieve` needs corpus, output (or corpus, output in the "
                        "--config recipe or a --set)"),
    (["eval", "d"], "`raglign eval` needs --output"),
    (["train"], "`raglign train` needs data, output"),
    (["mine", "i"], "`raglign mine` needs output"),
    (["label", "i", "o"], "invalid configuration in command line:\n  signals: Field required"),
])
def test_missing_arguments_are_config_errors_not_bare_exits(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_parse_sets_reads_yaml_values():
    assert parse_sets(["a.b=2", "c=1e-5", "d=[0, 0.5]", "e={grid: [1]}", "f=x=y", "g="]) == {
        "a.b": 2, "c": 1e-5, "d": [0, 0.5], "e": {"grid": [1]}, "f": "x=y", "g": None}
