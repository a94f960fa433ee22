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
from test_train_gumbel import canonical_dir  # noqa: F401 (fixture)

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
    # the actor holds a vLLM engine's GPUs (one per tensor-parallel rank), an HTTP reader none
    if backend == "http":
        with pytest.raises(ConfigError, match="backend 'http' runs the model on its server"):
            validate(TrainConfig, _train({"generator": gen, "reward_actor_gpus": 1}), "t.yaml")
        return
    assert cfg.rrpo.reward_actor_gpus == 1  # the engine's GPU, by default
    tp2 = {**gen, "vllm": {"tensor_parallel_size": 2}}
    assert validate(TrainConfig, _train({"generator": tp2}), "t.yaml").rrpo.reward_actor_gpus == 2
    for gpus, want in ((0, 1), (2, 1)):
        with pytest.raises(ConfigError, match=rf"rrpo.reward_actor_gpus: {gpus}, but a vLLM reader "
                           rf"runs its engine inside each reward actor.*tensor_parallel_size \({want}\)"):
            validate(TrainConfig, _train({"generator": gen, "reward_actor_gpus": gpus}), "t.yaml")


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


def test_every_reader_runs_inside_its_actors_reservation(monkeypatch):
    """An HTTP or vLLM reader runs its processor's stages in the actor (no Ray Data tasks
    beside it): the actors' own CPUs and GPUs are all a fixed Ray must hold; a vLLM reader's
    engine GPU is counted."""
    from raglign.pipeline.train import _check_fits

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    http = {"generator": {"name": "smollm2-135m", "backend": "http", "http": HTTP},
            "reward_actor_cpus": 0.5}
    _check_fits(validate(TrainConfig, _train(http), "t.yaml"), {"CPU": 1.5})
    with pytest.raises(ConfigError, match=r"needs 2 CPUs \(1 for 1 Train workers \+ 2 RRPO reward "
                                          r"actors x 0.5\)"):
        _check_fits(validate(TrainConfig, _train({**http, "reward_actors": 2}), "t.yaml"),
                    {"CPU": 1.5})
    vllm = validate(TrainConfig, _train({"generator": {"name": "smollm2-135m",
                                                       "backend": "vllm"}}), "t.yaml")
    with pytest.raises(ConfigError, match=r"needs 1 GPUs \(0 for 1 Train workers \+ 1 RRPO reward "
                                          r"actors x 1\) but this Ray has 0"):
        _check_fits(vllm, {"CPU": 4.0})
    _check_fits(vllm, {"CPU": 2.0, "GPU": 1.0})


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


@pytest.mark.integration
def test_rrpo_trains_against_an_http_reader(tmp_path, ray_local, llama_server, canonical_dir,
                                            tiny_bert_dir, monkeypatch):
    """``raglign train`` with ``objective: rrpo`` end to end on the test's 2-CPU Ray, its reader
    llama.cpp's server behind one reward actor (0.5 CPU) beside one Train worker: every reward of
    every step comes from that actor (the workers' fresh reads add up to the actor's), rewards
    are the server's log-probabilities, and the reranker's weights move."""
    import json

    import ray

    from raglign.models.rerankers import load_reranker
    from raglign.pipeline import reward_actors
    from raglign.pipeline.train import build_reranker, train

    started, start = [], reward_actors.start_reward_actors
    monkeypatch.setattr(reward_actors, "start_reward_actors",
                        lambda options: started.extend(start(options)) or list(started))
    monkeypatch.setattr(reward_actors, "stop_reward_actors", lambda actors: None)  # asked below
    cfg = TrainConfig(
        data=canonical_dir, output=str(tmp_path / "out"), model=str(tiny_bert_dir),
        objective="rrpo", lr=1e-2, batch_size=2, epochs=1, max_length=48, num_workers=1,
        log_every=1, checkpoint_every=2, warmup_ratio=0.0,
        rrpo={"generator": {"name": "smollm2-135m", "backend": "http",
                            "http": {"base_url": llama_server, "model": "smollm2",
                                     "endpoint": "completions", "batch_size": 4}},
              "n": 3, "k": 2, "reward": "logprob", "reward_actors": 1,
              "reward_actor_cpus": 0.5, "ppo_epochs": 2})
    initial = {k: v.clone() for k, v in build_reranker(cfg).state_dict().items()}
    try:
        result = train(cfg)
        read_by_actor = ray.get(started[0].state.remote())[3]
    finally:
        for actor in started:
            ray.kill(actor, no_restart=True)
    history = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").open()]
    assert result.step == result.total_steps == len(history) > 0
    assert sum(h["rrpo_reads"] for h in history) == read_by_actor > 0
    assert all(h["rrpo_reward"] < 0 and h["rrpo_ref_reward"] < 0 for h in history)
    assert all(0 <= h["rrpo_actor_idle"] <= 1 for h in history)
    after = load_reranker(str(result.model_dir), kind="cross", max_length=48).state_dict()
    assert sum(not torch.equal(initial[k], after[k]) for k in initial) > len(initial) // 2


