"""vLLM backend: config building against ray's real classes, prompt token ids, and parsing of
``prompt_logprobs`` in the exact shapes vLLM and ray.data.llm produce.

vLLM itself cannot run here (CUDA-only wheel, no GPU): the engine is never started. The
``prompt_logprobs`` structures are built from a tiny model's real log-softmax, so the parsed
answer log-likelihood is checked numerically against a direct computation.
"""

from __future__ import annotations

import dataclasses
import importlib.util

import pytest
import torch

from raglign.config import validate
from raglign.errors import ConfigError, DataError, RaglignError
from raglign.models import vllm_backend as vb
from raglign.models.logprobs import prompt_token_logprobs
from raglign.models.registry import resolve_model
from raglign.prompts import answer_continuation, qa_prompt, rationale_prompt

DOCS = [{"doc_id": "d1", "title": "France", "text": "Paris is the capital of France."},
        {"doc_id": "d2", "title": None, "text": "Berlin is in Germany."}]
ROW = {"id": "q1", "question": "What is the capital of France?", "candidates": DOCS,
       "answer": "Paris", "choices": None}


@dataclasses.dataclass
class Logprob:
    """Field for field vLLM's ``vllm.logprobs.Logprob`` (a dataclass: logprob, rank,
    decoded_token), which ray.data.llm converts with ``dataclasses.asdict``."""

    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


def vllm_prompt_logprobs(model, tokenizer, ids: list[int]) -> list[dict | None]:
    """What vLLM returns for ``prompt_logprobs=1``: None, then per position the top-1 token and
    the prompt's own token (one key when they coincide), ranks 1-based."""
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
    out: list[dict | None] = [None]
    for pos in range(1, len(ids)):
        row = lp[pos - 1]
        top = int(row.argmax())
        own = ids[pos]
        entry = {top: Logprob(float(row[top]), 1, tokenizer.decode([top]))}
        rank = int((row > row[own]).sum()) + 1
        entry[own] = Logprob(float(row[own]), rank, tokenizer.decode([own]))
        out.append(entry)
    return out


def reference_answer_logprob(model, tokenizer, row) -> float:
    """log p(answer | prompt) by a separate forward over prompt ids then answer ids."""
    prompt_ids = vb.qa_token_ids(tokenizer, row, "candidates")
    answer_ids = tokenizer(answer_continuation(tokenizer, row["answer"]),
                           add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + answer_ids])).logits[0].float()
    lp = torch.log_softmax(logits[len(prompt_ids) - 1:-1], -1)
    return float(lp.gather(1, torch.tensor(answer_ids)[:, None]).sum())


# ----------------------------------------------------------------------------- prompt ids
def test_scoring_ids_are_prompt_then_answer(smollm_tokenizer):
    tok = smollm_tokenizer
    ids, start = vb.scoring_token_ids(tok, ROW, "candidates")
    docs = [(d["title"], d["text"]) for d in DOCS]
    assert tok.decode(ids[:start]) == qa_prompt(tok, ROW["question"], docs)
    assert tok.decode(ids[start:]) == answer_continuation(tok, "Paris") == "Paris"
    assert ids[:start] == vb.qa_token_ids(tok, ROW, "candidates")


def test_plain_template_model_gets_bos_and_spaced_answer(gemma_tokenizer):
    tok = gemma_tokenizer
    row = {**ROW, "choices": ["Paris", "Rome"], "answer": "A"}
    ids, start = vb.scoring_token_ids(tok, row, "candidates")
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert tok.decode(ids[start:]) == " A"
    assert "A. Paris\nB. Rome" in tok.decode(ids[:start])


def test_preprocess_rows_for_generation_and_rationale(smollm_tokenizer):
    cfg = vb.VLLMConfig(model="smollm2-135m")
    qa = vb.generation_spec(cfg, "qa").preprocess(dict(ROW))
    assert qa["tokenized_prompt"] == vb.qa_token_ids(smollm_tokenizer, ROW, "candidates")
    assert qa["sampling_params"] == {"temperature": 0.0, "top_p": 1.0, "seed": 42, "max_tokens": 64}
    rat = vb.generation_spec(cfg, "rationale").preprocess(dict(ROW))
    assert smollm_tokenizer.decode(rat["tokenized_prompt"]) == rationale_prompt(
        smollm_tokenizer, ROW["question"], "Paris")
    assert rat["sampling_params"] == {"temperature": 0.2, "top_p": 1.0, "seed": 42,
                                      "max_tokens": 1000}
    out = vb.generation_spec(cfg, "rationale").postprocess(
        {**ROW, "generated_text": "Because.", "prompt": "", "prompt_token_ids": [1],
         "num_input_tokens": 1, "generated_tokens": [5], "request_id": 0, "params": "",
         "batch_uuid": "x", "time_taken_llm": 0.1, "metrics": None, "num_generated_tokens": 1})
    assert out == {**ROW, "rationale": "Because."}


