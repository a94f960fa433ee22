"""``raglign tune``: the search space reaches each trial's recipe exactly, bad input fails before
any trial, a sweep reads the labels once and never changes them, its validation numbers are
``raglign eval``'s, ASHA stops trials on the validation rounds, and a sweep whose driver was
killed resumes without re-running its finished trials.

Trials train the tiny dropout-free BERT of tests/test_train.py on the keyword task of
tests/test_train_validation.py, mined from labelled rows whose ``answer_logprob`` favours the
gold document and whose retrieval ``score`` is noise, so mining's ``alpha`` changes the data.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from raglign.config import validate
from raglign.data.io import write_rows
from raglign.errors import ConfigError
from raglign.pipeline.tune import _finished_trials, check_fits, trial_resources
from raglign.pipeline.tune_config import TuneJobConfig
from conftest import kill_cli_when
from test_train import tiny_bert_dir  # noqa: F401 (fixture: the dropout-free BERT)
from test_train_validation import _canonical

REPO = Path(__file__).resolve().parents[1]


def labelled_rows(n: int = 64) -> list[dict]:
    """Labelled rows as `raglign label` writes them: candidates with a signal and a score."""
    rng = random.Random(3)
    rows = _canonical("q", n, 0)
    for row in rows:
        for c in row["candidates"]:
            c["score"] = rng.uniform(0, 1)
            c["answer_logprob"] = (-0.5 if c["is_gold"] else -4.0) + rng.uniform(-0.2, 0.2)
    return rows


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("labelled")
    write_rows(labelled_rows(), path)
    return str(path)


def _train(model: str, data: str = "unused", **kw) -> dict:
    return {"job": "train", "data": data, "output": "unused", "model": model, "batch_size": 8,
            "epochs": 1, "max_length": 32, "num_workers": 1, "warmup_ratio": 0.0,
            "validation": {"fraction": 0.25}, "eval_every": 2, "lr": 1e-2, **kw}


def _mine(labelled: str) -> dict:
    return {"job": "mine", "input": labelled, "signal": "answer_logprob", "n": 2, "m": 3}


def _job(tmp_path, model, labelled, **kw) -> TuneJobConfig:
    fields = {"train": _train(model), "mine": _mine(labelled), "output": str(tmp_path / "sweep"),
              "param_space": {"mine.alpha": {"grid": [0.0, 1.0]}}} | kw
    return TuneJobConfig(**fields)


def _digest(path: str) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in Path(path).iterdir()}


# --- the recipe a trial runs ---------------------------------------------------------------

def test_param_space_reaches_the_trial_recipe_exactly(tmp_path, labelled):
    job = _job(tmp_path, "minilm-l6", labelled, param_space={
        "mine.alpha": {"uniform": [0.0, 1.0]}, "train.lr": {"loguniform": [1e-5, 1e-3]},
        "train.validation.metric": {"choice": ["mrr", "ndcg@5"]},
        "train.epochs": {"randint": [1, 4]}})
    values = {"mine.alpha": 0.3, "train.lr": 2.5e-4, "train.validation.metric": "ndcg@5",
              "train.epochs": 3}
    train, mine = job.recipes(values, trial_dir=str(tmp_path / "trials" / "t1"),
                              mined_dir=str(tmp_path / "mined" / "abc"))
    assert (train.lr, train.validation.metric, train.epochs) == (2.5e-4, "ndcg@5", 3)
    assert train.validation.fraction == 0.25 and train.batch_size == 8  # the rest: the base
    assert mine.alpha == 0.3 and mine.output == train.data == str(tmp_path / "mined" / "abc")
    assert (train.output, train.run_name) == (str(tmp_path / "trials" / "t1"), "t1")
    assert job.score_metric == "val_mrr" and job.grid_size() == 1


def test_a_base_recipe_file_and_set_overrides(tmp_path, labelled):
    from raglign.cli.tune import load_tune_job, parse_sets

    (tmp_path / "train.yaml").write_text(yaml.safe_dump(_train("minilm-l6")))
    (tmp_path / "tune.yaml").write_text(yaml.safe_dump({
        "job": "tune", "train": str(tmp_path / "train.yaml"), "mine": _mine(labelled),
        "output": str(tmp_path / "sweep"), "param_space": {"train.lr": {"grid": [1e-3, 1e-2]}}}))
    job = load_tune_job(str(tmp_path / "tune.yaml"), parse_sets(
        ["train.epochs=3", "num_samples=2", "param_space.mine.alpha={grid: [0, 0.5, 1]}"]))
    assert job.recipes({})[0].epochs == 3 and job.num_samples == 2
    assert job.grid_size() == 2 * 3 * 2
    resolved = job.resolved()  # inline and absolute: what a trial on any node reads
    assert resolved.train["epochs"] == 3 and Path(resolved.mine["input"]).is_absolute()


BAD = [
    ({"param_space": {"train.lrr": {"grid": [1e-3]}}}, r"train.lrr.*did you mean `lr`"),
    ({"param_space": {"train.lr": {"grid": [1e-3, 0]}}}, r"train.lr=0.*lr: Input should be "
                                                         r"greater than 0"),
    ({"param_space": {"train.lr": {"uniform": [0.0, 1e-3]}}}, r"train.lr=0.0.*greater than 0"),
    ({"param_space": {"train.gumble.tau": {"grid": [0.5]}}}, r"did you mean `gumbel`"),
    ({"param_space": {"mine.alpha": {"grid": [0.5, 2.0]}}}, r"mine.alpha=2.0.*alpha"),
    ({"param_space": {"train.base_merge": {"grid": [0.0, 0.5]}}},
     r"train.base_merge.*at export, after validation.*raglign models merge"),
    ({"param_space": {}}, "param_space is empty"),
    ({"param_space": {"train.lr": {"grid": []}}}, "grid is empty"),
    ({"param_space": {"train.lr": {"uniform": [1e-3, 1e-4]}}}, "low < high"),
    ({"param_space": {"train.lr": {"grid": [1e-3], "choice": [1e-4]}}}, "exactly one of"),
    ({"metric": "val_mmr"}, r"metric 'val_mmr' is not one training reports.*val_mrr"),
    ({"search": {"algorithm": "optuna"}}, "Optuna samples, it does not enumerate"),
    ({"param_space": {"train.lr": {"choice": [1e-3]}}, "search": {"algorithm": "grid"}},
     "grid takes grid entries only"),
    ({"param_space": {"train.output": {"grid": ["a"]}}}, "each trial sets those"),
    ({"param_space": {"lr": {"grid": [1e-3]}}}, r"sweep train.<key> or mine.<key>"),
]


@pytest.mark.parametrize("change,match", BAD)
def test_bad_input_names_the_key_before_any_trial(tmp_path, labelled, change, match):
    """As `raglign tune --config` reports it: one ConfigError naming the key or value."""
    fields = {"job": "tune", "train": _train("minilm-l6"), "mine": _mine(labelled),
              "output": str(tmp_path / "sweep"),
              "param_space": {"mine.alpha": {"grid": [0.0, 1.0]}}} | change
    with pytest.raises(ConfigError) as error:
        validate(TuneJobConfig, fields, "tune.yaml")
    assert re.search(match, str(error.value), re.S), str(error.value)


def test_a_base_recipe_without_validation_or_on_local_mode_is_rejected(tmp_path, labelled):
    train = _train("minilm-l6")
    del train["validation"], train["eval_every"]
    with pytest.raises(ValueError, match="no validation block"):
        _job(tmp_path, "minilm-l6", labelled, train=train)
    with pytest.raises(ValueError, match="num_workers >= 1"):
        _job(tmp_path, "minilm-l6", labelled, train=_train("minilm-l6", num_workers=0,
                                                           batch_size=8))


def test_trial_resources_are_checked_against_the_nodes(tmp_path, labelled):
    nodes = [{"CPU": 4.0, "memory": 1e9}, {"CPU": 2.0, "memory": 1e9}]
    job = _job(tmp_path, "minilm-l6", labelled, train=_train("minilm-l6", cpus_per_worker=2))
    assert check_fits(job, nodes) == 3  # a trial: 1 worker x 2 CPUs; 6 CPUs hold 3 ...
    job = _job(tmp_path, "minilm-l6", labelled, train=_train("minilm-l6", cpus_per_worker=2),
               param_space={"train.num_workers": {"grid": [1, 2]}})
    assert check_fits(job, nodes) == 1  # ... but the largest trial takes 2 x 2 of 6
    big = _job(tmp_path, "minilm-l6", labelled, param_space={
        "train.cpus_per_worker": {"grid": [1, 8]}})
    with pytest.raises(ConfigError, match=r"worker asks for 8 CPU, more than any node has "
                                          r"\(largest: 4 CPU\)"):
        check_fits(big, nodes)
    wide = _job(tmp_path, "minilm-l6", labelled, train=_train("minilm-l6", num_workers=8))
    with pytest.raises(ConfigError, match=r"a trial asks for 8 CPU.*more than the cluster's "
                                          r"6 CPU"):
        check_fits(wide, nodes)
    rrpo = _job(tmp_path, "minilm-l6", labelled, mine=None,
                param_space={"train.lr": {"grid": [1e-3, 1e-2]}},
                train=_train("minilm-l6", objective="rrpo",
                             rrpo={"reward_actors": 2, "reward_actor_cpus": 1.5}))
    assert trial_resources(rrpo)[1] == {"CPU": 4.0, "GPU": 0.0}  # 1 worker + 2 reward actors
    assert check_fits(rrpo, nodes) == 1
    gpu = _job(tmp_path, "minilm-l6", labelled, train=_train("minilm-l6", use_gpu=True))
    with pytest.raises(ConfigError, match="1 GPU"):
        check_fits(gpu, nodes)


# --- sweeps on Ray -------------------------------------------------------------------------

def test_a_sweep_mines_each_configuration_once_and_its_numbers_are_raglign_evals(
        tmp_path, ray_local, labelled, tiny_bert_dir):
    """Two mining configurations x two learning rates; 4 trials, 2 mined directories, the labels
    untouched, and each trial's validation at its best step equal to `raglign eval` of that
    checkpoint on the same held-out questions."""
    from raglign.models.rerankers import load_reranker
    from raglign.pipeline.evaluate import EvalConfig, evaluate
    from raglign.pipeline.train import build_reranker
    from raglign.pipeline.train_validation import held_out, load_validation
    from raglign.pipeline.tune import run_tune

    before = _digest(labelled)
    job = _job(tmp_path, tiny_bert_dir, labelled,
               train=_train(tiny_bert_dir, max_steps=4),
               param_space={"mine.alpha": {"grid": [0.0, 1.0]},
                            "train.lr": {"grid": [1e-2, 1e-4]}})
    lines = []
    summary = run_tune(job, progress=lines.append)
    out = tmp_path / "sweep"
    assert _digest(labelled) == before  # read, never rewritten
    mined = sorted(p for p in (out / "mined").iterdir() if p.is_dir())
    assert len(mined) == 2
    alphas = {json.loads((p / "_summary.json").read_text())["config"]["alpha"]: p for p in mined}
    assert set(alphas) == {0.0, 1.0}

    results = pd.read_csv(out / "results.csv")
    assert len(results) == summary["trials"] == 4 and set(results["status"]) == {"finished"}
    assert sum("[raglign tune] trial " in line for line in lines) == 4
    for _, row in results.iterrows():
        trial = yaml.safe_load((out / "trials" / row["trial_id"] / "train_config.yaml").read_text())
        assert trial["lr"] == row["train.lr"]
        assert trial["data"] == str(alphas[row["mine.alpha"]])  # its own mining, shared
        history = [json.loads(line) for line in (out / "trials" / row["trial_id"] /
                                                 "metrics.jsonl").read_text().splitlines()]
        rounds = [(h["step"], h["eval_round"]) for h in history if "val_mrr" in h]
        assert rounds == [(0, 0), (2, 1), (4, 2)]  # ASHA's time unit: one per validation
    best = json.loads((out / "best.json").read_text())
    top = results.sort_values("best_val_mrr", ascending=False).iloc[0]
    assert best["value"] == top["best_val_mrr"] and best["trial_id"] == top["trial_id"]
    assert (out / "best_train.yaml").read_text().count("lr: ") == 1
    assert all((out / name).stat().st_size > 0 for name in ("report.md", "curves.png",
                                                            "metric_vs_params.png"))

    # The best step's checkpoint, evaluated by `raglign eval` on the held-out questions.
    trial_cfg = TuneJobConfig.model_validate(json.loads(json.dumps(
        job.resolved().model_dump(mode="json")))).recipes(
            best["values"], trial_dir=str(out / "trials" / best["trial_id"]),
            mined_dir=best["recipe"]["data"])[0]
    validation = load_validation(trial_cfg, [], held_out(trial_cfg))
    model = build_reranker(trial_cfg)
    model.load_state_dict(torch.load(Path(best["checkpoint"]) / "model.pt"))
    model.save(tmp_path / "best_model")
    write_rows(validation.rows, tmp_path / "val_rows")
    report = evaluate(EvalConfig(data=str(tmp_path / "val_rows"), output=str(tmp_path / "e.json"),
                                 reranker=str(tmp_path / "best_model"), reranker_kind="cross"))
    assert report["mrr"] == pytest.approx(best["value"], abs=1e-12)
    assert load_reranker(str(tmp_path / "best_model"), kind="cross").kind == "cross"


def test_the_miner_mines_each_configuration_once_however_many_trials_ask_at_once(
        tmp_path, labelled, monkeypatch):
    """Six trials asking at once for two mining configurations: two mine runs, each trial
    gets its configuration's directory, and a configuration whose ``_summary.json`` is there
    (a finished directory of a killed sweep) is not mined again."""
    import threading
    import time

    from raglign import storage
    from raglign.pipeline import mine as mine_module
    from raglign.pipeline.tune import Miner

    runs = []

    def fake_run_mine(cfg, progress=print):  # slow enough for the trials to overlap
        runs.append(cfg.alpha)
        time.sleep(0.3)
        storage.write_json(storage.join(cfg.output, "_summary.json"), {"alpha": cfg.alpha})

    monkeypatch.setattr(mine_module, "run_mine", fake_run_mine)
    job = _job(tmp_path, "minilm-l6", labelled).resolved()
    miner = Miner(job.model_dump(mode="json"))
    got = {}
    asks = [threading.Thread(target=lambda i=i: got.__setitem__(
        i, miner.mine({"mine.alpha": float(i % 2)}))) for i in range(6)]
    for t in asks:
        t.start()
    for t in asks:
        t.join()
    assert sorted(runs) == [0.0, 1.0]
    assert len({got[i] for i in range(0, 6, 2)}) == len({got[i] for i in range(1, 6, 2)}) == 1
    assert json.loads(Path(got[1], "_summary.json").read_text()) == {"alpha": 1.0}
    assert Miner(job.model_dump(mode="json")).mine({"mine.alpha": 0.0}) == got[0]
    assert len(runs) == 2


def test_asha_judges_trials_by_validation_rounds(tmp_path, labelled):
    """ASHA's time unit is the train loop's `eval_round` (checked against a real run in the
    sweep test above), its rungs in validations."""
    from raglign.pipeline.tune import _scheduler

    job = _job(tmp_path, "minilm-l6", labelled, scheduler={
        "name": "asha", "grace_period": 2, "reduction_factor": 3, "max_t": 9})
    asha = _scheduler(job)
    assert (asha._time_attr, asha._max_t) == ("eval_round", 9)
    assert sorted(m for m, _ in asha._brackets[0]._rungs) == [2, 6]  # 2 x 3^k below 9


def test_a_killed_sweep_resumes_without_rerunning_finished_trials(tmp_path, ray_local, labelled,
                                                                tiny_bert_dir):
    """SIGKILL `raglign tune` when its first trial has finished, re-run the same command: the
    finished trial is not re-run (its files untouched), the other completes, two in all."""
    from raglign.pipeline.tune import run_tune

    out = tmp_path / "sweep"
    recipe = tmp_path / "tune.yaml"
    job = _job(tmp_path, tiny_bert_dir, labelled, param_space={"train.lr": {"grid": [1e-2, 1e-3]}},
               max_concurrent_trials=1)
    recipe.write_text(json.dumps(job.model_dump(mode="json")))
    address = ray_local.get_runtime_context().gcs_address
    experiment = out / "ray" / "tune"
    # Killed once Tune's saved experiment state records a finished trial.
    kill_cli_when(["tune", "--config", str(recipe), "--address", address],
                  lambda: experiment.is_dir() and _finished_trials(str(experiment)),
                  "a trial finished", timeout=300)
    first = list(out.glob("trials/*/train_result.json"))
    assert len(first) == 1, "both trials finished before the kill: nothing to resume"
    stamp = {p: p.stat().st_mtime_ns for p in first[0].parent.iterdir()}
    lines = []
    summary = run_tune(job, progress=lines.append)
    assert "1 of 2 trials already finished" in lines[0]
    assert [line for line in lines if "[raglign tune] trial " in line][0].startswith(
        "[raglign tune] trial 2/2")
    assert summary["trials"] == 2 and summary["errors"] == 0
    assert {p: p.stat().st_mtime_ns for p in first[0].parent.iterdir()} == stamp
    assert len(list(out.glob("trials/*/train_result.json"))) == 2


# --- the recipes ---------------------------------------------------------------------------

def _laptop_sets(recipe: Path) -> list[str]:
    """The `--set` pairs of the laptop command a recipe's comment gives."""
    import shlex

    lines = [line.lstrip("# ") for line in recipe.read_text().splitlines() if line.startswith("#")]
    start = next(i for i, line in enumerate(lines) if line.startswith("raglign tune --config"))
    command = []
    for line in lines[start:]:
        command.append(line.removesuffix("\\"))
        if not line.endswith("\\"):
            break
    words = shlex.split(" ".join(command))
    return [words[i + 1] for i, w in enumerate(words) if w == "--set"]


