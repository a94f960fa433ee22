"""`raglign train`: config, data validation, batching, checkpoint state, learning, DDP + resume.

The reranker is a tiny random BERT (hidden 32, 2 layers) with the real MiniLM tokenizer. Groups
are synthetic: the positive says "the <keyword> is the answer", negatives "the <other> is a
distractor", so a few optimizer steps suffice to rank positives first (the random model's scores
are flat: p(positive) = 1/7, and its top-1 choice is the positive for < 10 % of the groups).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from raglign.config import JOBS, load_job, validate
from raglign.errors import ConfigError, DataError
from raglign.training_config import SCORE_OBJECTIVES, TrainConfig

REPO = Path(__file__).resolve().parents[1]
WORDS = ["apple", "river", "piano", "tiger", "copper", "violet", "harbor", "candle", "meadow",
         "falcon", "glacier", "lantern", "orchid", "pepper", "saddle", "thunder"]


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> str:
    """A random 2-layer BERT without dropout, saved with MiniLM's tokenizer."""
    import transformers

    from raglign.models.registry import resolve_model

    tok = transformers.AutoTokenizer.from_pretrained(resolve_model("minilm-l6"))
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=64,
                                  max_position_embeddings=64, hidden_dropout_prob=0.0,
                                  attention_probs_dropout_prob=0.0)
    path = tmp_path_factory.mktemp("tiny_bert")
    transformers.BertModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def _groups(n: int = 64, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        kw = WORDS[i % len(WORDS)]
        others = [w for w in WORDS if w != kw]
        docs = [{"doc_id": f"{i}-0", "title": "", "text": f"the {kw} is the answer"}]
        docs += [{"doc_id": f"{i}-{j}", "title": "", "text": f"the {rng.choice(others)} is a distractor"}
                 for j in range(1, 7)]
        rows.append({"id": f"q{i}", "question": f"tell me about the {kw}", "docs": docs,
                     "labels": [1, 0, 0, 0, 0, 0, 0]})
    return rows


def _write(rows: list[dict], path: Path) -> str:
    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path / "part-00000.parquet")
    return str(path)


@pytest.fixture(scope="session")
def groups_dir(tmp_path_factory) -> str:
    return _write(_groups(), tmp_path_factory.mktemp("groups"))


def _cfg(data: str, model: str, output: Path, **kw) -> TrainConfig:
    base = {"data": data, "output": str(output), "model": model, "lr": 1e-2, "batch_size": 8,
            "epochs": 2, "max_length": 32, "num_workers": 0, "log_every": 2,
            "checkpoint_every": 4, "warmup_ratio": 0.0}
    return TrainConfig(**(base | kw))


# --- configuration ---------------------------------------------------------------------------

def test_objective_names_match_the_table_and_job_is_registered():
    from raglign.training.loss import SCORE_LOSSES as OBJECTIVES

    assert tuple(OBJECTIVES) == SCORE_OBJECTIVES
    assert JOBS["train"] == "raglign.training_config:TrainConfig"


def test_config_defaults_follow_the_papers():
    cfg = TrainConfig(data="d", output="o")
    assert (cfg.lr, cfg.weight_decay, cfg.epochs, cfg.max_length, cfg.warmup_ratio, cfg.seed) == \
        (6e-5, 0.01, 2, 512, 0.1, 42)
    assert cfg.score_temperature == 1.0 and TrainConfig(data="d", output="o", kind="bi").score_temperature == 0.02


@pytest.mark.parametrize("bad, match", [
    ({"objective": "dpo"}, "objective must be one of"),
    ({"in_batch_negatives": True}, "in_batch_negatives needs"),
    ({"batch_size": 6, "num_workers": 4}, "multiple of num_workers"),
    ({"similarity": "dot"}, "similarity applies to kind 'bi'"),
    ({"lr": 0}, "lr"),
])
def test_config_errors_name_the_field(bad, match):
    with pytest.raises(ConfigError, match=match):
        validate(TrainConfig, {"job": "train", "data": "d", "output": "o", **bad}, "t.yaml")


def test_recipes_load():
    for name in ("train_radio_nq.yaml", "train_pdist_hotpotqa.yaml"):
        cfg = load_job(REPO / "jobs" / name)
        assert isinstance(cfg, TrainConfig) and cfg.data.startswith("runs/")


