"""What a raglign command shows: its own lines and progress bars on the terminal; Ray's logs,
Ray Data's progress tables and Ray's worker output in the run's ray.log; ``--verbose`` puts
Ray's output back on the terminal."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from raglign.data.io import write_rows
from raglign.data.schema import candidate, make_row
from raglign.ray_session import no_model_loading_bars, worker_output_to
from test_train import groups_dir, tiny_bert_dir  # noqa: F401 (fixtures)

REPO = Path(__file__).resolve().parents[1]
# What Ray prints by itself: its log lines, Ray Data's execution plan and progress tables, the
# prefix of forwarded worker output, the core worker's C++ log lines.
RAY_MARKS = ("INFO", "Execution plan", "Running Dataset", "(MapWorker", "core_worker.cc")
# Ray core's C++ error, once per job with an actor pool, that a restartable actor (raglign's
# pools restart lost actors, docs/cluster.md) has constructor arguments in the object store --
# Ray Data's own (ray-project/ray#57733). Written to the driver's descriptor 2, which raglign
# points at ray.log.
RESTART_NOTICE = "has constructor arguments in the object store and max_restarts > 0"


@pytest.fixture(scope="module")
def label_job(tmp_path_factory, tiny_llama, smollm_tokenizer):
    """A tiny model directory and 8 rows to label: (model, input)."""
    root = tmp_path_factory.mktemp("console")
    tiny_llama.save_pretrained(root / "model")
    smollm_tokenizer.save_pretrained(root / "model")
    rows = [make_row(f"q{i}", f"Question {i}?", ["Paris"],
                     [candidate(f"q{i}-d{j}", "T", f"Passage {j}.", 1.0 - j, j == 0)
                      for j in range(3)]) for i in range(8)]
    write_rows(rows, root / "in")
    return str(root / "model"), str(root / "in")


def _label(label_job, out: Path, *flags: str) -> subprocess.CompletedProcess:
    model, data = label_job
    cmd = [sys.executable, "-m", "raglign", "label", data, str(out), "--signals",
           "answer_logprob", "--generator", model, "--dtype", "float32", "--actors", "2",
           "--batch-size", "2", *flags]
    proc = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_a_label_job_prints_its_lines_and_a_bar_and_logs_ray_to_the_run(label_job, tmp_path):
    out = tmp_path / "out"
    proc = _label(label_job, out)  # a private local Ray, as a user gets by default
    log = out / "ray.log"
    assert proc.stdout.splitlines() == [
        "[label] 4 shards of up to 2 rows, 8 rows; 0 shards already finished; signals: "
        "answer_logprob",
        f"Ray's output: {log} (raglign --verbose shows it here)",
        f"[label] done: 8 rows labelled, 0 rejected (4/4 shards) -> {out}"]
    assert "[label] rows" in proc.stderr and "8/8" in proc.stderr  # the bar
    terminal = proc.stdout + proc.stderr
    assert not [m for m in RAY_MARKS + (RESTART_NOTICE,) if m in terminal], terminal[-3000:]
    text = log.read_text()
    for mark in ("Started a local Ray instance", "Execution plan",
                 "(MapWorker(MapBatches(LabelWorker)) pid=", RESTART_NOTICE):
        assert mark in text, mark


def test_verbose_puts_ray_output_back_on_the_terminal(label_job, ray_local, tmp_path):
    out = tmp_path / "out"
    address = ray_local.get_runtime_context().gcs_address
    proc = _label(label_job, out, "--address", address, "--verbose")
    assert "Execution plan" in proc.stderr and "INFO" in proc.stderr
    assert "(MapWorker" in proc.stdout + proc.stderr
    assert not (out / "ray.log").exists() and "Ray's output" not in proc.stdout


def test_worker_lines_go_to_the_file_and_worker_bars_to_the_terminal(tmp_path, capfd):
    """A batch of forwarded worker output as Ray's log monitor delivers it: text lines are
    written to the log with Ray's prefix; a ``tqdm_ray`` state update is drawn as a bar."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    from ray.experimental.tqdm_ray import RAY_TQDM_MAGIC

    bar = {"__magic_token__": RAY_TQDM_MAGIC, "x": 3, "pos": 0, "desc": "[train] steps",
           "total": 16, "unit": "step", "ip": "10.0.0.9", "pid": 7, "uuid": "b1",
           "closed": True}
    handler = logging.FileHandler(tmp_path / "ray.log")
    with worker_output_to(handler):
        dispatcher.emit({"pid": 7, "actor_name": "RayTrainWorker", "is_err": True,
                         "lines": ["Setting up process group", json.dumps(bar)]})
    handler.close()
    assert (tmp_path / "ray.log").read_text() == (
        "(RayTrainWorker pid=7) Setting up process group\n")
    terminal = capfd.readouterr()
    assert "[train] steps:" in terminal.err  # a tqdm bar, drawn by Ray's own bar manager
    assert "process group" not in terminal.out + terminal.err


