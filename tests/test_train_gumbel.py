"""``raglign train`` with ``objective: gumbel`` (G-Rerank, Algorithm 1) in the one training job.

The reranker is the tiny random BERT of conftest; the frozen generator is conftest's tiny Llama
(SmolLM2's architecture and tokenizer) saved to a directory, so the worker loads it through the
same ``TransformersGenerator.from_name`` path as a real model. Data are canonical rows (question,
answers, candidates), as ``raglign data convert`` writes them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from raglign.config import load_job, validate
from raglign.data.io import write_rows
from raglign.data.schema import candidate, make_row
from raglign.errors import ConfigError, DataError
from raglign.training_config import TrainConfig

FACTS = [("France", "Paris"), ("Italy", "Rome"), ("Norway", "Oslo"), ("Spain", "Madrid"),
         ("Japan", "Tokyo"), ("Peru", "Lima"), ("Kenya", "Nairobi"), ("Chile", "Santiago")]


def _rows() -> list[dict]:
    rows = []
    for i, (country, capital) in enumerate(FACTS):
        others = [c for _, c in FACTS if c != capital][i % 3:i % 3 + 2]
        cands = [candidate(f"{i}-0", country, f"The capital of {country} is {capital}.")]
        cands += [candidate(f"{i}-{j + 1}", o, f"{o} is a large city.") for j, o in enumerate(others)]
        if i % 2:  # ragged: some questions have a third distractor (padding is masked)
            cands.append(candidate(f"{i}-3", "Weather", "It rained all day."))
        rows.append(make_row(f"q{i}", f"What is the capital of {country}?", [capital], cands))
    return rows


@pytest.fixture(scope="module")
def canonical_dir(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("canonical")
    write_rows(_rows(), path)
    return str(path)


def _cfg(data, model, generator, output, **kw) -> TrainConfig:
    base = {"data": data, "output": str(output), "model": str(model), "objective": "gumbel",
            "gumbel": {"generator": {"name": generator, "dtype": "float32"}, "n": 3, "k": 2},
            "lr": 1e-2, "batch_size": 2, "epochs": 1, "max_length": 48, "num_workers": 1,
            "log_every": 1, "checkpoint_every": 2, "warmup_ratio": 0.0}
    return TrainConfig(**(base | kw))


def test_gumbel_config_defaults_errors_and_recipe():
    cfg = TrainConfig(data="d", output="o", objective="gumbel")
    g = cfg.gumbel
    assert (g.k, g.tau, g.kappa, g.noise, g.generator.dtype, g.n) == (5, 0.5, 1.0, True, "auto", 20)
    assert TrainConfig(data="d", output="o").gumbel is None
    recipe = load_job(Path(__file__).resolve().parents[1] / "jobs" / "train_grerank_hotpotqa.yaml")
    assert isinstance(recipe, TrainConfig) and recipe.objective == "gumbel"
    assert recipe.gumbel.generator.name == "smollm2-135m" and recipe.data == "data/hotpotqa"
    for bad, match in [({"gumbel": {"k": 3}}, "applies to objective 'gumbel' only"),
                       ({"objective": "gumbel", "temperature": 0.1}, "no score temperature"),
                       ({"objective": "gumbel", "gumbel": {"tau": 0}}, "gumbel.tau"),
                       ({"objective": "gumbel",
                         "gumbel": {"generator": {"name": "g", "dtype": "int8"}}},
                        "gumbel.generator.dtype")]:
        with pytest.raises(ConfigError, match=match):
            validate(TrainConfig, {"job": "train", "data": "d", "output": "o", **bad}, "t.yaml")


def test_table_takes_first_n_candidates_and_rows_without_answers_are_errors(tmp_path):
    from raglign.pipeline.lm_table import load_lm_table

    cfg = _cfg("d", "m", "g", tmp_path)
    table, provenance = load_lm_table(write_rows(_rows(), tmp_path / "ok")[0], cfg.gumbel, "gumbel")
    row = table.to_pylist()[1]
    assert row["docs"] == ["Italy\nThe capital of Italy is Rome.", "Oslo\nOslo is a large city.",
                           "Madrid\nMadrid is a large city."]  # 4 candidates, n = 3
    assert (row["titles"][0], row["answer"], provenance) == ("Italy", "Rome", {"generator": ["g"]})
    bad = _rows()
    bad[2]["answers"] = []
    data = write_rows(bad, tmp_path / "bad")[0]
    with pytest.raises(DataError, match=r"part-00000.parquet, record q2, field 'answers'"):
        load_lm_table(str(data), cfg.gumbel, "gumbel")


def test_loss_is_gumbel_lm_loss_and_reaches_the_reranker_only(
        tmp_path, canonical_dir, tiny_bert_dir, tiny_dir):
    """One micro-batch through the trainer's loss equals the direct computation with the same
    noise; the backward fills the reranker's gradients and none of the LLM's."""
    from raglign.objectives.gumbel import gumbel_lm_loss
    from raglign.pipeline.lm_table import load_lm_table
    from raglign.training.batches import make_batch
    from raglign.training.losses.gumbel import GumbelLoss
    from raglign.training.reranker import build_reranker
    from raglign.training.reranker import scorer_class as _scorer_class

    cfg = _cfg(canonical_dir, tiny_bert_dir, tiny_dir, tmp_path)
    table, _ = load_lm_table(canonical_dir, cfg.gumbel, "gumbel")
    batch = make_batch(table, [0, 1])  # 3 and 3 candidates (row 1's fourth is past n)
    loss_fn = GumbelLoss(cfg.gumbel, torch.device("cpu"))
    llm = loss_fn.engine.model
    reranker = build_reranker(cfg).eval()  # no dropout: both passes score alike
    model = _scorer_class()(reranker, False)
    torch.manual_seed(5)
    loss = loss_fn(model, batch)
    loss.backward()

    torch.manual_seed(5)
    caches = loss_fn.engine.prepare_many(batch.queries, [list(zip(t, x)) for t, x in
                                                         zip(batch.columns["titles"],
                                                             batch.columns["texts"])])
    with torch.no_grad():
        scores = reranker.forward_scores(batch.queries, batch.docs)
        want = gumbel_lm_loss(loss_fn.engine, caches, ["Paris", "Rome"], scores, 2, 0.5, 1.0,
                              True, None, batch.mask)
    torch.testing.assert_close(loss.detach(), want, rtol=1e-5, atol=1e-5)
    assert loss_fn.pop_metrics()["cache_mib"] > 0
    grads = [p.grad for p in reranker.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    assert all(not p.requires_grad and p.grad is None for p in llm.parameters())


def test_ray_train_gumbel_trains_the_reranker_resumes_and_exports(
        tmp_path, ray_local, canonical_dir, tiny_bert_dir, tiny_dir):
    from raglign.models.rerankers import load_reranker
    from raglign.pipeline.train import build_reranker, train

    cfg = _cfg(canonical_dir, tiny_bert_dir, tiny_dir, tmp_path / "out")
    initial = {k: v.clone() for k, v in build_reranker(cfg).state_dict().items()}
    first = train(cfg.model_copy(update={"max_steps": 2}))
    assert (first.step, first.total_steps) == (2, 4) and first.checkpoint.endswith("step-00000002")
    early = (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
    second = train(cfg)  # same run: resumes at step 2
    assert (second.step, second.total_steps) == (4, 4)
    lines = (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
    assert lines[:2] == early
    history = [json.loads(line) for line in lines]
    assert [h["step"] for h in history] == [1, 2, 3, 4]
    assert all(h["peak_rss_mib"] > 100 and h["cache_mib"] > 0 and h["loss"] > 0 for h in history)

    # The exported reranker moved away from its (seeded) initial weights; the LLM's freezing
    # is checked in-process above (a worker's generator is not reachable from here).
    after = load_reranker(str(second.model_dir), kind="cross", max_length=48).state_dict()
    assert after.keys() == initial.keys()
    changed = [k for k in initial if not torch.equal(initial[k], after[k])]
    assert len(changed) > len(initial) // 2, changed
    card = (second.model_dir / "README.md").read_text()
    assert "objective: gumbel" in card and tiny_dir in card and "top-2 mask" in card