def test_changed_settings_refuse_to_resume(tmp_path, groups_dir, tiny_bert_dir):
    from raglign.config import dump_yaml
    from raglign.pipeline.train import _check_resumable

    cfg = _cfg(groups_dir, tiny_bert_dir, tmp_path)
    (tmp_path / "train_config.yaml").write_text(dump_yaml(cfg))
    _check_resumable(cfg.model_copy(update={"num_workers": 2, "max_steps": 3}), tmp_path / "train_config.yaml")
    with pytest.raises(ConfigError, match=r"lr: 0.01 -> 0.001"):
        _check_resumable(cfg.model_copy(update={"lr": 1e-3}), tmp_path / "train_config.yaml")


# --- data ------------------------------------------------------------------------------------

def test_training_rows_errors_name_file_record_field(tmp_path):
    from raglign.training.tables import load_train_table

    rows = _groups(3)
    rows[1]["labels"] = [1, 1, 0, 0, 0, 0, 0]
    data = _write(rows, tmp_path / "two_pos")
    with pytest.raises(DataError) as e:
        load_train_table(data, "infonce")
    assert "part-00000.parquet, record q1, field 'labels'" in str(e.value)
    load_train_table(data, "supervised")  # several positives are fine for BCE

    with pytest.raises(DataError, match="field 'target': missing column"):
        load_train_table(data, "kl")
    target = [dict(r, target=[0.5, 0.3, 0.1, 0.0, 0.0, 0.0, 0.0]) for r in _groups(2)]
    with pytest.raises(DataError, match=r"record q0, field 'target'.*sums to 0.9"):
        load_train_table(_write(target, tmp_path / "t"), "kl")


def test_table_keeps_doc_text_and_ragged_groups_are_masked(tmp_path):
    from raglign.training.batches import make_batch
    from raglign.training.tables import load_train_table

    rows = [{"id": "a", "question": "q?", "docs": [{"doc_id": "1", "title": "T", "text": "x"},
                                                    {"doc_id": "2", "title": None, "text": "y"}],
             "target": [0.25, 0.75]},
            {"id": "b", "question": "r?", "docs": [{"doc_id": "3", "title": "", "text": "z"}],
             "target": [1.0]}]
    table, _ = load_train_table(_write(rows, tmp_path / "ragged"), "kl")
    batch = make_batch(table, [0, 1])
    assert batch.docs == [["T\nx", "y"], ["z", ""]]
    assert batch.mask.tolist() == [[True, True], [True, False]]
    assert batch.values.tolist() == [[0.25, 0.75], [1.0, 0.0]]


def test_global_batches_partition_the_epoch_for_any_world_size():
    from raglign.training.batches import epoch_permutation, micro_batch_rows

    perm0 = epoch_permutation(40, 42, 0)
    assert perm0 == epoch_permutation(40, 42, 0) and perm0 != epoch_permutation(40, 42, 1)
    one = TrainConfig(data="d", output="o", batch_size=8, num_workers=1)
    four = TrainConfig(data="d", output="o", batch_size=8, num_workers=2, grad_accumulation=2)
    for step in range(5):
        whole = micro_batch_rows(perm0, step, one, 0, 1, 0)
        parts = [micro_batch_rows(perm0, step, four, r, 2, a) for a in range(2) for r in range(2)]
        assert sorted(r for p in parts for r in p) == sorted(whole)
        assert all(len(p) == 2 for p in parts)
        assert whole == perm0[step * 8:(step + 1) * 8]