@pytest.mark.parametrize("name", ["tune_radio_alpha_hotpotqa", "tune_pdist_temperature_hotpotqa",
                                  "tune_grerank_hotpotqa", "tune_rrpo_hotpotqa"])
def test_recipes_load_as_written_and_with_their_laptop_settings(monkeypatch, name):
    """As written (cluster-sized) and with the `--set` line their comment gives for a laptop,
    which must fit a 2-CPU machine without a GPU."""
    from raglign.cli.tune import load_tune_job, parse_sets
    from raglign.config import load_job

    monkeypatch.chdir(REPO)  # recipes name their base recipes and data relative to the repo
    recipe = REPO / "jobs" / f"{name}.yaml"
    job = load_job(recipe)
    assert isinstance(job, TuneJobConfig) and job.score_metric.startswith("val_")
    sets = _laptop_sets(recipe)
    laptop = load_tune_job(str(recipe), parse_sets(sets))
    assert check_fits(laptop, [{"CPU": 2.0, "memory": 8e9}]) >= 1
    assert laptop.grid_size() < job.grid_size()


def test_a_sweep_where_no_trial_beats_the_start_says_so(tmp_path, labelled):
    """Trials that only tie the starting model: best.json names no checkpoint and the report
    says to keep the starting model; results.csv keeps every trial's numbers."""
    from types import SimpleNamespace

    from raglign.pipeline.tune_report import write_outputs

    job = _job(tmp_path, "minilm-l6", labelled, param_space={"train.lr": {"grid": [1e-3, 1e-2]}},
               mine=None, train=_train("minilm-l6", data=labelled)).resolved()
    out = tmp_path / "sweep"
    out.mkdir()

    def result(trial: str, lr: float, later: float) -> SimpleNamespace:
        rows = [{"step": 0, "val_mrr": 0.8, "total_steps": 4, "eval_round": 0},
                {"step": 2, "val_mrr": 0.8, "total_steps": 4, "eval_round": 1,
                 "checkpoint_path": f"/ckpt/{trial}/2"},
                {"step": 4, "val_mrr": later, "total_steps": 4, "eval_round": 2,
                 "checkpoint_path": f"/ckpt/{trial}/4"}]
        return SimpleNamespace(metrics={**rows[-1], "trial_id": trial, "time_total_s": 9.0},
                               metrics_dataframe=pd.DataFrame(rows), error=None,
                               path=str(out / trial), config={"train.lr": lr})

    summary = write_outputs(job, [result("t1", 1e-3, 0.7), result("t2", 1e-2, 0.75)], out)
    best = json.loads((out / "best.json").read_text())
    assert (best["beats_starting_model"], best["checkpoint"], best["step"]) == (False, None, 0)
    assert summary["beats_starting_model"] is False
    assert "**No trial beat the starting model**" in (out / "report.md").read_text()
    results = pd.read_csv(out / "results.csv")
    assert list(results["final_val_mrr"]) == [0.7, 0.75] and set(results["status"]) == {"finished"}