def test_bad_request_rows_name_the_field():
    spec = vb.scoring_spec(vb.VLLMConfig(model="smollm2-135m"))
    with pytest.raises(DataError, match="record q1, field 'answer'"):
        spec.preprocess({k: v for k, v in ROW.items() if k != "answer"})
    with pytest.raises(DataError, match=r"field 'candidates\[1\].text'"):
        spec.preprocess({**ROW, "candidates": [DOCS[0], {"title": "x"}]})
    with pytest.raises(DataError, match="field 'prompt'.*reserved"):
        spec.preprocess({**ROW, "prompt": "mine"})


# ----------------------------------------------------------------------------- config
def test_engine_config_is_a_real_ray_config():
    from ray.data.llm import vLLMEngineProcessorConfig

    cfg = validate(vb.VLLMConfig, {"model": "smollm2-135m", "tensor_parallel_size": 2,
                                   "batch_size": 8, "concurrency": [1, 3],
                                   "accelerator_type": "L4", "max_model_len": 2048,
                                   "dtype": "bfloat16",
                                   "engine_kwargs": {"gpu_memory_utilization": 0.5}})
    pc = vb.engine_config(cfg)
    assert isinstance(pc, vLLMEngineProcessorConfig)
    assert pc.model_source == resolve_model("smollm2-135m")
    assert pc.engine_kwargs == {"tensor_parallel_size": 2, "dtype": "bfloat16",
                                "max_model_len": 2048, "gpu_memory_utilization": 0.5,
                                "task_type": "generate"}
    assert (pc.batch_size, pc.concurrency, pc.accelerator_type) == (8, (1, 3), "L4")
    assert not (pc.chat_template_stage or pc.tokenize_stage or pc.detokenize_stage)
    assert vb.engine_config(vb.VLLMConfig(model="org/some-model")).model_source == "org/some-model"


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="tensor_parallel_size"):
        validate(vb.VLLMConfig, {"model": "m", "tensor_parallel_size": 0})
    with pytest.raises(ConfigError, match="max_model_len"):
        vb.engine_config(vb.VLLMConfig(model="m", engine_kwargs={"max_model_len": 9}))
    with pytest.raises(ConfigError, match="task"):
        vb.generation_spec(vb.VLLMConfig(model="m"), task="summary")


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed")
def test_missing_vllm_says_how_to_install():
    from raglign.models.processor_generator import VLLMGenerator

    with pytest.raises(RaglignError, match=r"install raglign\[vllm\]"):
        vb.scoring_processor(vb.VLLMConfig(model="smollm2-135m"))
    with pytest.raises(RaglignError, match=r"install raglign\[vllm\]"):
        VLLMGenerator(vb.VLLMConfig(model="smollm2-135m"))


def test_build_processor_constructs_the_engine_stage(ray_local):
    """ray's real build_processor accepts the spec (the engine actor is not started)."""
    spec = vb.scoring_spec(vb.VLLMConfig(model="smollm2-135m", accelerator_type="L4"))
    proc = spec.build()
    assert proc.list_stage_names() == ["vLLMEngineStage"]
    stage = proc.get_stage_by_name("vLLMEngineStage")
    assert stage.map_batches_kwargs["num_gpus"] == 1
    assert stage.map_batches_kwargs["accelerator_type"] == "L4"
    assert stage.fn_constructor_kwargs["model"] == resolve_model("smollm2-135m")
    assert proc.preprocess(dict(ROW))["__data"]["sampling_params"]["prompt_logprobs"] == 1