def test_micro_batches_are_dealt_by_size_the_same_for_workers_and_accumulation():
    from raglign.training.batches import balanced_slots, micro_batch_rows

    # Step 1 of a batch-8 epoch in data order is rows 8..15: two small rows, then sizes 10..17.
    perm = list(range(24))
    sizes = [1] * 8 + [1, 1, 10, 11, 12, 13, 14, 17] + [1] * 8
    rows = perm[8:16]
    # Largest first to the lightest slot not yet full, by hand (slot loads after each row):
    # 15 (17) -> s0 [17, 0]; 14 -> s1 [17, 14]; 13 -> s1 [17, 27]; 12 -> s0 [29, 27];
    # 11 -> s1 [29, 38]; 10 -> s0 [39, 38]; equal sizes in perm order: 8 -> s1 [39, 39], full;
    # 9 -> s0 [40, 39]. Each slot keeps perm order.
    dealt = balanced_slots(rows, sizes, 2)
    assert dealt == [[9, 10, 12, 15], [8, 11, 13, 14]]
    load = [sum(sizes[r] for r in s) for s in dealt]
    contiguous = [sum(sizes[r] for r in rows[:4]), sum(sizes[r] for r in rows[4:])]
    assert load == [40, 39] and contiguous == [23, 56]
    # The same slots whether they are 2 workers or 1 worker accumulating twice.
    workers = TrainConfig(data="d", output="o", batch_size=8, num_workers=2)
    accumulate = TrainConfig(data="d", output="o", batch_size=8, num_workers=1,
                             grad_accumulation=2)
    for slot in range(2):
        assert micro_batch_rows(perm, 1, workers, slot, 2, 0, sizes) == dealt[slot]
        assert micro_batch_rows(perm, 1, accumulate, 0, 1, slot, sizes) == dealt[slot]
    # One slot is the step's rows in perm order, with or without sizes.
    one = TrainConfig(data="d", output="o", batch_size=8, num_workers=1)
    assert micro_batch_rows(perm, 1, one, 0, 1, 0, sizes) == rows
    assert micro_batch_rows(perm, 1, one, 0, 1, 0) == rows


def test_row_sizes_count_the_question_and_every_document():
    import pyarrow as pa

    from raglign.training.batches import row_sizes

    table = pa.table({"question": ["ab", "", "wxyz"],
                      "docs": [["abc", "d"], [], ["é€", "", "1234567"]]})
    assert row_sizes(table) == [2 + 4, 0, 4 + 9]
    assert row_sizes(table.slice(1)) == [0, 13]  # a sliced table keeps its own rows

def test_checkpoint_round_trip_restores_model_optimizer_schedule_and_rng(tmp_path):
    from ray.train import Checkpoint
    from transformers import get_linear_schedule_with_warmup

    from raglign.training.checkpoint import restore as _restore
    from raglign.training.checkpoint import save as _save

    def make():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.5), torch.nn.Linear(4, 1))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        return model, opt, get_linear_schedule_with_warmup(opt, 2, 10)

    def step(model, opt, sched):
        loss = model(torch.ones(3, 4)).sum()  # dropout draws from the RNG
        loss.backward()
        opt.step(), sched.step(), opt.zero_grad()
        return loss.item()

    cfg = TrainConfig(data="d", output="o")
    model, opt, sched = make()
    for _ in range(3):
        step(model, opt, sched)
    _save(tmp_path, model, opt, sched, 3, cfg, 0, [{"step": 2, "loss": 1.0}])
    expected = [step(model, opt, sched) for _ in range(3)]
    model2, opt2, sched2 = make()
    torch.manual_seed(123)  # a different stream; the checkpoint must bring back the saved one
    n, history = _restore(Checkpoint.from_directory(str(tmp_path)), model2, opt2, sched2, 0, "cpu")
    assert (n, history) == (3, [{"step": 2, "loss": 1.0}])
    assert [step(model2, opt2, sched2) for _ in range(3)] == expected
    assert sched2.get_last_lr() == sched.get_last_lr()


# --- training (Ray Train local mode: in this process, no cluster) ----------------------------

def _top1_and_p_pos(scores: torch.Tensor) -> tuple[float, float]:
    """How often the positive (index 0) scores highest, and its mean softmax probability."""
    scores = torch.as_tensor(scores, dtype=torch.float32)
    return (scores.argmax(1) == 0).float().mean().item(), scores.softmax(1)[:, 0].mean().item()


