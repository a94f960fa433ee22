"""raglign on a real two-node Ray cluster on this machine, submitted as a user submits it, and
the fault drills of docs/cluster.md: a label actor killed mid-shard, an evaluation actor killed,
a Ray Train worker killed mid-training, the second node killed mid-labelling.

The cluster: ``ray start --head`` on 127.0.0.1 (2 CPUs) and a second node on 127.0.0.2 (1 CPU),
every port chosen free, the dashboard (Ray's job server) on loopback, each node's ``ray start
--block`` in its own process group, so the test stops -- and the drills kill -- only processes
it started (by process group; a drill's victim must be in one of those groups). Jobs go in with
``ray job submit --working-dir`` (the checkout is uploaded; its .gitignore keeps .venv and runs/
out, and the nodes get no PYTHONPATH, so the jobs run the uploaded code). Nothing here calls
``ray.init`` in the pytest process, so the session-wide local Ray of tests/conftest.py is never
touched. Marked ``cluster`` and left out of the default run (28 minutes on 2 cores busy with
other work): ``python -m pytest -m cluster tests/test_cluster.py -s`` (``-s`` shows what each
drill killed and when). Not under ``nice -n 19`` on a busy machine: ``ray start`` gives its
raylet a fixed 30 s to register, which a starved node misses (a node that exits is started
again, up to 3 times).

Keeping Ray on loopback (Ray 2.60, read from its source): ``ray start`` passes
``--node-ip-address`` and ``--address`` through ``services.resolve_ip_for_localhost``, which
replaces ``localhost``/``127.0.0.1`` by ``get_node_ip_address()`` -- the machine's outward
address, unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` makes it the loopback address. The head
is started with that switch (it then keeps 127.0.0.1, its GCS listens on 127.0.0.1 only, and the
job drivers it runs inherit the switch). The same switch makes ``ray start --address`` refuse to
join a cluster, so the second node starts without it and names the head as
``[::ffff:127.0.0.1]``: the IPv4-mapped IPv6 spelling of 127.0.0.1, on which the head's
dual-stack gRPC socket listens and which ``is_localhost`` does not rewrite (``127.1`` is not
rewritten either, but gRPC refuses it). Its own ``--node-ip-address=127.0.0.2`` is kept as is.
``RAY_agent_register_timeout_ms`` is raised because a raylet gives its dashboard agent 15-30 s
to start, too little on a loaded machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from raglign.config import validate
from raglign.data.io import read_rows, write_rows
from raglign.data.schema import candidate, make_row

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
HEAD_IP, WORKER_IP = "127.0.0.1", "127.0.0.2"
LABEL_ACTOR = "ray::MapWorker(MapBatches(LabelWorker))"
PROGRESS = re.compile(r"pid=(\d+)\) \[label\] (\S+): (\d+)/(\d+) rows")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ancestors(pid: int) -> list[int]:
    """The parent, grandparent, ... of ``pid`` (from /proc; OSError once it is gone)."""
    chain = []
    while pid > 1:
        stat = Path(f"/proc/{pid}/stat").read_text()
        pid = int(stat[stat.rindex(")") + 2:].split()[1])
        chain.append(pid)
    return chain


def _started(pid: int) -> int:
    """When ``pid`` started (clock ticks after boot): tells a process from a reused pid."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2:].split()[19])


def _clock(t0: float) -> str:
    return f"t={time.monotonic() - t0:5.1f}s"


class NodeExited(Exception):
    """``ray start --block`` ended while its node was starting."""


class Node:
    """One ``ray start --block`` in its own process group (its raylet, agents and workers)."""

    def __init__(self, name: str, args: list[str], env: dict, log: Path):
        self.name = name
        ports = [f"--{p}={_free_port()}" for p in (
            "node-manager-port", "object-manager-port", "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port", "metrics-export-port", "runtime-env-agent-port")]
        self.proc = subprocess.Popen(
            [RAY, "start", "--block", "--disable-usage-stats", *ports, *args], env=env,
            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)

    def processes(self, title: str = "") -> dict[int, str]:
        """Live descendants of this node's ``ray start`` whose command line (Ray's process
        title) starts with ``title``. By ancestry, not process group: Ray puts each worker
        in a process group of its own."""
        found = {}
        for pid in map(int, filter(str.isdigit, os.listdir("/proc"))):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                if cmd.startswith(title) and self.proc.pid in _ancestors(pid):
                    found[pid] = cmd.strip()
            except OSError:
                continue
        return found

    def kill(self) -> list[int]:
        """A node failure: SIGKILL to its ``ray start``, every process of its group and every
        other descendant (its workers) at once; returns the pids killed."""
        pids = sorted({self.proc.pid, *self.processes()})
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        return pids

    def stop(self) -> None:
        """SIGTERM to the group (``ray start --block`` then stops its node), then SIGKILL to
        whatever of it is left, workers included."""
        left = {pid: _started(pid) for pid in self.processes()}
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=60)
        for pid, started in left.items():
            with contextlib.suppress(OSError):
                if _started(pid) == started:  # the same process, not a reused pid
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


