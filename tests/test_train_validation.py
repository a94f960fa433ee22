"""Validation inside ``raglign train``: the numbers are ``raglign eval``'s, the export is the best
validated model (the starting model when nothing beats it), held-out questions are never trained
on, bad input names its field, and a finished run keeps only the last and the best checkpoint.

The reranker is a tiny random BERT without dropout and with MiniLM's tokenizer. The synthetic
task: the question "tell me about the <kw>" and the document "the <kw> is the answer" share the
keyword, six distractors do not, so one or two optimizer steps rank the keyword document first.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from raglign.config import validate
from raglign.data.io import write_rows
from raglign.data.schema import candidate, make_row
from raglign.data.split import is_test
from raglign.errors import ConfigError
from raglign.training_config import VALIDATION_METRICS, TrainConfig
from test_train import tiny_bert_dir  # noqa: F401 (fixture: the dropout-free BERT)

WORDS = ["apple", "river", "piano", "tiger", "copper", "violet", "harbor", "candle", "meadow",
         "falcon", "glacier", "lantern", "orchid", "pepper", "saddle", "thunder"]
N = 80


def _texts(i: int, rng: random.Random) -> tuple[str, list[str]]:
    kw = WORDS[i % len(WORDS)]
    others = [w for w in WORDS if w != kw]
    return kw, [f"the {kw} is the answer"] + [f"the {rng.choice(others)} is a distractor"
                                               for _ in range(6)]


def _canonical(prefix: str, n: int, seed: int, adversarial: bool = False) -> list[dict]:
    """Canonical rows with shuffled candidates; the keyword document is gold, or (adversarial)
    the keyword is in six non-gold documents and the one gold document lacks it, so a reranker
    that learnt the task ranks the gold document last."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        kw, texts = _texts(i, rng)
        if adversarial:
            texts = [texts[1]] + [f"the {kw} is clue {j}" for j in range(6)]
        order = list(range(7))
        rng.shuffle(order)
        cands = [candidate(f"{prefix}{i}-{j}", "", texts[j], None, j == 0) for j in order]
        rows.append(make_row(f"{prefix}{i}", f"tell me about the {kw}", [kw], cands))
    return rows


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    """Mined rows (labels, target and lm_logprob: every score objective's field) with the
    canonical rows they came from (recorded in _summary.json as `raglign mine` does), plus two
    validation sets with other question ids: an ordinary and an adversarial one."""
    root = tmp_path_factory.mktemp("data")
    canonical = _canonical("q", N, 0)
    write_rows(canonical, root / "canonical")
    mined = []
    for row in canonical:
        docs = sorted(row["candidates"], key=lambda c: not c["is_gold"])  # positive first
        mined.append({"id": row["id"], "question": row["question"],
                      "docs": [{k: c[k] for k in ("doc_id", "title", "text")} for c in docs],
                      "labels": [1] + [0] * 6, "target": [0.94] + [0.01] * 6,
                      "lm_logprob": [-0.1] + [-5.0] * 6})
    (root / "mined").mkdir()
    pq.write_table(pa.Table.from_pylist(mined), root / "mined" / "part-00000.parquet")
    (root / "mined" / "_summary.json").write_text(
        json.dumps({"job": "mine", "config": {"input": str(root / "canonical")}}))
    write_rows(_canonical("v", 16, 1), root / "validation")
    write_rows(_canonical("v", 16, 2, adversarial=True), root / "adversarial")
    return {k: str(root / k) for k in ("canonical", "mined", "validation", "adversarial")}


def _cfg(paths: dict, model: str, output: Path, **kw) -> TrainConfig:
    base = {"data": paths["mined"], "output": str(output), "model": model, "lr": 1e-2,
            "batch_size": 8, "epochs": 1, "max_length": 32, "num_workers": 0,
            "warmup_ratio": 0.0, "validation": {"data": paths["validation"]}, "eval_every": 2}
    return TrainConfig(**(base | kw))


