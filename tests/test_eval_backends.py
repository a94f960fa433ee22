"""``raglign eval``'s generator setting off the transformers backend, checked against it.

* vLLM: the reader's own ``ray.data.llm`` processor (ray's real build_processor, preprocess and
  postprocess) around a stand-in for the engine stage that decodes greedily with the tiny model
  the transformers run loads, writing what vLLMEngineStageUDF writes. vLLM itself cannot run
  here (CUDA-only); what is checked is everything around the engine: the prompt ids (the top-k
  documents in ranking order, MMLU options included), the sampling sent, the answers' way back
  to the metrics.
* HTTP: llama.cpp's real OpenAI server on the packaged SmolLM2 Q4_1 GGUF (the session fixture of
  tests/test_http_backend.py) against the transformers backend on the de-quantised SmolLM2.
"""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from raglign.data.io import write_rows
from raglign.data.schema import candidate, make_row
from raglign.pipeline import eval_reader
from raglign.pipeline.evaluate import EvalConfig, evaluate


def _rows():
    return [
        make_row("q1", "What is the capital of France?", ["Paris"], [
            candidate("a1", "Lyon", "Lyon is a large city on the Rhone.", 3.0, False),
            candidate("a2", "France", "Paris is the capital and largest city of France.", 2.0,
                      True)]),
        make_row("q2", "Who wrote Hamlet?", ["William Shakespeare"], [
            candidate("b1", "Hamlet", "Hamlet is a tragedy written by William Shakespeare.", 1.0,
                      True),
            candidate("b2", "Globe", "The Globe is a theatre in London.", 0.5, False)]),
        make_row("q3", "Which planet is known as the red planet?", ["B"], [
            candidate("c1", "Mars", "Mars is called the red planet because of iron oxide.", 1.0,
                      True)], choices=["Venus", "Mars", "Jupiter", "Saturn"]),
    ]


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory, tiny_qwen2, smollm_tokenizer) -> str:
    """The tiny Qwen2 on disk: unlike the tiny Llama, whose greedy output starts with a newline
    (an empty answer), it answers with words, so equal answers mean something."""
    path = tmp_path_factory.mktemp("tiny-qwen2")
    tiny_qwen2.save_pretrained(path)
    smollm_tokenizer.save_pretrained(path)
    return str(path)


def _run(tmp_path, name: str, generator: dict, **kw) -> tuple[dict, dict]:
    data = tmp_path / "data"
    if not data.exists():
        write_rows(_rows(), data)
    out = tmp_path / f"{name}.json"
    report = evaluate(EvalConfig(data=str(data), output=str(out), generator=generator, k=2,
                                 max_new_tokens=6, name=name, **kw))
    rows = {d["id"]: d for d in pq.read_table(out.with_suffix(".rows.parquet")).to_pylist()}
    return report, rows


def test_vllm_reader_through_rays_processor_pieces(ray_local, qwen_dir, tiny_qwen2,
                                                  smollm_tokenizer, tmp_path, monkeypatch):
    from raglign.models import vllm_backend as vb
    from raglign.models.generator import TransformersGenerator
    from raglign.prompts import encode_prompt, parallel_prompt

    ref_gen = TransformersGenerator(tiny_qwen2, smollm_tokenizer)
    eos, pad = sorted(ref_gen.eos_ids), ref_gen.pad_id
    model, tok = tiny_qwen2, smollm_tokenizer

    def engine_stand_in(batch):
        """vLLMEngineStageUDF's output for a greedy request (self-contained: Ray workers cannot
        import this test module)."""
        import torch
        from ray.llm._internal.batch.stages.vllm_engine_stage import vLLMOutputData

        out = []
        for data in batch["__data"]:
            ids = list(data.pop("tokenized_prompt"))
            sp = data.pop("sampling_params")
            assert sp == {"max_tokens": 6, "temperature": 0.0, "top_p": 1.0, "stop": ["\n"]}, sp
            with torch.no_grad():
                gen = model.generate(torch.tensor([ids]), max_new_tokens=sp["max_tokens"],
                                     do_sample=False, eos_token_id=eos, pad_token_id=pad)
            text = tok.decode(gen[0, len(ids):], skip_special_tokens=True)
            text = text.split("\n")[0]  # vLLM returns the text before the stop string
            data.update(vLLMOutputData(prompt="", prompt_token_ids=ids, num_input_tokens=len(ids),
                                       generated_text=text).model_dump())
            data.update(request_id=0, batch_uuid="b", time_taken_llm=0.0, params="")
            out.append(data)
        return {"__data": out}

    built = []

    def stage(spec, params):
        proc = real_stage(spec, params)  # the reader's own processor: ray's build_processor
        assert proc.list_stage_names() == ["vLLMEngineStage"]
        built.append(spec.vllm_config())
        return lambda ds: (ds.map(proc.preprocess).map_batches(engine_stand_in, batch_size=2)
                           .map(proc.postprocess))

    real_stage = eval_reader.reader_stage
    monkeypatch.setattr(vb, "require_vllm", lambda: None)
    monkeypatch.setattr(eval_reader, "reader_stage", stage)
    ref_report, ref = _run(tmp_path, "transformers", {"name": qwen_dir, "dtype": "float32"})
    report, got = _run(tmp_path, "vllm", {"name": qwen_dir, "backend": "vllm",
                                          "dtype": "float32", "vllm": {"batch_size": 2}})
    assert built[0].model == qwen_dir and built[0].dtype == "float32"
    assert {i: r["prediction"] for i, r in got.items()} == {
        i: r["prediction"] for i, r in ref.items()}
    assert all(r["prediction"].strip() for r in ref.values())  # words, not empty answers
    for m in ("em", "f1", "accuracy", "recall@1"):
        assert report[m] == pytest.approx(ref_report[m])
    # A request's prompt: the top k = 2 documents in ranking order (here reversed), MMLU's
    # options, token for token the transformers backend's.
    for row in _rows():
        ranked = {**row, "ranking": list(range(len(row["candidates"])))[::-1]}
        request = eval_reader.request_rows([ranked], 2)[0]
        docs = [(row["candidates"][i]["title"], row["candidates"][i]["text"])
                for i in ranked["ranking"][:2]]
        assert request["documents"] == [{"title": t, "text": x} for t, x in docs]
        assert vb.task_token_ids(tok, request, "qa", eval_reader.DOCUMENTS) == encode_prompt(
            tok, parallel_prompt(tok, row["question"], docs, row.get("choices")))


@pytest.mark.integration
def test_http_reader_against_llama_cpp_server(ray_local, llama_server, tmp_path):
    """The Q4_1 server against the fp32 transformers reader of the same model: on these
    questions, whose answer is in the first document, both answer alike (quantisation can
    change a greedy answer in general, so the rows are ones where a 135M reader is sure)."""
    ref_report, ref = _run(tmp_path, "transformers", {"name": "smollm2-135m", "dtype": "float32",
                                                      "device": "cpu"})
    report, got = _run(tmp_path, "http", {
        "name": "smollm2-135m", "backend": "http",
        "http": {"base_url": llama_server, "model": "smollm2", "endpoint": "completions",
                 "batch_size": 4}})
    assert {i: r["prediction"] for i, r in got.items()} == {
        i: r["prediction"] for i, r in ref.items()}, (got, ref)
    for m in ("em", "subem", "f1", "accuracy"):
        assert report[m] == pytest.approx(ref_report[m])
    assert ref_report["f1"] > 0.5  # a meaningful comparison: the reader answers these