# ----------------------------------------------------------------------------- parsing
def test_parser_on_vllm_objects_ray_dicts_and_arrow_form(tiny_llama, smollm_tokenizer):
    from ray.llm._internal.batch.stages.vllm_engine_stage import (
        _convert_logprob_dict,
        vLLMOutputData,
    )

    tok = smollm_tokenizer
    ids, start = vb.scoring_token_ids(tok, ROW, "candidates")
    raw = vllm_prompt_logprobs(tiny_llama, tok, ids)
    ref = reference_answer_logprob(tiny_llama, tok, ROW)
    # 1) the engine's own objects
    assert sum(prompt_token_logprobs(raw, ids, start)) == pytest.approx(ref, abs=1e-4)
    # 2) as ray.data.llm puts them in the row (vLLMOutputData.model_dump)
    row = vLLMOutputData(prompt="", prompt_token_ids=ids, num_input_tokens=len(ids),
                         prompt_logprobs=[None if e is None else _convert_logprob_dict(e)
                                          for e in raw]).model_dump()
    assert isinstance(next(iter(row["prompt_logprobs"][1])), int)
    assert sum(prompt_token_logprobs(row["prompt_logprobs"], ids, start)) == pytest.approx(ref, abs=1e-4)
    # 3) after Arrow/JSON: string keys, the union of keys at every position, None where absent
    keys = {str(k) for e in raw[1:] for k in e}
    arrow = [None] + [{k: (dataclasses.asdict(e[int(k)]) if int(k) in e else None) for k in keys}
                      for e in raw[1:]]
    assert prompt_token_logprobs(arrow, ids, start) == prompt_token_logprobs(raw, ids, start)


def test_parser_rejects_structures_that_do_not_match():
    pl = [None, {5: Logprob(-1.0, 1, "a")}, {6: Logprob(-2.0, 1, "b"), 7: Logprob(-0.5, 2, "c")}]
    assert prompt_token_logprobs(pl, [1, 5, 7], 1) == [-1.0, -0.5]
    with pytest.raises(ValueError, match="no entry for the prompt token 9"):
        prompt_token_logprobs(pl, [1, 5, 9], 1)
    with pytest.raises(ValueError, match="position 0 has no log-probability"):
        prompt_token_logprobs(pl, [1, 5, 7], 0)
    with pytest.raises(ValueError, match="3 positions but the prompt has 2"):
        prompt_token_logprobs(pl, [1, 5], 1)
    with pytest.raises(ValueError, match=r"prompt_logprobs\[1\] is None"):
        prompt_token_logprobs([None, None], [1, 2], 1)


def test_scoring_rows_cross_ray_data(ray_local, tiny_llama, smollm_tokenizer):
    """The processor's own (ray-wrapped) preprocess and postprocess run in Ray Data around a
    stand-in for the engine stage that writes exactly what vLLMEngineStageUDF writes
    (vLLMOutputData.model_dump() with int-keyed prompt_logprobs, popped input keys)."""
    import ray
    from ray.llm._internal.batch.stages.vllm_engine_stage import (
        _convert_logprob_dict,
        vLLMOutputData,
    )

    tok = smollm_tokenizer
    rows = [ROW, {**ROW, "id": "q2", "answer": "Berlin"},
            {**ROW, "id": "q3", "candidates": DOCS[1:], "answer": "The capital is Paris"}]
    table = {}
    for r in rows:
        ids, _ = vb.scoring_token_ids(tok, r, "candidates")
        table[tuple(ids)] = [None if e is None else _convert_logprob_dict(e)
                             for e in vllm_prompt_logprobs(tiny_llama, tok, ids)]

    def engine_stand_in(batch):
        out = []
        for data in batch["__data"]:
            ids = list(data.pop("tokenized_prompt"))
            assert data.pop("sampling_params")["prompt_logprobs"] == 1
            data.update(vLLMOutputData(prompt="", prompt_token_ids=ids, num_input_tokens=len(ids),
                                       prompt_logprobs=table[tuple(ids)]).model_dump())
            data.update(request_id=0, batch_uuid="b", time_taken_llm=0.0, params="")
            out.append(data)
        return {"__data": out}

    proc = vb.scoring_spec(vb.VLLMConfig(model="smollm2-135m")).build()
    ds = (ray.data.from_items(rows).map(proc.preprocess)
          .map_batches(engine_stand_in, batch_size=2).map(proc.postprocess))
    got = {r["id"]: r for r in ds.take_all()}
    for r in rows:
        out = got[r["id"]]
        assert out["answer_logprob"] == pytest.approx(
            reference_answer_logprob(tiny_llama, tok, r), abs=1e-4)
        assert len(out["answer_token_logprobs"]) == len(
            tok(answer_continuation(tok, r["answer"]), add_special_tokens=False)["input_ids"])
        assert set(out) == set(r) | {"answer_logprob", "answer_token_logprobs"}