def test_a_sweep_whose_trials_all_failed_reports_them_without_a_best(tmp_path, labelled):
    """Every trial failed before its first validation: results.csv lists them as errors, no
    best.json or plot of the metric is written, and the summary has no best trial (the CLI
    then exits 1) instead of failing while drawing an empty plot."""
    from types import SimpleNamespace

    from raglign.pipeline.tune_report import write_outputs

    job = _job(tmp_path, "minilm-l6", labelled, param_space={"train.lr": {"grid": [1e-3, 1e-2]}},
               mine=None, train=_train("minilm-l6", data=labelled)).resolved()
    out = tmp_path / "sweep"
    out.mkdir()
    failed = [SimpleNamespace(metrics={"trial_id": t}, metrics_dataframe=None,
                              error=RuntimeError("validation.data: ..."), path=str(out / t),
                              config={"train.lr": lr}) for t, lr in (("t1", 1e-3), ("t2", 1e-2))]
    summary = write_outputs(job, failed, out)
    assert (summary["best_trial"], summary["errors"], summary["trials"]) == (None, 2, 2)
    assert set(pd.read_csv(out / "results.csv")["status"]) == {"error"}
    assert not [p.name for p in out.iterdir() if p.name in ("best.json", "metric_vs_params.png",
                                                            "curves.png")]
    report = (out / "report.md").read_text()
    assert "2 failed" in report and "No trial reported val_mrr" in report
    assert ".png" not in report


