"""Storage URIs against a real S3-compatible server (moto's, started here on loopback):
convert → label → mine → train → eval from ``s3://`` in to ``s3://`` out gives the rows and
metrics of the same pipeline on local paths; a label job killed after its first shard commit and
re-run on S3 ends with exactly the uninterrupted rows; bad storage input fails before any work,
naming the URI.

The endpoint and credentials reach raglign only through the standard environment variables,
set when this module is imported, i.e. before the session's Ray starts, so its worker
processes (label and eval actors) resolve ``s3://`` exactly as a cluster node configured with
those variables would.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile

import numpy as np
import pytest

pytest.importorskip("moto.server", reason="the S3 tests need moto[server] (raglign[test])")

from conftest import _free_port, kill_cli_when, serve  # noqa: E402
from raglign import storage  # noqa: E402
from raglign.config import validate  # noqa: E402
from raglign.data.io import read_rows  # noqa: E402
from raglign.errors import ConfigError, DataError, MissingInputError, StorageError  # noqa: E402

PORT = _free_port()
ENDPOINT = f"http://127.0.0.1:{PORT}"
BUCKET = "raglign-test"
os.environ.update({"AWS_ENDPOINT_URL": ENDPOINT, "AWS_ACCESS_KEY_ID": "testing",
                   "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                   "AWS_EC2_METADATA_DISABLED": "true",
                   # created by the first download, removed by the s3 fixture
                   "RAGLIGN_STORAGE_CACHE": os.path.join(tempfile.gettempdir(),
                                                         f"rg-s3cache-{os.getpid()}")})


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
                          secret_key="testing", region="us-east-1",
                          allow_bucket_creation=True).create_dir(BUCKET)
        yield f"s3://{BUCKET}"
    shutil.rmtree(os.environ["RAGLIGN_STORAGE_CACHE"], ignore_errors=True)


def _dpr_jsonl(n: int = 8) -> bytes:
    """``n`` DPR-format questions, 4 passages each (the gold one at a varying rank)."""
    lines = []
    for i in range(n):
        gold = i % 4
        ctxs = [{"id": f"q{i}-d{j}", "title": f"Title {j}",
                 "text": f"Passage {j} of question {i}: the answer is "
                         f"{'Paris' if j == gold else 'Lyon'}.",
                 "score": 4.0 - j, "isgold": j == gold} for j in range(4)]
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


def test_pipeline_from_s3_to_s3_equals_the_local_pipeline(s3, ray_local, tmp_path, tiny_dir,
                                                          tiny_bert_dir):
    local = _pipeline(str(tmp_path / "local"), tiny_dir, str(tiny_bert_dir), workers=0)
    # One Ray Train worker, so that checkpoints go to Ray Train's storage_path on s3:// (a
    # 1-worker run computes what local mode does: tests/test_train.py checks DDP against it).
    remote = _pipeline(f"{s3}/pipeline", tiny_dir, str(tiny_bert_dir), workers=1)
    assert [r["id"] for r in remote["canonical"]] == [f"q{i}" for i in range(8)]
    assert remote["canonical"] == local["canonical"]
    # Labels: the same numbers, computed by actors that read their shard from s3://.
    assert [r["id"] for r in remote["labelled"]] == [r["id"] for r in local["labelled"]]
    got = [c["answer_logprob"] for r in remote["labelled"] for c in r["candidates"]]
    want = [c["answer_logprob"] for r in local["labelled"] for c in r["candidates"]]
    assert len(got) == 32 and np.allclose(got, want, rtol=0, atol=1e-6)
    assert remote["mined"] == local["mined"]
    # Training wrote its output, exported model and Ray Train storage under s3://.
    assert remote["train"].model_dir == f"{s3}/pipeline/train/model"
    assert remote["train"].step == local["train"].step == 2
    assert storage.is_file(f"{s3}/pipeline/train/model/model.safetensors")
    assert storage.is_file(f"{s3}/pipeline/train/train_result.json")
    assert storage.is_file(f"{s3}/pipeline/train/loss_curve.png")
    assert f"{BUCKET}/pipeline/train/ray/" in str(remote["train"].checkpoint)
    assert any(f.endswith("/model.pt")
               for f in storage.list_files(f"{s3}/pipeline/train/ray", hidden=True))
    assert not (tmp_path / "s3:").exists(), "a URI was used as a local path"
    # Evaluation of the s3:// model on s3:// rows: the metrics of the local run.
    for key in ("n", "recall@1", "recall@2", "mrr", "ndcg@2"):
        assert remote["report"][key] == pytest.approx(local["report"][key], abs=1e-9), key
    assert [r["ranked_doc_ids"] for r in remote["eval_rows"]] == \
        [r["ranked_doc_ids"] for r in local["eval_rows"]]
    assert storage.read_json(f"{s3}/pipeline/eval/trained.json")["mrr"] == \
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
        with pytest.raises(StorageError, match=f"s3://{BUCKET}/out.*ACCESS_DENIED"):
            run_label(_label_cfg(good, denied, tiny_dir))
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