# ----------------------------------------------------------------------------- Generator API
def _engine_stand_in(scores: dict, texts: dict):
    """What vLLMEngineStageUDF writes for each request, from precomputed per-ids results:
    prompt_logprobs (scoring) or generated_text (generation)."""
    from ray.llm._internal.batch.stages.vllm_engine_stage import vLLMOutputData

    def stage(batch):
        out = []
        for data in batch["__data"]:
            ids = tuple(data.pop("tokenized_prompt"))
            params = data.pop("sampling_params")
            if params.get("prompt_logprobs"):
                res = vLLMOutputData(prompt="", prompt_token_ids=list(ids),
                                     num_input_tokens=len(ids), prompt_logprobs=scores[ids])
            else:
                res = vLLMOutputData(prompt="", prompt_token_ids=list(ids),
                                     num_input_tokens=len(ids), generated_text=texts[ids])
            data.update(res.model_dump())
            data.update(request_id=0, batch_uuid="b", time_taken_llm=0.0, params="")
            out.append(data)
        return {"__data": out}

    return stage


def test_vllm_generator_scores_equal_the_transformers_backend(ray_local, tiny_llama,
                                                              smollm_tokenizer, monkeypatch):
    """VLLMGenerator.score/generate through ray's real processor pieces around an engine
    stand-in: the same token ids as TransformersGenerator, results in input order."""
    from ray.llm._internal.batch.stages.vllm_engine_stage import _convert_logprob_dict

    from raglign.models.generator import TransformersGenerator
    from raglign.models.processor_generator import VLLMGenerator
    from raglign.prompts import parallel_prompt

    tok = smollm_tokenizer
    monkeypatch.setattr(vb, "require_vllm", lambda: None)
    gen = VLLMGenerator(vb.VLLMConfig(model="smollm2-135m", batch_size=2))
    prompts = [parallel_prompt(tok, "What is the capital of France?",
                               [("France", "Paris is the capital of France."), (None, "Berlin.")]),
               rationale_prompt(tok, "Who wrote Hamlet?", "Shakespeare"),
               parallel_prompt(tok, "Where is Berlin?", [(None, "Berlin is in Germany.")])]
    answers = ["Paris", "Because the play says so", "Germany"]
    scores, texts = {}, {}
    for p, a in zip(prompts, answers):
        req = gen.scoring_request(p, a)
        scores[tuple(req["prompt_ids"])] = [
            None if e is None else _convert_logprob_dict(e)
            for e in vllm_prompt_logprobs(tiny_llama, tok, req["prompt_ids"])]
        texts[tuple(gen.generation_request(p)["prompt_ids"])] = f"answer {len(texts)}\nmore"
    stage = _engine_stand_in(scores, texts)

    def apply(spec, ds):
        proc = spec.build()
        return ds.map(proc.preprocess).map_batches(stage, batch_size=2).map(proc.postprocess)

    monkeypatch.setattr(gen, "apply", apply)
    reference = TransformersGenerator(tiny_llama, tok).score(prompts, answers, per_token=True)
    got = gen.score(prompts, answers, normalize=True, per_token=True)
    for g, r in zip(got, reference):
        assert g.num_tokens == r.num_tokens and g.normalized
        assert g.logprob == pytest.approx(r.logprob, abs=1e-4)
        assert g.token_logprobs == pytest.approx(r.token_logprobs, abs=1e-4)
        assert g.value == pytest.approx(r.logprob / r.num_tokens, abs=1e-4)
    assert gen.generate(prompts, max_new_tokens=8, stop=("\n",)) == [
        "answer 0", "answer 1", "answer 2"]
    spec = gen.generation_spec(vb.GenerationParams(max_new_tokens=8, stop=("\n",)))
    assert spec.preprocess({"prompt_ids": [1, 2]})["sampling_params"] == {
        "max_tokens": 8, "temperature": 0.0, "top_p": 1.0, "stop": ["\n"]}
    with pytest.raises(DataError, match="answer"):
        gen.score(prompts[:1], [""])



def test_an_in_process_engine_uses_the_gpus_its_process_holds():
    """A reward actor's engine (``in_process``): vLLM's single-process executor on one GPU, its
    multiprocessing executor for tensor parallelism, and Ray's own engine stage then asks for
    exactly ``tensor_parallel_size`` GPUs, the ``reward_actor_gpus`` the train config requires;
    the Ray executor (which needs a placement group of its own) is refused."""
    from raglign.models.processor_generator import in_process_engine

    for tp, executor in ((1, "uni"), (2, "mp")):
        cfg = in_process_engine(vb.VLLMConfig(model="smollm2-135m", tensor_parallel_size=tp))
        assert cfg.engine_kwargs["distributed_executor_backend"] == executor
        stage = next(iter(vb.prompt_scoring_spec(cfg).build().stages.values()))
        assert stage.map_batches_kwargs["num_gpus"] == tp
    with pytest.raises(ConfigError, match="'ray' cannot run an engine inside the reward actor"):
        in_process_engine(vb.VLLMConfig(model="smollm2-135m",
                                        engine_kwargs={"distributed_executor_backend": "ray"}))