class Cluster:
    def __init__(self, root: Path):
        self.root = root
        # Ray's temp dirs hold its Unix sockets, whose paths may not exceed 107 bytes. One per
        # node, as on separate machines: nodes sharing one would share the directory each
        # node's runtime-env agent unpacks a job's working dir into, and a node that unpacks
        # it (replacing what is there) pulls it from under the job's driver on the other.
        self.ray_tmp = tempfile.mkdtemp(prefix="rgc-")
        self.worker_tmp = tempfile.mkdtemp(prefix="rgw-")
        self.port, dash = _free_port(), _free_port()
        self.dashboard = f"http://{HEAD_IP}:{dash}"
        base = {k: v for k, v in os.environ.items()
                if k not in ("PYTHONPATH", "RAY_ADDRESS") and not k.startswith("RAY_")}
        base.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
                    RAY_agent_register_timeout_ms="120000")
        self.head_env = {**base, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
        self.worker_env = {**base, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"}
        self.head_args = [
            "--head", f"--node-ip-address={HEAD_IP}", f"--port={self.port}", "--num-cpus=2",
            "--include-dashboard=true", f"--dashboard-host={HEAD_IP}", f"--dashboard-port={dash}",
            f"--ray-client-server-port={_free_port()}", f"--temp-dir={self.ray_tmp}"]
        self.head: Node | None = None
        self.worker: Node | None = None

    def start_head(self) -> None:
        self._start("head", self.head_args, self.head_env, [HEAD_IP])

    def start_worker(self) -> None:
        self._start("worker", [f"--address=[::ffff:{HEAD_IP}]:{self.port}",
                               f"--node-ip-address={WORKER_IP}", "--num-cpus=1",
                               f"--temp-dir={self.worker_tmp}"],
                    self.worker_env, [HEAD_IP, WORKER_IP])

    def _start(self, name: str, args: list[str], env: dict, ips: list[str],
               attempts: int = 3) -> None:
        """Start a node and wait until the cluster has ``ips`` alive. ``ray start`` gives its
        raylet a fixed 30 s to register (ray/_private/node.py) and exits when that passes, as
        it can on a loaded machine: then it is started again."""
        for attempt in range(1, attempts + 1):
            node = Node(name, args, env, self.root / f"{name}.log")
            setattr(self, name, node)
            try:
                self.wait_for(ips, node)
                return
            except NodeExited:
                node.stop()
                if attempt == attempts:
                    raise
                print(f"[cluster] ray start ({name}) exited during start-up; again "
                      f"({attempt}/{attempts})")

    def alive(self) -> list[str]:
        with urllib.request.urlopen(f"{self.dashboard}/api/v0/nodes", timeout=10) as r:
            nodes = json.load(r)["data"]["result"]["result"]
        return sorted(n["node_ip"] for n in nodes if n["state"] == "ALIVE")

    def wait_for(self, ips: list[str], starting: Node | None = None, timeout: float = 240) -> None:
        deadline, seen = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            if starting is not None and starting.proc.poll() is not None:
                raise NodeExited(starting.name)
            try:
                seen = self.alive()
            except (OSError, KeyError, ValueError):
                seen = None
            if seen == sorted(ips):
                return
            time.sleep(1)
        logs = "".join((self.root / f).read_text()[-2000:] for f in ("head.log", "worker.log")
                       if (self.root / f).exists())
        raise AssertionError(f"nodes {ips} not up within {timeout} s (alive: {seen})\n{logs}")

    def nodes(self) -> list[Node]:
        return [n for n in (self.head, self.worker) if n is not None]

    def owner(self, pid: int) -> Node:
        """The node ``pid`` descends from; a drill kills nothing else."""
        for node in self.nodes():
            if node.proc.pid in _ancestors(pid):
                return node
        raise AssertionError(f"pid {pid} is not a process of this test's cluster")

    def find(self, title: str) -> dict[int, Node]:
        return {pid: node for node in self.nodes() for pid in node.processes(title)}

    def job_log(self) -> str:
        """Every job driver's output (the head writes it under its session's logs)."""
        logs = Path(self.ray_tmp, "session_latest", "logs")
        return "".join(p.read_text(errors="replace") for p in sorted(logs.glob("job-driver-*.log")))

    def stop(self) -> None:
        for node in reversed(self.nodes()):
            node.stop()
        # Ray's logs outlive its temp dirs, beside the test's other files.
        for name, tmp in (("head", self.ray_tmp), ("worker", self.worker_tmp)):
            logs = Path(tmp, "session_latest", "logs")
            if logs.is_dir():
                shutil.copytree(logs, self.root / f"ray-logs-{name}", dirs_exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster")
    c = Cluster(root)
    try:
        c.start_head()
        c.start_worker()
        yield c
    finally:
        c.stop()


def submit(c: Cluster, args: list[str], log: Path) -> subprocess.Popen:
    """``ray job submit --working-dir <checkout> -- python -m raglign ARGS`` (blocking form,
    which follows the job's output and exits with its outcome), started in the background."""
    env = dict(c.worker_env, RAY_ADDRESS=c.dashboard)
    runtime_env = {"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}}
    return subprocess.Popen(
        [RAY, "job", "submit", "--address", c.dashboard, "--working-dir", str(REPO),
         "--runtime-env-json", json.dumps(runtime_env), "--",
         sys.executable, "-m", "raglign", *args],
        env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=REPO)


def finish(proc: subprocess.Popen, log: Path, timeout: float = 900) -> str:
    proc.wait(timeout=timeout)
    out = log.read_text(errors="replace")
    assert proc.returncode == 0 and "succeeded" in out, out[-5000:]
    return out


def wait_until(proc: subprocess.Popen, log: Path, what: str, cond, timeout: float = 600):
    """Poll ``cond()`` until it returns something truthy (returned); fail if the job ends
    first."""
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        assert proc.poll() is None, f"the job ended before {what}:\n" + log.read_text()[-4000:]
        assert time.monotonic() < deadline, f"not {what} within {timeout} s"
        time.sleep(0.2)


# ------------------------------------------------------------------------------ labelling
@pytest.fixture(scope="module")
def label_input(tmp_path_factory):
    rows = [make_row(f"q{i}", f"Question number {i}?", ["Paris"],
                     [candidate(f"q{i}-d{j}", f"Title {j}", f"Passage {j} of question {i}: Paris "
                                f"is {'the capital' if j == i % 4 else 'a city'} of France.",
                                4.0 - j, j == i % 4) for j in range(4)]) for i in range(24)]
    path = tmp_path_factory.mktemp("label-in")
    write_rows(rows, path)
    return path


@pytest.fixture(scope="module")
def generator_dir(tmp_path_factory, smollm_tokenizer) -> str:
    """A random Llama (SmolLM2's tokenizer) big enough that a 4-row shard takes seconds on a
    CPU, so that a drill can kill an actor in the middle of one."""
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=len(smollm_tokenizer), hidden_size=384,
                                   intermediate_size=1024, num_hidden_layers=6,
                                   num_attention_heads=6, num_key_value_heads=2,
                                   max_position_embeddings=2048, tie_word_embeddings=True)
    path = tmp_path_factory.mktemp("generator")
    transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).save_pretrained(path)
    smollm_tokenizer.save_pretrained(path)
    return str(path)


def _label_fields(label_input, out: Path, generator: str) -> dict:
    # 6 shards of 4 rows, labelled a row at a time (a progress line per row), 2 actors of
    # 1 CPU: one fits on each node, and a restarted one fits on the head.
    return dict(job="label", input=str(label_input), output=str(out),
                generator={"name": generator, "dtype": "float32"},
                signals=["answer_logprob", "loo_logprob"], context="concat", loo={"k": 3},
                shard_rows=4, batch_size=1, actors=2, cpus_per_actor=1, eval={"enabled": False})


@pytest.fixture(scope="module")
def label_reference(label_input, generator_dir):
    """The uninterrupted labels, computed in this process without Ray."""
    from raglign.pipeline.label import LabelConfig, label_in_process

    cfg = validate(LabelConfig, _label_fields(label_input, Path("unused"), generator_dir))
    return label_in_process(cfg, read_rows(label_input))


def _assert_label_rows(out: Path, reference: list[dict]) -> None:
    got = read_rows(out)
    assert [r["id"] for r in got] == [r["id"] for r in reference], "rows lost, duplicated or moved"
    for g, r in zip(got, reference):
        for cg, cr in zip(g["candidates"], r["candidates"], strict=True):
            for k in ("answer_logprob", "loo_logprob"):  # loo: None past its top k=3
                assert (cg[k] is None) == (cr[k] is None), (g["id"], cg["doc_id"], k)
                assert cr[k] is None or np.isclose(cg[k], cr[k], atol=1e-4), (g["id"], k)


def _run_label(c: Cluster, tmp_path: Path, label_input, generator: str):
    out = tmp_path / "out"
    recipe = tmp_path / "label.yaml"
    recipe.write_text(json.dumps(_label_fields(label_input, out, generator)))
    log = tmp_path / "submit.log"
    return submit(c, ["label", "--config", str(recipe)], log), out, log


def _progress(out: Path) -> list[tuple[int, str, int, int]]:
    """(pid, shard, rows done, shard rows) of every progress line forwarded to the job so far."""
    path = out / "ray.log"
    text = path.read_text(errors="replace") if path.exists() else ""
    return [(int(p), s, int(k), int(n)) for p, s, k, n in PROGRESS.findall(text)]


def _committed(out: Path) -> set[str]:
    return {p.stem for p in (out / "_shards").glob("*.json")}


def _lost_rows(out: Path, pids: set[int], committed: set[str]) -> int:
    """Rows the killed ``pids`` had labelled in shards not committed before the kill."""
    best: dict[str, int] = {}
    for pid, shard, k, _ in _progress(out):
        if pid in pids and shard not in committed:
            best[shard] = max(best.get(shard, 0), k)
    return sum(best.values())


def test_submitted_label_job_labels_on_both_nodes(cluster, tmp_path, label_input,
                                                  generator_dir, label_reference):
    """The uninterrupted job: its rows equal the in-process labels, and label actors ran on
    both nodes."""
    t0 = time.monotonic()
    proc, out, log = _run_label(cluster, tmp_path, label_input, generator_dir)
    hosts = set()
    while proc.poll() is None:
        hosts |= {node.name for node in cluster.find(LABEL_ACTOR).values()}
        time.sleep(0.2)
    finish(proc, log)
    print(f"\n[cluster] uninterrupted label job: {time.monotonic() - t0:.1f} s, actors on {hosts}")
    _assert_label_rows(out, label_reference)
    assert hosts == {"head", "worker"}


def test_drill_label_actor_killed_mid_shard(cluster, tmp_path, label_input, generator_dir,
                                            label_reference):
    """(d) A generator actor dies mid-shard (ray#59522): Ray restarts it, the shard's call is
    retried whole, the job completes with exactly the uninterrupted rows."""
    t0 = time.monotonic()
    proc, out, log = _run_label(cluster, tmp_path, label_input, generator_dir)

    def mid_shard():
        done = _committed(out)
        for pid, shard, k, n in _progress(out):
            if k < n and shard not in done and pid in cluster.find(LABEL_ACTOR):
                return pid, shard, k, n, done
        return None

    pid, shard, k, n, done = wait_until(proc, log, "a label actor is mid-shard", mid_shard)
    node = cluster.owner(pid)
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    print(f"\n[cluster] {_clock(t0)} killed label actor pid {pid} on {node.name} in shard "
          f"{shard} at {k}/{n} rows ({len(done)} of 6 shards committed)")
    finish(proc, log)
    took = time.monotonic() - t0
    _assert_label_rows(out, label_reference)
    redone = [(p, kk) for p, s, kk, _ in _progress(out) if s == shard and p != pid]
    assert redone, f"shard {shard} was not labelled again by another actor"
    print(f"[cluster] job succeeded {time.monotonic() - killed_at:.1f} s after the kill "
          f"({took:.1f} s in all); shard {shard} redone by pid {redone[0][0]}; rows labelled "
          f"and lost: {_lost_rows(out, {pid}, done)}")


# ----------------------------------------------------------------------------- evaluation
EVAL_ACTOR = "ray::MapWorker(MapBatches(_RerankActor))"
EVAL_PROGRESS = re.compile(r"\[eval drill\] rerank:.*?(\d+)/(\d+)")


@pytest.fixture(scope="module")
def eval_rows():
    words = ["apple", "river", "piano", "tiger", "copper", "violet", "harbor", "candle"]
    return [make_row(f"e{i}", f"Where is the {words[i % 8]} kept?", [words[i % 8]],
                     [candidate(f"e{i}-d{j}", f"T{j}", f"Document {j}: the {words[(i + j) % 8]} "
                                f"is kept in room {j} of house {i}.", 20.0 - j, j == (i % 5))
                      for j in range(20)]) for i in range(300)]


def test_drill_eval_actor_killed(cluster, tmp_path, eval_rows, tiny_bert_dir):
    """(c) One of two reranking actors of ``raglign eval`` dies mid-run: it is restarted, its
    batch recomputed, and every row comes back ranked exactly as the model ranks it."""
    from raglign.models.rerankers import load_reranker
    from raglign.pipeline.evaluate import EvalConfig, _ranking, rerank_scores

    write_rows(eval_rows, tmp_path / "data")
    fields = dict(job="eval", data=str(tmp_path / "data"), output=str(tmp_path / "run.json"),
                  reranker=str(tiny_bert_dir), reranker_kind="bi", name="drill", actors=2,
                  batch_size=4, n_boot=100)
    recipe = tmp_path / "eval.yaml"
    recipe.write_text(json.dumps(fields))
    log = tmp_path / "submit.log"
    t0 = time.monotonic()
    proc = submit(cluster, ["eval", "--config", str(recipe)], log)

    def mid_run():
        seen = EVAL_PROGRESS.findall(cluster.job_log())
        actors = cluster.find(EVAL_ACTOR)
        if seen and 0 < int(seen[-1][0]) < int(seen[-1][1]) and len(actors) == 2:
            return seen[-1], actors
        return None

    (done, total), actors = wait_until(proc, log, "evaluation is under way", mid_run)
    pid, node = sorted(actors.items())[0]
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    print(f"\n[cluster] {_clock(t0)} killed eval actor pid {pid} on {node.name} with {done}/"
          f"{total} rows ranked")
    finish(proc, log)
    print(f"[cluster] eval succeeded {time.monotonic() - killed_at:.1f} s after the kill "
          f"({time.monotonic() - t0:.1f} s in all)")
    import pyarrow.parquet as pq

    detail = {d["id"]: d for d in pq.read_table(tmp_path / "run.rows.parquet").to_pylist()}
    assert sorted(detail) == sorted(r["id"] for r in eval_rows), "rows lost or duplicated"
    cfg = validate(EvalConfig, fields)
    model = load_reranker(str(tiny_bert_dir), kind="bi")
    for row in eval_rows[::10]:
        scored = {**row, "rerank_scores": rerank_scores(model, row["question"],
                                                        row["candidates"], cfg.k1)}
        expected = [row["candidates"][i]["doc_id"] for i in _ranking(scored, cfg)]
        assert detail[row["id"]]["ranked_doc_ids"] == expected, row["id"]


# ------------------------------------------------------------------------------- training
TRAIN_WORKER = "ray::RayTrainWorker"


@pytest.fixture(scope="module")
def train_runs(cluster, tmp_path_factory, tiny_bert_dir):
    """The same 2-worker DDP run twice: uninterrupted, and with one worker killed after its
    first checkpoint. Returns both output directories."""
    from test_train import _groups, _write

    root = tmp_path_factory.mktemp("train")
    data = _write(_groups(), root / "groups")
    outs = {}
    for name in ("uninterrupted", "drill"):
        out = root / name
        fields = dict(job="train", data=data, output=str(out), model=str(tiny_bert_dir),
                      lr=1e-2, batch_size=8, epochs=4, max_length=32, num_workers=2,
                      cpus_per_worker=1, log_every=2, checkpoint_every=4, warmup_ratio=0.0)
        recipe = root / f"{name}.yaml"
        recipe.write_text(json.dumps(fields))
        log = root / f"{name}.log"
        t0 = time.monotonic()
        proc = submit(cluster, ["train", "--config", str(recipe)], log)
        if name == "drill":
            def first_checkpoint():
                # Registered, not merely written: Ray Train's snapshot names the latest one.
                snap = out / "ray" / "train" / "checkpoint_manager_snapshot.json"
                try:
                    latest = json.loads(snap.read_text())["latest_checkpoint_result"]
                except (OSError, ValueError, KeyError):
                    return None
                step = (latest or {}).get("metrics", {}).get("step", 32)
                workers = cluster.find(TRAIN_WORKER)
                return (step, workers) if step < 32 and len(workers) == 2 else None

            step, workers = wait_until(proc, log, "a checkpoint is registered", first_checkpoint)
            pid, node = sorted(workers.items())[-1]
            os.kill(pid, signal.SIGKILL)
            print(f"\n[cluster] {_clock(t0)} killed Ray Train worker pid {pid} on {node.name}; "
                  f"last checkpoint: step {step} of 32")
        finish(proc, log)
        print(f"[cluster] train ({name}): {time.monotonic() - t0:.1f} s")
        outs[name] = out
    return outs


def test_drill_train_worker_killed(train_runs):
    """(b) A Ray Train worker dies mid-training: the group restarts from the last checkpoint
    (FailureConfig(max_failures=3), the default) and finishes the same 32 steps, with the
    weights of the uninterrupted run (CPU, gloo: deterministic, as the RNG state of every rank
    is in the checkpoint)."""
    import torch

    results = {k: json.loads((v / "train_result.json").read_text()) for k, v in train_runs.items()}
    assert [(r["step"], r["total_steps"]) for r in results.values()] == [(32, 32)] * 2
    logs = "".join((p.read_text(errors="replace") for p in (
        train_runs["drill"] / "ray.log", train_runs["drill"].with_suffix(".log"))))
    resumed = re.findall(r"resumed from step (\d+)/32", logs)
    assert resumed, "the drill run did not restore a checkpoint"
    weights = {k: torch.load(Path(r["checkpoint"]) / "model.pt", map_location="cpu")
               for k, r in results.items()}
    diff = max((weights["drill"][k] - weights["uninterrupted"][k]).abs().max().item()
               for k in weights["uninterrupted"])
    losses = {k: [json.loads(line)["loss"] for line in (v / "metrics.jsonl").read_text().splitlines()
                  if "loss" in json.loads(line)] for k, v in train_runs.items()}
    print(f"\n[cluster] drill run resumed from step {resumed[0]}; max |weight difference| to "
          f"the uninterrupted run: {diff:.3g}; final loss {losses['drill'][-1]:.6f} vs "
          f"{losses['uninterrupted'][-1]:.6f}")
    assert diff == 0.0
    assert losses["drill"] == losses["uninterrupted"]


def test_drill_second_node_killed_mid_labelling(cluster, tmp_path, label_input,
                                                generator_dir, label_reference):
    """(a) The second node (raylet, agents, its label actor) dies mid-job: the actor is
    restarted on the head, its shard redone, and the rows equal an uninterrupted run's. The
    node is started again afterwards."""
    t0 = time.monotonic()
    proc, out, log = _run_label(cluster, tmp_path, label_input, generator_dir)

    def labelling_on_both():
        # Labelling has begun (a row is done somewhere) and the second node holds a label
        # actor: it has a shard in hand, as Ray Data gives each actor work as soon as it is
        # ready. (Its own progress lines travel through its log monitor and reach the driver
        # seconds late, too late to wait for on a shard of a few seconds.)
        done = _committed(out)
        on_worker = set(cluster.worker.processes(LABEL_ACTOR))
        return (on_worker, done) if on_worker and _progress(out) and len(done) < 6 else None

    pids, done = wait_until(proc, log, "labelling runs on both nodes", labelling_on_both)
    killed = cluster.worker.kill()
    killed_at = time.monotonic()
    print(f"\n[cluster] {_clock(t0)} killed node {WORKER_IP}: {len(killed)} processes (ray "
          f"start, raylet, agents, label actor(s) {sorted(pids)}); {len(done)} of 6 shards "
          "committed")
    try:
        finish(proc, log)
        took = time.monotonic() - t0
        _assert_label_rows(out, label_reference)
        print(f"[cluster] job succeeded {time.monotonic() - killed_at:.1f} s after the kill "
              f"({took:.1f} s in all); rows labelled and lost: {_lost_rows(out, pids, done)}")
    finally:
        cluster.start_worker()