STATE_API_PROBE = """
import ray
from raglign.config import RayConfig
from raglign.ray_session import ray_session


@ray.remote(num_cpus=0)
def ask(actor_id):
    # the State API question Train V2's PlacementGroupCleaner asks (is_actor_alive), from inside
    # the cluster as it does; the address is given because the test session runs its own Ray
    # beside this one, and Ray resolves no address when two run on one machine
    from ray.util.state import get_actor
    from ray.util.state.exception import RayStateApiException

    try:
        state = get_actor(actor_id, address=ray.get_runtime_context().gcs_address, timeout=30)
        return "ok" if state and state.state != "DEAD" else "dead"
    except RayStateApiException:
        return "missing"


with ray_session(RayConfig(num_cpus=1), state_api={flag}):
    actor = ray.remote(num_cpus=0)(type("A", (), {{"f": lambda self: 1}})).remote()
    ray.get(actor.f.remote())
    print("STATE_API", ray.get(ask.remote(actor._actor_id.hex())))
"""


@pytest.mark.parametrize("flag", [True, False])
def test_the_sweeps_ray_serves_the_state_api_that_frees_stopped_trials(flag, tmp_path):
    """Train V2's PlacementGroupCleaner frees a stopped trial's workers' placement group only
    after the State API says its controller is gone; a local Ray serves that API only with
    ``state_api`` (its dashboard), which ``raglign tune`` asks for (without it an ASHA sweep on
    2 CPUs deadlocked after two stopped trials, docs/benchmarks.md "Ray Tune sweeps")."""
    import os
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", STATE_API_PROBE.format(flag=flag)], cwd=tmp_path,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert ("STATE_API ok" if flag else "STATE_API missing") in proc.stdout, proc.stdout


def test_raglign_tune_asks_for_the_state_api(monkeypatch, tmp_path, labelled, tiny_bert_dir):
    import contextlib

    import raglign.ray_session
    from raglign.pipeline.tune import run_tune

    asked = {}

    @contextlib.contextmanager
    def spy(config=None, **kw):
        asked.update(kw)
        raise RuntimeError("stop before any trial")
        yield  # pragma: no cover

    monkeypatch.setattr(raglign.ray_session, "ray_session", spy)
    with pytest.raises(RuntimeError, match="stop before any trial"):
        run_tune(_job(tmp_path, tiny_bert_dir, labelled))
    assert asked.get("state_api") is True
