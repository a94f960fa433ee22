"""HTTP backend: request bodies, response parsing, and end-to-end runs through ray.data.llm's
HttpRequestProcessor against real OpenAI-compatible servers on loopback.

* ``transformers serve`` (extra ``transformers[serving]``) serves SmolLM2 for generation through
  /v1/chat/completions and /v1/completions; its greedy answers are checked against local
  ``generate`` on the same weights.
* llama.cpp's server (extra ``llama-cpp-python[server]``) serves the packaged Q4_1 GGUF for
  scoring through /v1/completions with echo+logprobs; its scores are compared with the
  transformers fp32 reference of the de-quantised model.

Each server is started once per session by its fixture and stopped by pid; a test skips only
when the server's package is not installed.
"""

from __future__ import annotations

import json

import pytest
import torch

from raglign.errors import DataError
from raglign.models import http_backend as hb
from raglign.models import vllm_backend as vb
from raglign.models.generator import GenerationParams
from raglign.models.logprobs import echoed_answer_logprobs
from raglign.models.registry import resolve_model
from raglign.prompts import answer_continuation, qa_messages, qa_prompt

DOCS = [{"title": "France", "text": "Paris is the capital and largest city of France."}]
ROW = {"id": "q1", "question": "What is the capital of France?", "candidates": DOCS,
       "answer": "Paris", "choices": None}
# (question, document, right answer, wrong answer)
QA = [
    ("What is the capital of France?", "Paris is the capital and largest city of France.",
     "Paris", "Tokyo"),
    ("Who wrote Hamlet?", "Hamlet is a tragedy written by William Shakespeare.",
     "William Shakespeare", "Isaac Newton"),
]


# The servers (transformers_server, llama_server) are session fixtures in conftest.py, shared
# with tests/test_label_llm.py.


# ----------------------------------------------------------------------------- no server
def test_request_bodies_follow_the_openai_api(smollm_tokenizer):
    chat = hb.generation_spec(hb.HttpConfig(base_url="http://h/v1/", model="m"), "qa")
    assert chat.config.url == "http://h/v1/chat/completions"
    body = chat.preprocess(dict(ROW))["payload"]
    assert body["messages"] == qa_messages(ROW["question"], "(Title: France) " + DOCS[0]["text"] + "\n")
    assert (body["model"], body["temperature"], body["seed"], body["max_tokens"]) == ("m", 0.0, 42, 64)
    comp = hb.generation_spec(hb.HttpConfig(base_url="http://h/v1", model="m",
                                            tokenizer="smollm2-135m", endpoint="completions"),
                              "rationale")
    body = comp.preprocess(dict(ROW))["payload"]
    assert comp.config.url == "http://h/v1/completions"
    assert "Question: What is the capital of France?. Answer: Paris. Rationale: " in body["prompt"]
    assert (body["temperature"], body["top_p"], body["max_tokens"]) == (0.2, 1.0, 1000)
    score = hb.scoring_spec(hb.HttpConfig(base_url="http://h/v1", model="m",
                                          tokenizer="smollm2-135m"))
    pre = score.preprocess(dict(ROW))
    prompt = qa_prompt(smollm_tokenizer, ROW["question"], [("France", DOCS[0]["text"])])
    assert pre["payload"]["prompt"] == prompt + "Paris"
    assert pre["_raglign_answer_chars"] == 5
    assert {k: pre["payload"][k] for k in ("echo", "logprobs", "max_tokens")} == {
        "echo": True, "logprobs": 1, "max_tokens": 1}


def test_generator_interface_sends_rendered_prompts_to_completions():
    from raglign.errors import ConfigError
    from raglign.models.processor_generator import HttpGenerator

    chat = HttpGenerator(hb.HttpConfig(base_url="http://h/v1", model="m", tokenizer="smollm2-135m"))
    with pytest.raises(ConfigError, match="endpoint: completions"):
        chat.generate(["Q: capital of France?\nA:"])
    gen = HttpGenerator(hb.HttpConfig(base_url="http://h/v1", model="m", tokenizer="smollm2-135m",
                                      endpoint="completions"))
    pre = gen.scoring_spec().preprocess(gen.scoring_request("Q: capital of France?\nA:", "Paris"))
    assert pre["payload"]["prompt"] == "Q: capital of France?\nA:Paris"  # chat template: no space
    assert pre["_raglign_answer_chars"] == 5


def test_api_key_comes_from_the_environment(monkeypatch):
    from raglign.errors import ConfigError

    cfg = hb.HttpConfig(base_url="http://h/v1", model="m", api_key_env="RAGLIGN_TEST_KEY")
    with pytest.raises(ConfigError, match="RAGLIGN_TEST_KEY is not set"):
        hb.processor_config(cfg, "/completions")
    monkeypatch.setenv("RAGLIGN_TEST_KEY", "sk-1")
    assert hb.processor_config(cfg, "/completions").headers == {"Authorization": "Bearer sk-1"}