def test_cross_encoder_infonce_learns_and_exports_a_sentence_transformers_model(
        tmp_path, groups_dir, tiny_bert_dir):
    from sentence_transformers import CrossEncoder

    from raglign.pipeline.train import build_reranker, train

    rows = _groups()
    pairs = [[(r["question"], d["text"]) for d in r["docs"]] for r in rows]
    cfg = _cfg(groups_dir, tiny_bert_dir, tmp_path / "out")
    base = build_reranker(cfg).eval()
    with torch.no_grad():
        before = _top1_and_p_pos(base.forward_scores([r["question"] for r in rows],
                                                     [[d["text"] for d in r["docs"]] for r in rows]))
    result = train(cfg)
    assert (result.step, result.total_steps, result.checkpoint) == (16, 16, None)
    history = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == list(range(2, 17, 2))
    assert history[0]["loss"] > 1.8 and history[-1]["loss"] < 0.5 * history[0]["loss"]
    assert all(h["pairs_per_s"] > 0 for h in history) and history[-1]["lr"] == 0.0
    times = [h["wall_time"] for h in history]  # the window ends' clock, strictly increasing
    assert all(a < b for a, b in zip(times, times[1:])) and abs(times[-1] - time.time()) < 600
    cpu = [h["cpu_time"] for h in history]  # this process's CPU seconds (local mode)
    assert all(a < b for a, b in zip(cpu, cpu[1:])) and cpu[-1] <= time.process_time()

    model = CrossEncoder(str(result.model_dir))
    # CrossEncoder.predict applies a sigmoid, a monotone map: identity keeps the logits
    after = _top1_and_p_pos(np.stack([model.predict(p, activation_fn=torch.nn.Identity()) for p in pairs]))
    assert before[0] < 0.5 and before[1] < 0.2
    assert after[0] >= 0.9 and after[1] > 0.5
    card = (result.model_dir / "README.md").read_text()
    assert "infonce" in card and groups_dir in card and f"{history[-1]['loss']:.4f}" in card
    assert (tmp_path / "out" / "loss_curve.png").stat().st_size > 1000


def test_cli_bi_encoder_kl_on_soft_targets_learns(tmp_path, tiny_bert_dir, capsys):
    from sentence_transformers import SentenceTransformer

    from raglign.cli import main
    from raglign.config import dump_yaml

    rows = [dict(r, target=[0.94] + [0.01] * 6, method="pdist") for r in _groups(32)]
    for r in rows:
        del r["labels"]
    data = _write(rows, tmp_path / "targets")
    job = tmp_path / "job.yaml"
    # the plain objective (a bi-encoder's kl is anchored to its base by default)
    job.write_text(dump_yaml(_cfg(data, tiny_bert_dir, tmp_path / "out", kind="bi", objective="kl",
                                  num_workers=2, anchor=0.0)))
    # flags override the YAML: local mode and the bi-encoder's temperature
    assert main(["train", "--config", str(job), "--num-workers", "0", "--temperature", "0.05"]) == 0
    assert "trained 8/8 steps" in capsys.readouterr().out
    assert "temperature: 0.05" in (tmp_path / "out" / "train_config.yaml").read_text()
    result_model = tmp_path / "out" / "model"
    history = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert history[-1]["loss"] < 0.7 * history[0]["loss"]
    st = SentenceTransformer(str(result_model))
    q = st.encode([r["question"] for r in rows], convert_to_tensor=True)
    top1 = [int(st.similarity(q[i:i + 1], st.encode([d["text"] for d in r["docs"]],
                                                     convert_to_tensor=True)).argmax()) == 0
            for i, r in enumerate(rows)]
    assert sum(top1) / len(top1) >= 0.9
    assert "method: pdist" in (result_model / "README.md").read_text()


