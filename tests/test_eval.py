"""``raglign eval`` / ``report``: metrics against hand computations, model stages against direct
calls of the same models, and the report files."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from raglign.data.io import write_rows
from raglign.data.schema import candidate, make_row
from raglign.errors import ConfigError
from raglign.pipeline.evaluate import EvalConfig, evaluate, indirect_gold, oracle_ranking


def _rows():
    return [
        make_row("q1", "Who wrote Hamlet?", ["William Shakespeare"], [
            candidate("d1", "Globe", "The Globe theatre is in London.", 3.0, False),
            candidate("d2", "Hamlet", "Hamlet is a tragedy by William Shakespeare.", 2.0, True),
            candidate("d3", "Elsinore", "Elsinore is a castle in Denmark.", 1.0, True),
        ], meta={"type": "bridge"}),
        make_row("q2", "Capital of France?", ["Paris"], [
            candidate("e1", "Paris", "Paris is the capital of France.", 1.0, True),
            candidate("e2", "Lyon", "Lyon is a city.", 0.5, False),
        ], meta={"type": "comparison"}),
        make_row("q3", "No candidates?", ["x"], [], meta={"type": "bridge"}),
    ]


@pytest.fixture()
def data_dir(tmp_path):
    write_rows(_rows(), tmp_path / "data")
    return tmp_path / "data"


def test_base_ranking_metrics_match_hand_computation(data_dir, tmp_path):
    out = tmp_path / "base.json"
    report = evaluate(EvalConfig(data=str(data_dir), output=str(out), k=1, ks=[1, 2]))
    # q1: gold {d2, d3} at ranks 2, 3 → recall@1 0, recall@2 0.5, mrr 1/2;
    # q2: gold {e1} at rank 1 → recall@1 1, mrr 1.
    assert report["n"] == 2 and report["rows_skipped_no_candidates"] == 1
    assert report["recall@1"] == pytest.approx(0.5)
    assert report["recall@2"] == pytest.approx(0.75)
    assert report["mrr"] == pytest.approx(0.75)
    # ndcg@2 for q1: (1/log2(3)) / (1 + 1/log2(3)); q2: 1
    q1 = (1 / 1.5849625) / (1 + 1 / 1.5849625)
    assert report["ndcg@2"] == pytest.approx((q1 + 1) / 2, rel=1e-6)
    # d3 (Elsinore) is gold without the answer string: indirectly relevant, not in the top 1
    assert report["indirect_recall@1"] == pytest.approx(0.0)
    assert set(report["by_category"]) == {"bridge", "comparison", "ALL"}
    assert json.loads(out.read_text())["mrr"] == pytest.approx(0.75)
    detail = pq.read_table(out.with_suffix(".rows.parquet")).to_pylist()
    assert detail[0]["ranked_doc_ids"] == ["d1", "d2", "d3"]
    assert "| retrieval |" in out.with_suffix(".md").read_text()


def test_rank_by_signal_field(tmp_path):
    rows = _rows()[:2]
    for r, vals in zip(rows, ([0.1, 0.9, 0.5], [0.2, 0.3])):
        for c, v in zip(r["candidates"], vals):
            c["answer_logprob"] = v
    write_rows(rows, tmp_path / "d")
    report = evaluate(EvalConfig(data=str(tmp_path / "d"), output=str(tmp_path / "o.json"),
                                 rank_by="answer_logprob", ks=[1]))
    # q1 ranks d2 first (gold), q2 ranks e2 first (not gold) → recall@1 = (1/2 + 0) / 2
    assert report["recall@1"] == pytest.approx(0.25)
    with pytest.raises(ConfigError, match="no field 'missing'"):
        evaluate(EvalConfig(data=str(tmp_path / "d"), output=str(tmp_path / "o.json"),
                            rank_by="missing"))


def test_config_rejects_reranker_and_rank_by_together(tmp_path):
    from raglign.config import validate

    with pytest.raises(ConfigError, match="either reranker or rank_by"):
        validate(EvalConfig, {"data": "d", "output": "o", "reranker": "x", "rank_by": "y"})


def test_indirect_gold_uses_normalised_answers():
    row = _rows()[0]
    assert indirect_gold(row) == {"d3"}


def test_models_through_ray_match_direct_calls(ray_local, data_dir, tmp_path, tiny_bert_dir,
                                               tiny_llama, smollm_tokenizer):
    from raglign.models.generator import TransformersGenerator
    from raglign.models.rerankers import doc_text, load_reranker
    from raglign.prompts import parallel_prompt

    gen_dir = tmp_path / "tiny-llm"
    tiny_llama.save_pretrained(gen_dir)
    smollm_tokenizer.save_pretrained(gen_dir)
    out = tmp_path / "run.json"
    report = evaluate(EvalConfig(data=str(data_dir), output=str(out), reranker=str(tiny_bert_dir),
                                 reranker_kind="bi",
                                 generator={"name": str(gen_dir), "dtype": "float32"},
                                 k=2, max_new_tokens=4, name="tiny"))
    detail = {d["id"]: d for d in pq.read_table(out.with_suffix(".rows.parquet")).to_pylist()}
    reranker = load_reranker(str(tiny_bert_dir), kind="bi")
    gen = TransformersGenerator.from_name(str(gen_dir), dtype="float32")
    for row in _rows()[:2]:
        cands = row["candidates"]
        order = reranker.rank(row["question"], [doc_text(c["title"], c["text"]) for c in cands])
        assert detail[row["id"]]["ranked_doc_ids"] == [cands[i]["doc_id"] for i in order]
        prompt = parallel_prompt(gen.tokenizer, row["question"],
                           [(cands[i]["title"], cands[i]["text"]) for i in order[:2]])
        expected = gen.generate([prompt], max_new_tokens=4, stop=("\n",))[0]
        assert detail[row["id"]]["prediction"] == expected
    assert report["name"] == "tiny" and "em" in report and "f1" in report


def test_runs_evaluated_together_equal_each_run_alone_and_share_answers(
        ray_local, data_dir, tmp_path, tiny_bert_dir, tiny_llama, smollm_tokenizer, capsys):
    """The demo's evaluation: one reranker pool and one reader pool for every run; each report
    and its rows equal what evaluating the run alone writes, and a prompt two runs share is
    answered once."""
    from raglign.pipeline.evaluate import evaluate_many

    gen_dir = tmp_path / "tiny-llm"
    tiny_llama.save_pretrained(gen_dir)
    smollm_tokenizer.save_pretrained(gen_dir)
    common = dict(data=str(data_dir), reranker_kind="bi", k=1, max_new_tokens=3,
                  generator={"name": str(gen_dir), "dtype": "float32"})
    runs = {"base": "none", "oracle": "oracle", "tiny": str(tiny_bert_dir)}

    def cfgs(folder):
        return [EvalConfig(output=str(tmp_path / folder / f"{n}.json"), reranker=r, name=n,
                           **common) for n, r in runs.items()]

    together = evaluate_many(cfgs("together"))
    out = capsys.readouterr()
    alone = [evaluate(c) for c in cfgs("alone")]
    for a, b in zip(together, alone):
        assert {k: v for k, v in a.items() if k != "seconds"} == \
            {k: v for k, v in b.items() if k != "seconds"}
    rows = {}
    for n in runs:
        files = [pq.read_table(tmp_path / f / f"{n}.rows.parquet").to_pylist()
                 for f in ("together", "alone")]
        assert files[0] == files[1]
        rows[n] = files[0]
    # the top-1 prompt of each row under each run, answered once per distinct prompt
    prompts = {(r["id"], r["ranked_doc_ids"][0]) for n in runs for r in rows[n]}
    assert len(prompts) < 3 * 2  # base and oracle agree on q2's top document at least
    n = len(prompts)
    assert f"[eval base, oracle, tiny] generate: 100%|██████████| {n}/{n}" in out.err
    assert "[eval tiny] rerank: 100%|██████████| 2/2" in out.err  # only a model run scores


def test_report_table_and_plot(data_dir, tmp_path, capsys):
    from raglign.cli import main

    a = tmp_path / "a.json"
    evaluate(EvalConfig(data=str(data_dir), output=str(a), name="base"))
    assert main(["report", str(a), "--output", str(tmp_path / "cmp.md")]) == 0
    text = (tmp_path / "cmp.md").read_text()
    assert "| base | 2 |" in text and (tmp_path / "cmp.png").stat().st_size > 1000
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert main(["report", str(bad)]) == 2


def test_gold_missed_by_the_retriever_counts_as_a_miss(tmp_path):
    rows = _rows()[1:2]
    rows[0]["candidates"] = [dict(c, is_gold=None) for c in rows[0]["candidates"]]
    rows[0]["meta"] = '{"gold_doc_ids": ["e1", "zz"]}'
    write_rows(rows, tmp_path / "d")
    report = evaluate(EvalConfig(data=str(tmp_path / "d"), output=str(tmp_path / "o.json"),
                                 ks=[2]))
    assert report["recall@2"] == pytest.approx(0.5)


def test_oracle_ranking_puts_gold_first_in_retrieval_order():
    q1, q2 = _rows()[:2]
    assert oracle_ranking(q1, k1=20) == [1, 2, 0]          # d2, d3 gold, then d1
    assert oracle_ranking(q1, k1=2) == [1, 0]              # only the first k1 candidates
    assert oracle_ranking(q2, k1=20) == [0, 1]             # already gold first: unchanged
    # gold known only from meta (retrieval output with is_gold unknown) counts too
    q2["candidates"] = [dict(c, is_gold=None) for c in q2["candidates"]]
    q2["meta"] = '{"gold_doc_ids": ["e2", "missed"]}'
    assert oracle_ranking(q2, k1=20) == [1, 0]


def _gold_rows():
    """Rows with 1, 2 and 3 gold documents, gold placed last by the retriever."""
    rows = []
    for i, n_gold in enumerate((1, 2, 3)):
        cands = [candidate(f"q{i}-n{j}", "t", f"distractor {j}", 1.0, False) for j in range(4)]
        cands += [candidate(f"q{i}-g{j}", "t", f"evidence {j}", 0.0, True)
                  for j in range(n_gold)]
        rows.append(make_row(f"q{i}", f"question {i}?", ["nothing"], cands))
    return rows


def test_oracle_eval_reaches_the_recall_ceiling(tmp_path):
    write_rows(_gold_rows(), tmp_path / "d")
    report = evaluate(EvalConfig(data=str(tmp_path / "d"), output=str(tmp_path / "o.json"),
                                 reranker="oracle", ks=[1, 2, 3], k=2))
    # Recall@k of a perfect ranking is min(1, k / #gold) per row; MRR and NDCG are 1.
    for k in (1, 2, 3):
        expected = sum(min(1.0, k / g) for g in (1, 2, 3)) / 3
        assert report[f"recall@{k}"] == pytest.approx(expected)
        assert report[f"ndcg@{k}"] == pytest.approx(1.0)
    assert report["mrr"] == pytest.approx(1.0) and report["name"] == "oracle"
    detail = pq.read_table(tmp_path / "o.rows.parquet").to_pylist()
    assert detail[1]["ranked_doc_ids"][:2] == ["q1-g0", "q1-g1"]
    # the base keeps the retriever's order: every gold document below the 4 distractors
    base = evaluate(EvalConfig(data=str(tmp_path / "d"), output=str(tmp_path / "b.json"), ks=[1]))
    assert base["recall@1"] == 0.0 and base["mrr"] == pytest.approx(0.2)


def test_oracle_counts_a_gold_document_the_retriever_missed(tmp_path):
    rows = _gold_rows()[1:2]                                  # 2 gold among the candidates
    rows[0]["meta"] = '{"gold_doc_ids": ["elsewhere"]}'      # and 1 the retriever missed
    write_rows(rows, tmp_path / "d")
    report = evaluate(EvalConfig(data=str(tmp_path / "d"), output=str(tmp_path / "o.json"),
                                 reranker="oracle", ks=[5]))
    assert report["recall@5"] == pytest.approx(2 / 3)