def test_echo_parser_and_server_errors():
    # llama.cpp's shape: chat special tokens detokenise to "" (offsets are not positions in the
    # prompt sent), then one generated token. The answer "Hello" is the prompt's last 5 chars.
    lp = {"tokens": ["user", "\n", "Hi", "", "\n", "ass", "istant", "\n", "Hello", "!"],
          "token_logprobs": [None, -3.3, -7.2, -9.5, -0.05, -0.06, -1e-5, -6e-4, -4.3, -1.3],
          "text_offset": [0, 4, 5, 7, 7, 8, 11, 17, 18, 23]}
    assert echoed_answer_logprobs(lp, 5, 1) == [-4.3]
    assert echoed_answer_logprobs(lp, 6, 1) == [-6e-4, -4.3]  # "\nHello"
    with pytest.raises(ValueError, match="straddles"):
        echoed_answer_logprobs(lp, 3, 1)  # "llo" starts inside "Hello"
    assert echoed_answer_logprobs(lp, 1, 0) == [-1.3]  # nothing generated: "!" ends the prompt
    with pytest.raises(ValueError, match="ignored logprobs/echo"):
        echoed_answer_logprobs(None, 5, 1)
    spec = hb.scoring_spec(hb.HttpConfig(base_url="http://h/v1", model="m", tokenizer="smollm2-135m"))
    with pytest.raises(DataError, match="record q1.*model not found"):
        spec.postprocess({**ROW, "_raglign_answer_chars": 5,
                          "http_response": {"error": {"message": "model not found"}}})


# ----------------------------------------------------------------------------- real servers
def _local_greedy(model, tokenizer, prompt_ids: list[int], n: int) -> str:
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=n, do_sample=False)
    return tokenizer.decode(out[0, len(prompt_ids):], skip_special_tokens=True)


@pytest.mark.integration
def test_generation_through_transformers_serve(ray_local, transformers_server, smollm_dir,
                                               smollm_tokenizer):
    import ray

    rows = [{"id": f"q{i}", "question": q, "candidates": [{"title": None, "text": d}],
             "choices": None} for i, (q, d, _, _) in enumerate(QA)]
    params = GenerationParams(max_new_tokens=8)
    got = {}
    for endpoint in ("chat", "completions"):
        cfg = hb.HttpConfig(base_url=transformers_server, model=smollm_dir, endpoint=endpoint,
                            batch_size=2)
        out = hb.generation_processor(cfg, "qa", params)(ray.data.from_items(rows)).take_all()
        got[endpoint] = {r["id"]: r["prediction"] for r in out}
        assert all(set(r) == set(rows[0]) | {"prediction"} for r in out)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(smollm_dir, dtype=torch.float32).eval()
    for r in rows:
        ids = vb.qa_token_ids(smollm_tokenizer, r, "candidates")
        expected = _local_greedy(model, smollm_tokenizer, ids, 8)
        assert expected.strip()
        assert got["chat"][r["id"]] == expected
        assert got["completions"][r["id"]] == expected
    # The same through the Generator interface: rendered prompts in, texts out, in order.
    from raglign.models.processor_generator import HttpGenerator

    gen = HttpGenerator(hb.HttpConfig(base_url=transformers_server, model=smollm_dir,
                                      endpoint="completions", batch_size=2))
    prompts = [qa_prompt(smollm_tokenizer, r["question"], [(None, r["candidates"][0]["text"])])
               for r in rows]
    assert gen.generate(prompts[::-1], params) == [got["chat"][r["id"]] for r in rows[::-1]]


def _reference_scores(rows, tokenizer) -> list[float]:
    """log p(answer | prompt) under the de-quantised SmolLM2 in float32 (transformers)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(resolve_model("smollm2-135m"),
                                                 dtype=torch.float32).eval()
    scores = []
    for r in rows:
        ids, start = vb.scoring_token_ids(tokenizer, r, "candidates")
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([ids])).logits[0, start - 1:-1], -1)
        scores.append(float(lp.gather(1, torch.tensor(ids[start:])[:, None]).sum()))
    return scores


@pytest.mark.integration
def test_scoring_through_llama_cpp_server(ray_local, llama_server, smollm_tokenizer):
    import ray

    rows = [{"id": f"q{i}-{tag}", "question": q, "candidates": [{"title": None, "text": d}],
             "answer": a, "choices": None}
            for i, (q, d, right, wrong) in enumerate(QA) for tag, a in (("r", right), ("w", wrong))]
    cfg = hb.HttpConfig(base_url=llama_server, model="smollm2", tokenizer="smollm2-135m",
                        batch_size=8)
    out = {r["id"]: r for r in hb.scoring_processor(cfg)(ray.data.from_items(rows)).take_all()}
    http = [out[r["id"]]["answer_logprob"] for r in rows]
    ref = _reference_scores(rows, smollm_tokenizer)
    for r in rows:  # the server's tokenizer splits the answer as the local pieces do
        n = len(smollm_tokenizer(answer_continuation(smollm_tokenizer, r["answer"]),
                                 add_special_tokens=False)["input_ids"])
        assert len(out[r["id"]]["answer_token_logprobs"]) == n
    for i in range(0, len(rows), 2):  # right answer above wrong answer, under both
        assert http[i] > http[i + 1] and ref[i] > ref[i + 1]
    # Q4_1 weights vs their de-quantised copy: close per answer, not equal
    assert max(abs(h - r) for h, r in zip(http, ref)) < 0.75, (http, ref)
    corr = torch.corrcoef(torch.tensor([http, ref]))[0, 1]
    assert corr > 0.9, (http, ref)
    # The Generator interface sends the same texts: the same scores, per token, in order.
    from raglign.models.processor_generator import HttpGenerator

    prompts = [qa_prompt(smollm_tokenizer, r["question"], [(None, r["candidates"][0]["text"])])
               for r in rows]
    results = HttpGenerator(cfg).score(prompts, [r["answer"] for r in rows], per_token=True)
    assert [x.logprob for x in results] == pytest.approx(http, abs=1e-5)
    assert [list(x.token_logprobs) for x in results] == [
        pytest.approx(out[r["id"]]["answer_token_logprobs"], abs=1e-5) for r in rows]
    print(json.dumps({"http": http, "reference": ref, "pearson": float(corr)}))