@pytest.mark.parametrize("kind, in_batch_negatives", [("bi", False), ("bi", True), ("cross", False)])
def test_a_ddp_step_leaves_no_trainable_parameter_without_a_gradient(
        tmp_path, groups_dir, tiny_bert_dir, kind, in_batch_negatives):
    """The trainer wraps the reranker in DDP without find_unused_parameters: a trainable
    parameter outside the score's graph (BERT's pooler under mean pooling, unless frozen) would
    get no gradient, and DDP would fail at the next step. Two steps, as the trainer runs them."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from raglign.training.batches import make_batch
    from raglign.training.loss import build_loss
    from raglign.training.reranker import build_reranker
    from raglign.training.reranker import scorer_class as _scorer_class
    from raglign.training.tables import load_train_table

    cfg = _cfg(groups_dir, tiny_bert_dir, tmp_path, kind=kind,
               in_batch_negatives=in_batch_negatives)
    table, _ = load_train_table(groups_dir, "infonce")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        reranker = build_reranker(cfg)
        model = DistributedDataParallel(_scorer_class()(reranker, in_batch_negatives))
        loss_fn = build_loss(cfg, torch.device("cpu"))
        for rows in ([0, 1, 2, 3], [4, 5, 6, 7]):
            loss_fn(model, make_batch(table, rows)).backward()
            missing = [n for n, p in reranker.named_parameters()
                       if p.requires_grad and p.grad is None]
            assert not missing
            reranker.zero_grad(set_to_none=True)
    finally:
        dist.destroy_process_group()
    if kind == "bi":  # the one module mean pooling never reads is frozen, not trained
        assert all(not p.requires_grad for p in reranker.encoder.model.pooler.parameters())


def test_two_gloo_processes_step_as_one_process_on_the_whole_batch(tmp_path, groups_dir,
                                                                    tiny_bert_dir):
    """The loop's DDP settings (gradients as views of the all-reduce buckets) and its fused
    AdamW, with clipping and ``zero_grad(set_to_none=True)`` between steps, over 2 gloo
    processes of 4 groups each: after 3 steps the weights and losses are those of one process
    taking the same steps on all 8 groups with the textbook for-loop AdamW. A rank whose
    gradients stopped being reduced after the first step, or a fused update that differed from
    AdamW's, would be off by orders of magnitude more than rounding."""
    import subprocess
    import sys

    from raglign.training.batches import epoch_permutation, make_batch, micro_batch_rows
    from raglign.training.loss import build_loss
    from raglign.training.reranker import build_reranker, param_groups, scorer_class
    from raglign.training.tables import load_train_table

    cfg = _cfg(groups_dir, tiny_bert_dir, tmp_path / "out", kind="cross", num_workers=2)
    steps, out = 3, tmp_path / "rank0.pt"
    spec = json.dumps({"config": cfg.model_dump(mode="json"), "steps": steps})
    worker = REPO / "tests" / "ddp_step_worker.py"
    procs = [subprocess.Popen([sys.executable, str(worker), str(r), str(tmp_path / "pg"), spec,
                               str(out)], stderr=subprocess.PIPE, text=True) for r in range(2)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors

    one = cfg.model_copy(update={"num_workers": 0})
    table, _ = load_train_table(groups_dir, "infonce")
    perm = epoch_permutation(table.num_rows, cfg.seed, 0)
    reranker = build_reranker(one)
    scorer = scorer_class()(reranker, False)
    optimizer = torch.optim.AdamW(param_groups(reranker, one.weight_decay), lr=one.lr,
                                  foreach=False)
    loss_fn = build_loss(one, torch.device("cpu"))
    want_losses = []
    for step in range(steps):
        loss = loss_fn(scorer, make_batch(table, micro_batch_rows(perm, step, one, 0, 1, 0)))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(reranker.parameters(), one.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        want_losses.append(loss.item())

    got = torch.load(out)
    assert got["losses"] == pytest.approx(want_losses, abs=1e-5)
    start = build_reranker(one).state_dict()
    want = torch.cat([(w - start[k]).flatten() for k, w in reranker.state_dict().items()])
    moved = torch.cat([(got["state"][k] - start[k]).flatten() for k in start])
    # Relative to the update itself, not per weight: Adam divides each gradient by its own
    # scale, so a weight whose true gradient is 0 (the score head's bias: InfoNCE ignores a
    # shift of all scores) moves by up to lr on rounding noise alone, differently in any two
    # float orders. Measured here: 1e-3 between float orders (fused or for-loop AdamW, whole
    # batch or 2 micro-batches); 0.59 when each rank trains on its own half of the batch.
    assert (moved - want).norm() / want.norm() < 1e-2


@pytest.mark.parametrize("in_batch_negatives", [False, True])
def test_anchor_pulls_towards_the_frozen_base(tmp_path, groups_dir, tiny_bert_dir,
                                              in_batch_negatives):
    """``anchor: a`` trains (1 - a) x objective + a x KL(p_base || p_R) against a frozen copy
    of the starting reranker: nothing while the student is the base, then exactly the KL of
    the two score distributions (recomputed here from the base's own scores)."""
    from raglign.objectives import base_anchor
    from raglign.training.batches import make_batch
    from raglign.training.loss import build_loss
    from raglign.training.reranker import build_reranker, scorer_class
    from raglign.training.tables import load_train_table

    a = 0.3
    cfg = _cfg(groups_dir, tiny_bert_dir, tmp_path, kind="bi", anchor=a,
               in_batch_negatives=in_batch_negatives)
    plain_fn = build_loss(cfg.model_copy(update={"anchor": 0.0}), torch.device("cpu"))
    anchored_fn = build_loss(cfg, torch.device("cpu"))
    table, _ = load_train_table(groups_dir, "infonce")
    batch = make_batch(table, [0, 1, 2, 3])
    student = scorer_class()(build_reranker(cfg), in_batch_negatives)
    plain = plain_fn(student, batch)
    assert anchored_fn(student, batch).item() == pytest.approx((1 - a) * plain.item(), rel=1e-6)
    assert anchored_fn.pop_means()["kl_to_base"] == pytest.approx(0.0, abs=1e-7)
    assert anchored_fn.pop_means() == {}  # a window's mean is reported once

    torch.optim.SGD(student.parameters(), lr=0.5).zero_grad()
    plain.backward()
    torch.optim.SGD(student.parameters(), lr=0.5).step()
    with torch.no_grad():
        base = scorer_class()(build_reranker(cfg), in_batch_negatives)(batch.queries, batch.docs)
        scores = student(batch.queries, batch.docs)
        mask = batch.mask.reshape(1, -1).expand(scores.shape[0], -1) if in_batch_negatives \
            else batch.mask
        drift = base_anchor(scores.float(), base.float(), cfg.score_temperature, mask).item()
        expect = (1 - a) * plain_fn(student, batch).item() + a * drift
        got = anchored_fn(student, batch).item()
    assert drift > 1e-4
    assert got == pytest.approx(expect, rel=1e-5)
    assert anchored_fn.pop_means()["kl_to_base"] == pytest.approx(drift, rel=1e-5)


def test_anchor_is_for_score_objectives_only(tmp_path, groups_dir, tiny_bert_dir):
    with pytest.raises(ValueError, match="anchor applies to the score objectives"):
        _cfg(groups_dir, tiny_bert_dir, tmp_path, objective="gumbel", anchor=0.5)
    with pytest.raises(ValueError, match="anchor_mix 'geometric' .* objective 'kl' only"):
        _cfg(groups_dir, tiny_bert_dir, tmp_path, kind="bi", objective="emdr", anchor=0.5,
             anchor_mix="geometric")
    with pytest.raises(ValueError, match="needs an anchor: .*the cross-encoder kl default is 0"):
        _cfg(groups_dir, tiny_bert_dir, tmp_path, kind="cross", objective="kl",
             anchor_mix="geometric")


def test_geometric_anchor_trains_towards_the_product_of_target_and_base(tmp_path,
                                                                       tiny_bert_dir):
    """``anchor_mix: geometric`` replaces a KL student's target by target^(1-a) x p_base^a
    (renormalised) from the frozen base's scores: at the start it is the KL to that product,
    not the arithmetic anchor's loss, and after a step the product still uses the base."""
    from raglign.objectives import geometric_mix, kl_distill
    from raglign.training.batches import make_batch
    from raglign.training.loss import build_loss
    from raglign.training.reranker import build_reranker, scorer_class
    from raglign.training.tables import load_train_table

    rows = [dict(r, target=[0.4, 0.3, 0.1, 0.1, 0.05, 0.03, 0.02], method="pdist")
            for r in _groups(8)]
    for r in rows:
        del r["labels"]
    data = _write(rows, tmp_path / "targets")
    a = 0.4
    cfg = _cfg(data, tiny_bert_dir, tmp_path / "out", kind="bi", objective="kl", anchor=a,
               anchor_mix="geometric")
    fn = build_loss(cfg, torch.device("cpu"))
    arithmetic = build_loss(cfg.model_copy(update={"anchor_mix": "arithmetic"}),
                            torch.device("cpu"))
    table, _ = load_train_table(data, "kl")
    batch = make_batch(table, [0, 1, 2, 3])
    student = scorer_class()(build_reranker(cfg), False)
    t = cfg.score_temperature
    with torch.no_grad():
        base = scorer_class()(build_reranker(cfg), False)(batch.queries, batch.docs).float()
    for step in range(2):
        scores = student(batch.queries, batch.docs).float()
        want = kl_distill(scores, geometric_mix(batch.values, base, a, t, batch.mask), t,
                          batch.mask)
        got = fn(student, batch)
        assert got.item() == pytest.approx(want.item(), rel=1e-6)
        assert abs(got.item() - arithmetic(student, batch).item()) > 1e-3
        torch.optim.SGD(student.parameters(), lr=0.5).zero_grad()
        got.backward()
        torch.optim.SGD(student.parameters(), lr=0.5).step()
    assert fn.pop_means()["kl_to_base"] > 0


def test_an_unset_anchor_takes_the_default_of_its_kind_and_objective(tmp_path, groups_dir,
                                                                      tiny_bert_dir):
    """A bi-encoder KL or EMDR student is anchored at 0.5 unless told otherwise (the
    distillation benchmark's evidence); cross-encoders, InfoNCE and REPLUG are not; a given
    anchor, 0 included, always wins, and the loss holds a frozen base exactly when one is in
    effect."""
    from raglign.training.loss import build_loss

    def weight(**kw):
        cfg = _cfg(groups_dir, tiny_bert_dir, tmp_path, **kw)
        base = build_loss(cfg, torch.device("cpu")).base
        assert (base is not None) == (cfg.anchor_weight > 0)
        return cfg.anchor_weight

    assert weight(kind="bi", objective="kl") == weight(kind="bi", objective="emdr") == 0.5
    assert weight(kind="cross", objective="kl") == weight(kind="bi", objective="infonce") == 0.0
    assert weight(kind="bi", objective="replug") == 0.0
    assert weight(kind="bi", objective="kl", anchor=0.0) == 0.0
    assert weight(kind="cross", objective="infonce", anchor=0.2) == 0.2


def test_an_unset_anchor_mix_is_geometric_for_bi_encoder_kl_only(tmp_path, groups_dir,
                                                                tiny_bert_dir):
    """The validation choice (docs/distillation.md point 10) is the default for a bi-encoder KL
    student only; a given mix always wins."""
    def mode(**kw):
        return _cfg(groups_dir, tiny_bert_dir, tmp_path, **kw).anchor_mode

    assert mode(kind="bi", objective="kl") == "geometric"
    assert mode(kind="bi", objective="kl", anchor_mix="arithmetic") == "arithmetic"
    assert mode(kind="bi", objective="emdr") == mode(kind="cross", objective="kl") == "arithmetic"
    assert mode(kind="cross", objective="kl", anchor=0.5, anchor_mix="geometric") == "geometric"


def test_export_merges_a_trained_checkpoint_with_the_starting_model(tmp_path, groups_dir,
                                                                     tiny_bert_dir):
    """``base_merge`` w exports (1 − w) x the checkpoint's weights + w x the starting model's
    (rebuilt as the workers built it); the default is 0.25 for a bi-encoder KL student only, the
    note says so, and a run that exports its starting model merges nothing."""
    import torch
    from ray.train import Checkpoint

    from raglign.models.rerankers import load_reranker
    from raglign.training.export import choose_export, export_model
    from raglign.training.reranker import build_reranker

    def merge(**kw):
        return _cfg(groups_dir, str(tiny_bert_dir), tmp_path, **kw).base_merge_weight

    assert merge(kind="bi", objective="kl") == 0.25
    assert merge(kind="bi", objective="kl", base_merge=0.0) == 0.0
    assert merge(kind="cross", objective="kl") == merge(kind="bi", objective="infonce") == 0.0
    cfg = _cfg(groups_dir, str(tiny_bert_dir), tmp_path, kind="bi", objective="kl")
    trained = build_reranker(cfg)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.05 * torch.randn_like(p))
    (tmp_path / "ckpt").mkdir()
    torch.save(trained.state_dict(), tmp_path / "ckpt" / "model.pt")
    ckpt = Checkpoint.from_directory(str(tmp_path / "ckpt"))
    choice = choose_export(cfg, [], ckpt, 8, None)
    assert choice.note.endswith(f"0.75 x trained + 0.25 x `{tiny_bert_dir}` (base_merge)")
    base = build_reranker(cfg).state_dict()
    for w in (0.25, 0.0):
        out = tmp_path / f"model-{w}"
        export_model(cfg.model_copy(update={"base_merge": w}), ckpt, str(out), "card")
        got = load_reranker(str(out), kind="bi").state_dict()
        for k, v in trained.state_dict().items():
            torch.testing.assert_close(got[k], v + w * (base[k] - v), rtol=1e-5, atol=1e-6)
    unchanged = _cfg(groups_dir, str(tiny_bert_dir), tmp_path, kind="bi", objective="kl",
                     validation={"fraction": 0.2})
    history = [{"step": 0, "val_mrr": 0.9}, {"step": 8, "val_mrr": 0.5}]
    assert "base_merge" not in choose_export(unchanged, history, ckpt, 8, None).note


# --- Ray Train: 2 DDP workers, stop at max_steps, resume --------------------------------------

def test_two_worker_ddp_resumes_and_matches_uninterrupted_training(
        tmp_path, ray_local, groups_dir, tiny_bert_dir):
    from safetensors.torch import load_file

    from raglign.pipeline.train import train

    # Reference: one process, the same global batches as 2 workers (2 micro-batches of 4 each).
    ref = train(_cfg(groups_dir, tiny_bert_dir, tmp_path / "ref", grad_accumulation=2))
    ddp = _cfg(groups_dir, tiny_bert_dir, tmp_path / "ddp", num_workers=2)
    first = train(ddp.model_copy(update={"max_steps": 6}))
    assert (first.step, first.total_steps) == (6, 16) and first.checkpoint.endswith("step-00000006")
    early = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    second = train(ddp)  # same run name and storage: resumes at step 6
    assert second.step == 16 and second.checkpoint.endswith("step-00000016")
    history = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    assert history[:len(early)] == early
    assert [json.loads(h)["step"] for h in history] == list(range(2, 17, 2))

    want = load_file(ref.model_dir / "model.safetensors")
    got = load_file(second.model_dir / "model.safetensors")
    assert want.keys() == got.keys()
    for k in want:  # DDP's all-reduce mean vs accumulation: equal up to float rounding
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-5, msg=k)
    ref_loss = [json.loads(h)["loss"] for h in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    assert [json.loads(h)["loss"] for h in history] == pytest.approx(ref_loss, rel=1e-4)


@pytest.mark.parametrize("cpu_bf16,fast,expected", [
    (False, True, False), (True, False, True), ("auto", True, True), ("auto", False, False)])
def test_cpu_workers_autocast_to_bf16_only_when_asked_or_native(monkeypatch, cpu_bf16, fast,
                                                                 expected):
    from raglign.pipeline.train_loop import autocast_bf16

    # the probes cpu_has_fast_bf16 reads: whatever CPU runs the test
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: fast)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    cfg = TrainConfig(data="d", output="o", model="m", cpu_bf16=cpu_bf16)
    assert autocast_bf16(cfg, torch.device("cpu")) is expected
    assert autocast_bf16(cfg.model_copy(update={"bf16": False}), torch.device("cuda")) is False


def test_cpu_bf16_training_runs_the_steps_in_bf16_and_stays_close_to_fp32(
        tmp_path, groups_dir, tiny_bert_dir):
    """Same seed and data: bf16 autocast rounds the matmuls, so the first losses differ (autocast
    took effect) but only by bf16's precision; later steps drift apart at this lr (1e-2)."""
    from raglign.pipeline.train import train

    losses = {}
    for flag in (False, True):
        out = tmp_path / str(flag)
        train(_cfg(groups_dir, tiny_bert_dir, out, epochs=1, cpu_bf16=flag))
        history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        losses[flag] = np.array([h["loss"] for h in history])
    # the first window (steps 1-2) from the same weights: equal up to bf16 rounding
    assert losses[True][0] != losses[False][0]
    assert losses[True][0] == pytest.approx(losses[False][0], rel=1e-3)
    assert losses[True][-1] < 0.6 * losses[True][0]  # and the bf16 run learns as fp32 does
