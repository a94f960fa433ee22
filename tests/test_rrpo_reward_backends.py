"""RRPO's reward actors on the vLLM and HTTP backends (issue 15): which configs take them, an
HTTP reader against a real llama.cpp server, and the vLLM reader through ray.data.llm's real
processor pieces around an engine stand-in.

Each reward is checked against a reference computed here, outside the reader: the HTTP one by
calling :class:`~raglign.models.processor_generator.HttpGenerator` on the ordinary QA prompt
built in the test, the vLLM one from the tiny model's own log-softmax over the token ids the
engine is sent and from the text the stand-in answers.
"""

from __future__ import annotations

import pytest
import torch

from raglign.config import validate
from raglign.errors import ConfigError
from raglign.metrics import f1_score
from raglign.prompts import (answer_continuation, encode_piece, encode_prompt, parallel_prompt,
                             qa_prompt)
from raglign.training.rrpo_rewards import RewardRequest
from raglign.training_config import RRPOOptions, TrainConfig

HTTP = {"base_url": "http://h/v1", "endpoint": "completions"}

QA = [("What is the capital of France?",
       [("France", "Paris is the capital and largest city of France."),
        (None, "Berlin is the capital of Germany."), ("Tokyo", "Tokyo is in Japan.")],
       ("Paris",)),
      ("Who wrote Hamlet?",
       [(None, "Hamlet is a tragedy written by William Shakespeare."),
        ("Newton", "Isaac Newton wrote the Principia."), (None, "Ham is a kind of meat.")],
       ("William Shakespeare", "Shakespeare"))]


def requests(subsets: list[tuple[int, tuple[int, ...]]]) -> list[RewardRequest]:
    """The reward request of question ``q`` with the chosen documents ``chosen`` (in candidate
    order), built as the loss builds them."""
    out = []
    for q, chosen in subsets:
        question, docs, answers = QA[q]
        out.append(RewardRequest((f"q{q}", chosen), question, tuple(docs[j] for j in chosen),
                                 answers[0], answers, None))
    return out


def chosen_docs(r: RewardRequest) -> list[tuple[str | None, str]]:
    return list(r.documents)


# --------------------------------------------------------------------------- config

def _train(rrpo: dict, **kw) -> dict:
    return {"job": "train", "data": "d", "output": "o", "objective": "rrpo", "num_workers": 1,
            "rrpo": rrpo, **kw}


@pytest.mark.parametrize("backend", ["http", "vllm"])
def test_reward_actors_take_vllm_and_http_the_in_worker_reader_does_not(backend):
    gen = {"name": "smollm2-135m", "backend": backend, **({"http": HTTP} if backend == "http"
                                                          else {})}
    cfg = validate(TrainConfig, _train({"generator": gen, "reward_actors": 2}), "t.yaml")
    assert (cfg.rrpo.generator.backend, cfg.rrpo.reward_actors) == (backend, 2)
    # reward_actors 0, given or local mode's default: the reader would load in every worker
    for bad in (_train({"generator": gen, "reward_actors": 0}),
                _train({"generator": gen}, num_workers=0)):
        with pytest.raises(ConfigError, match=rf"backend '{backend}' cannot run here: RRPO's "
                           r"reader is loaded in every training worker \(rrpo.reward_actors: 0\)"
                           r"; set rrpo.reward_actors >= 1"):
            validate(TrainConfig, bad, "t.yaml")
    # the actor holds no GPU for these backends
    with pytest.raises(ConfigError, match="rrpo.reward_actor_gpus applies to the transformers "
                                          "backend"):
        validate(TrainConfig, _train({"generator": gen, "reward_actor_gpus": 1}), "t.yaml")


def test_http_f1_needs_the_completions_endpoint():
    chat = {"name": "smollm2-135m", "backend": "http", "http": {"base_url": "http://h/v1"}}
    with pytest.raises(ConfigError, match="set generator.http.endpoint: completions"):
        validate(TrainConfig, _train({"generator": chat, "reward": "f1"}), "t.yaml")
    # scoring always uses /v1/completions: logprob takes either endpoint
    assert validate(TrainConfig, _train({"generator": chat, "reward": "logprob"}),
                    "t.yaml").rrpo.reward == "logprob"
    # a transformers reader in an actor is placed by reward_actor_gpus, not by device
    with pytest.raises(ConfigError, match="leave generator.device auto"):
        validate(TrainConfig, _train({"generator": {"name": "g", "device": "cpu"}}), "t.yaml")


def test_a_processor_reader_needs_a_cpu_beside_its_actor(monkeypatch):
    """The HTTP / vLLM reader's ray.data.llm stages run as tasks of their own: on a fixed Ray
    they need a free CPU, or the actor waits for them forever."""
    from raglign.pipeline.train import _check_fits

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    rrpo = {"generator": {"name": "smollm2-135m", "backend": "http", "http": HTTP},
            "reward_actor_cpus": 0.5}
    cfg = validate(TrainConfig, _train(rrpo), "t.yaml")
    with pytest.raises(ConfigError, match=r"needs 2.5 CPUs \(1 Train workers \+ 1 RRPO reward "
                                          r"actors x 1.5 with 1 for each reader's ray.data.llm"):
        _check_fits(cfg, {"CPU": 2.0})
    _check_fits(cfg, {"CPU": 2.5})
    local = validate(TrainConfig, _train({"reward_actor_cpus": 0.5}), "t.yaml")
    _check_fits(local, {"CPU": 1.5})  # a transformers reader computes in the actor itself


# --------------------------------------------------------------------------- HTTP