# --------------------------------------------------------------------------- vLLM

def test_vllm_reader_gives_the_rewards_the_engine_outputs_imply(ray_local, tiny_llama,
                                                                smollm_tokenizer, monkeypatch):
    """A reward actor's reader on ``backend: vllm`` runs ray.data.llm's real preprocess,
    postprocess and stage wrapper (``StatefulStageUDF.__call__``) in the actor, around an
    engine stand-in answering as tests/test_vllm_backend.py's: its logprob rewards are the tiny
    model's log-likelihood of the answer ids it sent, its F1 rewards those of the text the
    engine answered; the engine is sent piece-wise encoded QA prompts, and it is built once,
    with the single-process executor, for all of an actor's calls."""
    from ray.llm._internal.batch.stages.vllm_engine_stage import _convert_logprob_dict
    from test_vllm_backend import _engine_stand_in, vllm_prompt_logprobs

    from ray.llm._internal.batch.stages.base import StatefulStageUDF

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
    built: list[dict] = []

    class EngineStandIn(StatefulStageUDF):
        """Constructed from the kwargs Ray Data gives vLLMEngineStageUDF."""

        def __init__(self, data_column, expected_input_keys, **engine):
            super().__init__(data_column, expected_input_keys)
            built.append(engine)

        async def udf(self, rows):
            for row in rows:  # the reader's answer length reaches the engine
                params = row["sampling_params"]
                assert params.get("prompt_logprobs") or params["max_tokens"] == 7, params
                out = stand_in({"__data": [dict(row)]})["__data"][0]
                yield {**out, self.IDX_IN_BATCH_COLUMN: row[self.IDX_IN_BATCH_COLUMN]}

    def no_dataset(spec, ds):
        raise AssertionError("the in-process reader must not run a Ray Dataset")

    for reward, want in (("logprob", want_logprob), ("f1", want_f1)):
        options = RRPOOptions(generator={"name": "smollm2-135m", "backend": "vllm",
                                         "vllm": {"batch_size": 2}},
                              reward=reward, max_new_tokens=7, n=3, k=2)
        actor = RewardActor(options.model_dump(mode="json"), "cpu")
        monkeypatch.setattr(actor.reader.generator, "apply", no_dataset)
        monkeypatch.setattr(actor.reader.generator, "stage_udf",
                            lambda stage, kwargs: EngineStandIn(**kwargs))
        built.clear()
        first, reads, _ = actor.rewards(reqs[:3])  # two batches of 2 and 1 in flight at once
        rest, more, state = actor.rewards(reqs[3:])
        assert (reads, more, state[3]) == (3, 1, 4)
        assert first + rest == pytest.approx(want, abs=1e-4), (reward, first + rest, want)
        assert actor.rewards(reqs[:2])[1] == 0  # cached
        assert len(built) == 1  # one engine for every call of the actor
        assert built[0]["engine_kwargs"]["distributed_executor_backend"] == "uni"
        assert built[0]["batch_size"] == 2
    assert want_f1[0] == 1 and 0 < want_f1[1] < 1 and want_f1[3] == 0
