"""The ray.data.llm path of the label job (``backend: vllm`` / ``backend: http``).

* vLLM cannot run here (CUDA-only): the job runs end to end through the real processor's
  (ray-wrapped) preprocess and postprocess around a stand-in for the engine stage that writes
  what vLLMEngineStageUDF writes, with ``prompt_logprobs`` from a tiny model's log-softmax; the
  labels are checked against a direct forward pass.
* HTTP runs against the real servers of conftest.py (``transformers serve`` for generation,
  llama.cpp on the Q4_1 GGUF for scoring) and is compared with the transformers backend.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from raglign.errors import ConfigError
from raglign.models import vllm_backend as vb
from raglign.pipeline.label import llm as label_llm
from raglign.pipeline.label import label_in_process, load_label_config, run_label
from raglign.signals.base import Generate, Score

DOCS = [{"doc_id": "d1", "title": "France", "text": "Paris is the capital of France.", "score": 2.0},
        {"doc_id": "d2", "title": None, "text": "Berlin is in Germany.", "score": 1.0},
        {"doc_id": "d3", "title": "Rome", "text": "Rome is the capital of Italy.", "score": 0.5}]
ROWS = [
    {"id": "q1", "question": "What is the capital of France?", "answers": ["Paris"],
     "candidates": DOCS},
    {"id": "q2", "question": "Where is Berlin?", "answers": ["Germany"], "candidates": DOCS[1:]},
    {"id": "q3", "question": "No gold answer here?", "answers": [], "candidates": DOCS},
]


def _write(tmp_path, rows) -> str:
    path = tmp_path / "in"
    path.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), path / "data.parquet")
    return str(path)


def _read(out) -> dict[str, dict]:
    return {r["id"]: r for r in pq.read_table(out).to_pylist()}


# ----------------------------------------------------------------------------- config
def test_config_rejects_engine_signals_and_needs_a_server():
    base = {"input": "i", "output": "o"}
    vllm = {"name": "smollm2-135m", "backend": "vllm"}
    with pytest.raises(ConfigError, match="'attention' cannot run on backend 'vllm'.*attention"):
        load_label_config(**base, generator=vllm, signals=["attention"])
    with pytest.raises(ConfigError, match="'gumbel_weight'.*masked attention"):
        load_label_config(**base, generator=vllm, signals=["gumbel_weight"], context="concat")
    with pytest.raises(ConfigError, match="'loo_logprob'.*context: concat"):
        load_label_config(**base, generator=vllm, signals=["loo_logprob"])
    with pytest.raises(ConfigError, match="http: block"):
        load_label_config(**base, generator={**vllm, "backend": "http"}, signals=["judge"])
    cfg = load_label_config(**base, signals=["answer_logprob", "judge"], context="concat",
                            generator={**vllm, "vllm": {"batch_size": 4, "max_model_len": 2048}})
    assert cfg.generator.vllm_config().model == "smollm2-135m"
    # batch size is a runtime knob (resume with another one); max_model_len can change labels
    fp = cfg.fingerprint()
    assert "batch_size" not in fp["vllm"] and fp["vllm"]["max_model_len"] == 2048
    assert "vllm" not in load_label_config(**base, generator="smollm2-135m",
                                           signals=["judge"]).fingerprint()


def test_expansion_dedupes_and_keys_are_stable(tmp_path):
    cfg = load_label_config(input="i", output="o",
                            generator={"name": "smollm2-135m", "backend": "vllm"},
                            context="concat", signals=["answer_quality", "dpa", "answer_logprob"])
    signals = [label_llm.SIGNALS[n] for n in cfg.signals]
    rows = label_llm.expand(ROWS, "s0", signals, cfg)
    # answer_quality and dpa share the 3 + 2 single-document generations; 5 scorings; q3 rejected
    assert sorted(r[label_llm.KIND] for r in rows) == ["qa"] * 5 + ["score"] * 5
    assert {r[label_llm.TOTAL] for r in rows} == {10}
    req = Score("q", ((None, "d"),), "a")
    assert label_llm.request_key(req) == label_llm.request_key(Score("q", ((None, "d"),), "a"))
    assert label_llm.request_key(req) != label_llm.request_key(Generate("qa", "q", ((None, "d"),)))
    assert pa.Table.from_pylist(rows, schema=label_llm.REQUEST_SCHEMA).num_rows == 10


# ----------------------------------------------------------------------------- vLLM
def _logprobs(model, ids):
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)


def _direct_score(model, tok, question, docs, answer) -> float:
    ids, start = vb.scoring_token_ids(tok, {"id": "x", "question": question, "answer": answer,
                                            "candidates": docs}, "candidates")
    lp = _logprobs(model, ids)
    return float(sum(lp[p - 1, ids[p]] for p in range(start, len(ids))))


def test_vllm_job_through_processor_with_engine_stand_in(ray_local, tiny_llama, smollm_tokenizer,
                                                         tmp_path, monkeypatch):
    from ray.llm._internal.batch.stages.vllm_engine_stage import vLLMOutputData

    model, tok = tiny_llama, smollm_tokenizer
    seen: list = []

    def engine_stand_in(batch):
        """vLLMEngineStageUDF's output: vLLMOutputData.model_dump() plus ids, per request
        (self-contained: Ray workers cannot import this test module)."""
        import torch

        def _logprobs(model, ids):
            with torch.no_grad():
                return torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)

        out = []
        for data in batch["__data"]:
            ids = list(data.pop("tokenized_prompt"))
            sp = data.pop("sampling_params")
            res = {"prompt": "", "prompt_token_ids": ids, "num_input_tokens": len(ids)}
            vllm_fields = {"max_tokens", "temperature", "top_p", "seed", "prompt_logprobs",
                           "detokenize"}  # all valid SamplingParams fields, none None but seed
            assert set(sp) == vllm_fields and sp["top_p"] is not None, sp
            if sp["prompt_logprobs"]:
                lp = _logprobs(model, ids)
                res["prompt_logprobs"] = [None] + [
                    {ids[p]: {"logprob": float(lp[p - 1, ids[p]]), "rank": None,
                              "decoded_token": None}} for p in range(1, len(ids))]
            else:  # judge: "relevant" iff the judged document talks about a capital
                doc = tok.decode(ids).split("Document:")[1]
                assert sp == {"max_tokens": 16, "temperature": 0.0, "top_p": 1.0, "seed": None,
                              "prompt_logprobs": None, "detokenize": True}, sp
                res["generated_text"] = "relevant" if "capital" in doc else "Not relevant."
            data.update(vLLMOutputData(**res).model_dump())
            data.update(request_id=0, batch_uuid="b", time_taken_llm=0.0, params="")
            out.append(data)
        return {"__data": out}

    def stage(cfg):
        proc = label_llm.vllm_spec(cfg.generator.vllm_config()).build()
        assert proc.list_stage_names() == ["vLLMEngineStage"]
        seen.append(cfg.generator.backend)
        return lambda ds: (ds.map(proc.preprocess).map_batches(engine_stand_in, batch_size=4)
                           .map(proc.postprocess))

    monkeypatch.setattr(label_llm, "llm_stage", stage)
    out = tmp_path / "out"
    cfg = load_label_config(input=_write(tmp_path, ROWS), output=str(out),
                            generator={"name": "smollm2-135m", "backend": "vllm"}, context="concat",
                            signals=["answer_logprob", "loo_logprob", "judge"], loo={"k": 2},
                            shard_rows=2, batch_size=2, eval={"enabled": False})
    summary = run_label(cfg, progress=lambda m: None)
    assert seen == ["vllm"]
    # two shards; the second holds only the rejected row, so it has a record but no part
    assert [p.name for p in out.glob("part-*.parquet")] == ["part-data-00000000-00000002.parquet"]
    assert (summary["shards_finished"], summary["rows_out"], summary["rows_rejected"]) == (2, 2, 1)
    assert summary["reject_reasons"] == {"no answers": 1}
    assert summary["counts"] == {"judge_unparseable": 0, "judge_outputs": 5}
    assert not list((out / "_llm").glob("*.json"))
    got = _read(out)
    for row in ROWS[:2]:
        docs = [{"title": d["title"], "text": d["text"]} for d in row["candidates"]]
        q, a = row["question"], row["answers"][0]
        cands = got[row["id"]]["candidates"]
        for i, c in enumerate(cands):
            assert c["answer_logprob"] == pytest.approx(_direct_score(model, tok, q, [docs[i]], a),
                                                        abs=1e-4)
            assert c["judge"] == (2.0 if "capital" in docs[i]["text"] else 0.0)
        loo = [_direct_score(model, tok, q, docs[:2][:i] + docs[:2][i + 1:], a) for i in range(2)]
        assert [c["loo_logprob"] for c in cands[:2]] == pytest.approx(loo, abs=1e-4)
        assert all(c["loo_logprob"] is None for c in cands[2:])
    assert json.loads((out / "_rejects.jsonl").read_text())["id"] == "q3"
    # resume: every shard is committed, nothing is sent again
    seen.clear()
    again = run_label(cfg, progress=lambda m: None)
    assert seen == [] and again["rows_out"] == 2 and again["rows_this_run"] == 0


# ----------------------------------------------------------------------------- HTTP
QA_ROWS = [
    {"id": "h1", "question": "What is the capital of France?", "answers": ["Paris"],
     "candidates": [{"doc_id": "a", "title": None,
                     "text": "Paris is the capital and largest city of France."},
                    {"doc_id": "b", "title": None, "text": "The Nile is a river in Africa."}]},
    {"id": "h2", "question": "Who wrote Hamlet?", "answers": ["William Shakespeare"],
     "candidates": [{"doc_id": "c", "title": None,
                     "text": "Hamlet is a tragedy written by William Shakespeare."},
                    {"doc_id": "d", "title": None, "text": "Isaac Newton studied gravity."}]},
]


def _labels(rows_by_id, field):
    return [c[field] for r in QA_ROWS for c in rows_by_id[r["id"]]["candidates"]]


@pytest.mark.integration
def test_http_generation_matches_transformers(ray_local, transformers_server, smollm_dir, tmp_path):
    common = {"input": _write(tmp_path, QA_ROWS), "signals": ["answer_quality"],
              "answer_quality": {"max_new_tokens": 8}, "eval": {"enabled": False}}
    cfg = load_label_config(**common, output=str(tmp_path / "http"), generator={
        "name": "smollm2-135m", "backend": "http",
        "http": {"base_url": transformers_server, "model": smollm_dir, "endpoint": "completions",
                 "batch_size": 4}})
    run_label(cfg, progress=lambda m: None)
    http = _labels(_read(tmp_path / "http"), "answer_quality")
    ref_cfg = load_label_config(**common, output=str(tmp_path / "ref"),
                                generator={"name": "smollm2-135m", "dtype": "float32"})
    ref = _labels({r["id"]: r for r in label_in_process(ref_cfg, QA_ROWS)}, "answer_quality")
    assert http == pytest.approx(ref, abs=1e-9)
    assert len(set(http)) > 1, http  # the greedy answers differ between documents


@pytest.mark.integration
def test_http_scoring_matches_transformers(ray_local, llama_server, tmp_path):
    common = {"input": _write(tmp_path, QA_ROWS), "signals": ["answer_logprob"],
              "context": "concat", "eval": {"enabled": False}}
    cfg = load_label_config(**common, output=str(tmp_path / "http"), generator={
        "name": "smollm2-135m", "backend": "http",
        "http": {"base_url": llama_server, "model": "smollm2", "batch_size": 8}})
    run_label(cfg, progress=lambda m: None)
    http = _labels(_read(tmp_path / "http"), "answer_logprob")
    ref_cfg = load_label_config(**common, output=str(tmp_path / "ref"),
                                generator={"name": "smollm2-135m", "dtype": "float32"})
    ref = _labels({r["id"]: r for r in label_in_process(ref_cfg, QA_ROWS)}, "answer_logprob")
    # Q4_1 weights vs their de-quantised copy: same order within each row, close values
    for i in range(0, len(ref), 2):
        assert (http[i] > http[i + 1]) == (ref[i] > ref[i + 1]), (http, ref)
    assert max(abs(h - r) for h, r in zip(http, ref)) < 0.75, (http, ref)