def _history(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _val(metrics: dict) -> dict:
    return {k.removeprefix("val_"): v for k, v in metrics.items()
            if k.startswith("val_") and k != "val_n"}


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --- configuration -------------------------------------------------------------------------

def test_validation_reports_the_metrics_of_raglign_eval():
    from raglign.pipeline.evaluate import EvalConfig, row_metrics

    row = _canonical("q", 1, 0)[0]
    metrics = row_metrics(row, list(range(7)), EvalConfig(data="d", output="o", reranker="m"))
    assert tuple(k for k in metrics if k != "id") == VALIDATION_METRICS


@pytest.mark.parametrize("bad, match", [
    ({"validation": {}}, "validation needs data .* or fraction"),
    ({"validation": {"fraction": 0}}, "validation.fraction: Input should be greater than 0"),
    ({"validation": {"fraction": 1.0}}, "validation.fraction: Input should be less than 1"),
    ({"validation": {"fraction": 1.5}}, "validation.fraction"),
    ({"validation": {"fraction": 0.2}, "eval_every": 0}, "eval_every: Input should be greater"),
    ({"eval_every": 5}, "eval_every needs a validation block"),
    ({"validation": {"fraction": 0.2, "metric": "map"}}, "validation.metric: .*must be one of"),
    ({"validation": {"fraction": 0.2, "k1": 0}}, "validation.k1"),
])
def test_bad_validation_settings_name_the_field(bad, match):
    with pytest.raises(ConfigError, match=match):
        validate(TrainConfig, {"job": "train", "data": "d", "output": "o", **bad}, "t.yaml")


def test_bad_validation_data_names_the_field_before_training(tmp_path, data, tiny_bert_dir):
    from raglign.pipeline.train import train

    def fails(match: str, **kw):
        with pytest.raises(ConfigError, match=match):
            train(_cfg(data, tiny_bert_dir, tmp_path / "out", **kw))
        assert not (tmp_path / "out").exists()  # nothing started

    fails(r"validation.data: .*no such file or directory",
          validation={"data": str(tmp_path / "missing")})
    fails(r"validation.data: 80 validation questions are also training questions \(first: 'q0'\)",
          validation={"data": data["canonical"]})
    no_gold = [dict(r, candidates=[dict(c, is_gold=None) for c in r["candidates"]])
               for r in _canonical("v", 4, 0)]
    fails("validation.data: none of the 4 validation rows .* has gold documents",
          validation={"data": str(Path(write_rows(no_gold, tmp_path / "no_gold")[0]).parent)})
    fails("validation.fraction: no validation rows: no question of .* falls in the held-out",
          validation={"fraction": 1e-9})
    bare = tmp_path / "bare"  # mined rows without the _summary.json naming their source
    bare.mkdir()
    pq.write_table(pq.read_table(Path(data["mined"]) / "part-00000.parquet"),
                   bare / "part-00000.parquet")
    fails(r"validation.data: validation.fraction on mined rows .* needs the canonical rows",
          data=str(bare), validation={"fraction": 0.25})


def test_log_and_eval_intervals_adapt_to_short_runs():
    cfg = TrainConfig(data="d", output="o", validation={"fraction": 0.2})
    assert [cfg.log_interval(n) for n in (16, 99, 150, 5000)] == [1, 1, 2, 10]
    assert [cfg.eval_interval(n) for n in (4, 16, 2500)] == [1, 2, 250]
    fixed = cfg.model_copy(update={"log_every": 7, "eval_every": 3})
    assert (fixed.log_interval(16), fixed.eval_interval(16)) == (7, 3)


# --- which questions validate ----------------------------------------------------------------

@pytest.mark.parametrize("objective", ["infonce", "gumbel"])
def test_fraction_holds_its_questions_out_of_training(data, objective):
    """Mined rows: validation reads the canonical rows they came from; canonical training rows
    (gumbel, rrpo): the training data itself. Either way the two id sets are disjoint and
    together cover the data, and the held-out set is the fixed hash's."""
    from raglign.pipeline.train import _load_training_rows
    from raglign.pipeline.train_validation import held_out, load_validation

    source = data["mined"] if objective == "infonce" else data["canonical"]
    cfg = TrainConfig(data=source, output="o", objective=objective, validation={"fraction": 0.25})
    split = held_out(cfg)
    table, _ = _load_training_rows(cfg, split)
    validation = load_validation(cfg, table.column("id").to_pylist(), split)
    trained = set(table.column("id").to_pylist())
    validated = {r["id"] for r in validation.rows}
    assert validation.source == data["canonical"]
    assert trained.isdisjoint(validated) and trained | validated == {f"q{i}" for i in range(N)}
    assert validated == {f"q{i}" for i in range(N) if is_test(f"q{i}", 0.25, seed=1)}
    assert split.turned_away == len(validated) and 10 < len(validated) < 30
    assert all(len(r["candidates"]) == 7 for r in validation.rows)


# --- the numbers are raglign eval's -------------------------------------------------------------

@pytest.mark.parametrize("kind", ["cross", "bi"])
def test_validation_equals_raglign_eval_at_step_0_and_on_the_export(
        tmp_path, ray_local, data, tiny_bert_dir, kind):
    from raglign.models.rerankers import load_reranker
    from raglign.pipeline.evaluate import EvalConfig, evaluate
    from raglign.pipeline.train import build_reranker, train

    cfg = _cfg(data, tiny_bert_dir, tmp_path / "out", kind=kind)
    result = train(cfg)
    history = _history(tmp_path / "out")
    assert history[0]["step"] == 0 and "loss" not in history[0]
    assert [h["step"] for h in history if "val_mrr" in h] == [0, 2, 4, 6, 8, 10]

    def evaluated(model_dir: Path) -> dict:
        report = evaluate(EvalConfig(data=data["validation"], output=str(tmp_path / "e.json"),
                                     reranker=str(model_dir), reranker_kind=kind))
        # indirect_recall@5 is undefined here (every gold document names the answer): eval
        # reports None, validation leaves it out
        return {k: report[k] for k in VALIDATION_METRICS if report[k] is not None}

    base = tmp_path / "base"
    build_reranker(cfg).save(base)  # the starting model, seeded head included
    assert _val(history[0]) == pytest.approx(evaluated(base), rel=1e-12, abs=1e-12)
    exported = next(h for h in history if h["step"] == result.exported_step)
    assert _val(exported) == pytest.approx(evaluated(result.model_dir), rel=1e-12, abs=1e-12)
    assert result.validation["step_0"]["val_mrr"] == history[0]["val_mrr"]
    assert load_reranker(str(result.model_dir), kind=kind).kind == kind


# --- the export is the best validated model ---------------------------------------------------

def test_export_is_the_best_validated_checkpoint_and_a_finished_run_keeps_last_and_best(
        tmp_path, ray_local, data, tiny_bert_dir):
    """A learning rate ramping up to 0.3 learns the task in two steps and then wrecks it: the
    export must be the best step's weights, not the last step's, and Ray Train must have kept
    that checkpoint (CheckpointConfig ranked by val_mrr) next to the last one."""
    from raglign.models.rerankers import load_reranker
    from raglign.pipeline.train import build_reranker, train

    cfg = _cfg(data, tiny_bert_dir, tmp_path / "out", lr=0.3, warmup_ratio=1.0, epochs=2,
               eval_every=1, checkpoint_every=4, num_workers=1,
               validation={"fraction": 0.25})
    result = train(cfg)
    history = _history(tmp_path / "out")
    scores = {h["step"]: h["val_mrr"] for h in history}
    best_step = max(scores, key=lambda s: (scores[s], s))  # ties: the later step (Ray's order)
    last = result.step
    assert best_step not in (0, last) and scores[last] < scores[best_step]  # the scenario
    assert (result.export, result.exported_step) == ("best", best_step)
    assert f"exported step {best_step}, the best on validation" in result.note

    run = Path(cfg.storage) / cfg.run_name
    kept = sorted(p.name for p in run.glob("step-*"))
    assert kept == [f"step-{best_step:08d}", f"step-{last:08d}"]
    assert all(sorted(f.name for f in (run / k).iterdir()) ==
               ["metrics.jsonl", "model.pt", "state.json"] for k in kept)  # slimmed
    assert result.freed_mib > 0
    best = build_reranker(cfg)
    best.load_state_dict(torch.load(run / kept[0] / "model.pt"))
    exported = load_reranker(str(result.model_dir), kind="cross")
    assert _same_weights(exported, best)
    card = (result.model_dir / "README.md").read_text()
    assert result.note in card and "**Validation**" in card
    saved = json.loads((tmp_path / "out" / "train_result.json").read_text())
    assert (saved["export"], saved["exported_step"]) == ("best", best_step)

    again = train(cfg)  # the same command on a finished, slimmed run: nothing to redo
    assert (again.step, again.exported_step, again.freed_mib) == (last, best_step, 0.0)
    assert _same_weights(load_reranker(str(again.model_dir), kind="cross"), best)


def test_when_no_trained_step_beats_the_start_the_export_is_the_start_and_says_so(
        tmp_path, data, tiny_bert_dir, capsys):
    """Validation gold documents lack the keyword the training rewards, so every trained step
    ranks them last (MRR 1/7): the exported model must be the starting model, unchanged."""
    from raglign.models.rerankers import load_reranker
    from raglign.pipeline.train import build_reranker, train

    cfg = _cfg(data, tiny_bert_dir, tmp_path / "out", validation={"data": data["adversarial"]},
               eval_every=1)
    result = train(cfg)
    history = _history(tmp_path / "out")
    assert [h["step"] for h in history] == list(range(0, 11))  # a short run logs every step
    assert all(h["val_mrr"] < history[0]["val_mrr"] for h in history[1:])
    assert (result.export, result.exported_step) == ("base", 0)
    assert "No trained step beat the starting model" in capsys.readouterr().out
    assert "UNCHANGED" in result.note
    assert _same_weights(load_reranker(str(result.model_dir), kind="cross"),
                         build_reranker(cfg))
    card = (result.model_dir / "README.md").read_text()
    assert "unchanged: raglign training (infonce) did not beat it on validation" in card
    assert json.loads((tmp_path / "out" / "train_result.json").read_text())["export"] == "base"
    assert (tmp_path / "out" / "loss_curve.png").stat().st_size > 10_000


# --- every objective ---------------------------------------------------------------------------

@pytest.mark.parametrize("objective", ["infonce", "supervised", "kl", "replug", "emdr"])
def test_every_score_objective_validates(tmp_path, data, tiny_bert_dir, objective):
    from raglign.pipeline.train import train

    result = train(_cfg(data, tiny_bert_dir, tmp_path / "out", objective=objective, max_steps=2,
                        eval_every=1, validation={"fraction": 0.25}))
    history = _history(tmp_path / "out")
    assert [h["step"] for h in history if "val_mrr" in h] == [0, 1, 2]
    assert result.validation["metric"] == "mrr" and result.export in ("base", "best", "last")


@pytest.mark.parametrize("objective", ["gumbel", "rrpo"])
def test_generator_objectives_validate_on_their_own_held_out_questions(
        tmp_path, data, tiny_bert_dir, tiny_dir, objective):
    from raglign.pipeline.train import train

    block = {"generator": {"name": tiny_dir, "dtype": "float32"}, "n": 4, "k": 2}
    if objective == "rrpo":
        block["reward"] = "logprob"
    result = train(_cfg(data, tiny_bert_dir, tmp_path / "out", data=data["canonical"],
                        objective=objective, **{objective: block}, batch_size=2, max_steps=1,
                        eval_every=1, validation={"fraction": 0.25, "k1": 7}))
    history = _history(tmp_path / "out")
    assert [h["step"] for h in history] == [0, 1] and all("val_ndcg@5" in h for h in history)
    assert history[0]["val_n"] == result.validation["step_0"]["val_n"] > 10


def test_cli_flags_set_validation_and_say_which_model_was_exported(tmp_path, data, tiny_bert_dir,
                                                                   capsys):
    from raglign.cli import main

    args = ["train", data["mined"], str(tmp_path / "out"), "--model", tiny_bert_dir, "--max-length",
            "32", "--batch-size", "8", "--epochs", "1", "--num-workers", "0", "--max-steps", "2"]
    assert main(args + ["--validation-fraction", "0.25", "--eval-every", "1"]) == 0
    out = capsys.readouterr().out
    assert "trained 2/7 steps" in out and "train_result.json" in out
    result = json.loads((tmp_path / "out" / "train_result.json").read_text())
    assert f"(step {result['exported_step']}, {result['export']})" in out
    saved = (tmp_path / "out" / "train_config.yaml").read_text()
    assert "fraction: 0.25" in saved and "eval_every: 1" in saved
    assert main(args + ["--validation-fraction", "1.5"]) != 0
    assert "validation.fraction" in capsys.readouterr().err