@pytest.mark.integration
def test_http_reward_actor_gives_the_servers_rewards(ray_local, llama_server, smollm_tokenizer):
    """A reward actor with ``backend: http`` against llama.cpp's server (SmolLM2 GGUF): its
    logprob and F1 rewards are those of direct HttpGenerator calls on the same prompts, and a
    subset asked for again is answered from the actor's cache."""
    import ray

    from raglign.models.generator_spec import HttpConfig
    from raglign.models.processor_generator import HttpGenerator
    from raglign.pipeline.reward_actors import RewardPool, start_reward_actors, stop_reward_actors

    tok = smollm_tokenizer
    direct = HttpGenerator(HttpConfig(base_url=llama_server, model="smollm2",
                                      tokenizer="smollm2-135m", endpoint="completions"))
    reqs = requests([(0, (0,)), (0, (1, 2)), (0, (0, 2)), (1, (0,)), (1, (1,)), (1, (0, 2))])
    prompts = [qa_prompt(tok, r.question, chosen_docs(r)) for r in reqs]
    for reward in ("logprob", "f1"):
        options = RRPOOptions(
            generator={"name": "smollm2-135m", "backend": "http",
                       "http": {"base_url": llama_server, "model": "smollm2",
                                "endpoint": "completions", "batch_size": 4}},
            reward=reward, max_new_tokens=8, n=3, k=2, reward_actors=1, reward_actor_cpus=0.5)
        if reward == "logprob":
            want = [s.logprob for s in direct.score(prompts, [r.answer for r in reqs])]
        else:
            texts = direct.generate(prompts, max_new_tokens=8)
            want = [f1_score(t, list(r.answers)) for t, r in zip(texts, reqs)]
        actors = start_reward_actors(options)
        try:
            pool = RewardPool(actors)
            got, reads = pool.rewards(reqs)
            assert reads == len(reqs)
            assert got == pytest.approx(want, abs=1e-5), (reward, got, want)
            print(reward, got)
            if reward == "logprob":
                again = requests([(1, (0,)), (0, (0,)), (1, (1, 2))])  # two cached, one new
                got2, reads2 = pool.rewards(again)
                assert reads2 == 1 and ray.get(actors[0].state.remote())[3] == len(reqs) + 1
                assert got2[:2] == [got[3], got[0]]
        finally:
            stop_reward_actors(actors)
        if reward == "logprob":  # the right document helps the gold answer
            assert want[0] > want[1] and want[3] > want[4], want
        else:
            assert max(want) > 0 and min(want) < 1, (texts, want)


# --------------------------------------------------------------------------- vLLM

def test_vllm_reader_gives_the_rewards_the_engine_outputs_imply(ray_local, tiny_llama,
                                                                smollm_tokenizer, monkeypatch):
    """A reward actor's reader on ``backend: vllm`` runs ray.data.llm's real preprocess and
    postprocess around the engine stand-in of tests/test_vllm_backend.py: its logprob rewards
    are the tiny model's log-likelihood of the answer ids it sent, its F1 rewards those of the
    text the engine answered; the engine is sent piece-wise encoded QA prompts."""
    from ray.llm._internal.batch.stages.vllm_engine_stage import _convert_logprob_dict
    from test_vllm_backend import _engine_stand_in, vllm_prompt_logprobs

    from raglign.models import vllm_backend
    from raglign.pipeline.reward_actors import RewardActor

    tok = smollm_tokenizer
    monkeypatch.setattr(vllm_backend, "require_vllm", lambda: None)
    reqs = requests([(0, (0,)), (0, (1, 2)), (1, (0, 1)), (1, (2,))])
    answers = ["Paris", "Paris, the capital", "Shakespeare wrote it", "ham"]
    scores, texts, want_logprob, want_f1 = {}, {}, [], []
    for r, text in zip(reqs, answers):
        prompt_ids = encode_prompt(tok, parallel_prompt(tok, r.question, chosen_docs(r)))
        answer_ids = encode_piece(tok, answer_continuation(tok, r.answer))
        ids = prompt_ids + answer_ids
        scores[tuple(ids)] = [None if e is None else _convert_logprob_dict(e)
                              for e in vllm_prompt_logprobs(tiny_llama, tok, ids)]
        with torch.no_grad():
            lp = torch.log_softmax(tiny_llama(torch.tensor([ids])).logits[0].float(), -1)
        start = len(prompt_ids)
        want_logprob.append(float(lp[start - 1:-1].gather(1, torch.tensor(ids[start:])[:, None])
                                  .sum()))
        texts[tuple(prompt_ids)] = text
        want_f1.append(f1_score(text, list(r.answers)))
    stand_in = _engine_stand_in(scores, texts)

    def stage(batch):  # the reader's answer length reaches the engine (fails the run if not)
        for data in batch["__data"]:
            params = data["sampling_params"]
            assert params.get("prompt_logprobs") or params["max_tokens"] == 7, params
        return stand_in(batch)

    def apply(spec, ds):
        proc = spec.build()
        return ds.map(proc.preprocess).map_batches(stage, batch_size=2).map(proc.postprocess)

    for reward, want in (("logprob", want_logprob), ("f1", want_f1)):
        options = RRPOOptions(generator={"name": "smollm2-135m", "backend": "vllm",
                                         "vllm": {"batch_size": 2}},
                              reward=reward, max_new_tokens=7, n=3, k=2)
        actor = RewardActor(options.model_dump(mode="json"), "cpu")
        monkeypatch.setattr(actor.reader.generator, "apply", apply)
        got, reads, state = actor.rewards(reqs)
        assert reads == 4 and state[3] == 4
        assert got == pytest.approx(want, abs=1e-4), (reward, got, want)
        assert actor.rewards(reqs[:2])[1] == 0  # cached
    assert want_f1[0] == 1 and 0 < want_f1[1] < 1 and want_f1[3] == 0