def test_a_closed_worker_bar_delivered_again_is_not_drawn_again(tmp_path, capfd):
    """Ray delivers a Train worker's lines twice; the repeated close must not open the bar
    again in Ray's bar manager (it would be printed once more when the driver exits)."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    from ray.experimental.tqdm_ray import RAY_TQDM_MAGIC, instance

    states = [{"__magic_token__": RAY_TQDM_MAGIC, "x": x, "pos": 0, "desc": "[train] steps",
               "total": 2, "unit": "step", "ip": "10.0.0.9", "pid": 8, "uuid": "b2",
               "closed": closed} for x, closed in [(0, False), (2, False), (2, True)]]
    handler = logging.FileHandler(tmp_path / "ray.log")
    with worker_output_to(handler):
        for state in states:  # each delivered twice, as Ray does
            for _ in range(2):
                dispatcher.emit({"pid": 8, "actor_name": "RayTrainWorker", "is_err": False,
                                 "lines": [json.dumps(state)]})
    handler.close()
    open_bars = [uuid for group in instance().bar_groups.values()
                 for uuid in group.bars_by_uuid]
    assert "b2" not in open_bars
    assert "2.00/2.00" in capfd.readouterr().err


def test_a_train_job_prints_its_lines_and_a_bar_of_steps(tmp_path, tiny_bert_dir, groups_dir):
    """Ray Train workers' lines go to ray.log; rank 0's bar of steps reaches the terminal."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "raglign", "train", groups_dir, str(out), "--model",
           tiny_bert_dir, "--max-length", "32", "--batch-size", "8", "--epochs", "1",
           "--num-workers", "1", "--max-steps", "3"]
    proc = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"Ray's output: {out / 'ray.log'} (raglign --verbose shows it here)" in proc.stdout
    assert all(line.startswith(("[raglign train]", "Ray's output", "trained ", "model: ",
                                "metrics: ", "stopped at max_steps"))
               for line in proc.stdout.splitlines()), proc.stdout
    assert "[raglign train] steps: 100%" in proc.stderr and "3.00/3.00" in proc.stderr  # the bar
    terminal = proc.stdout + proc.stderr
    assert not [m for m in RAY_MARKS + ("(RayTrainWorker",) if m in terminal], terminal[-3000:]
    assert "(RayTrainWorker pid=" in (out / "ray.log").read_text()


def test_model_loading_bars_are_off_only_inside_the_block():
    """A quiet session turns transformers' "Loading weights" bar off in the driver and leaves
    the process as it found it (a notebook's later loads draw their bars again)."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.enable_progress_bar()
    with no_model_loading_bars():
        assert not transformers_logging.is_progress_bar_enabled()
    assert transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    with no_model_loading_bars():
        pass
    assert not transformers_logging.is_progress_bar_enabled()  # was off: stays off
    transformers_logging.enable_progress_bar()
