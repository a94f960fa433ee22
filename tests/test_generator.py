"""The transformers generator backend, checked against direct computations with the model.

Scores are compared with ``log_softmax`` of a plain full forward on one unpadded pair; batching,
sorting and the answer-span logit slice must not change them beyond fp32 noise.
"""

from __future__ import annotations

import copy

import pytest
import torch

from raglign.errors import ConfigError, DataError
from raglign.batching import length_batches
from raglign.models.generator import (
    GenerationParams, TransformersGenerator, cut_at_stop, pick_dtype)
from raglign.prompts import (
    ParallelPrompt, answer_continuation, encode_piece, encode_prompt, parallel_prompt, qa_prompt,
    rationale_prompt)

DOCS = [("Paris", "Paris is the capital and most populous city of France."),
        ("Berlin", "Berlin is the capital of Germany and its largest city by population.")]
QUESTIONS = ["What is the capital of France?", "Which city is Germany's capital?",
             "Name a large European city that has been a capital for centuries, please?"]
ANSWERS = ["Paris", "Berlin, the largest city of Germany", "Rome"]


def manual_token_logprobs(model, tokenizer, prompt: str, answer: str) -> list[float]:
    """Reference: one unpadded forward over prompt + answer, full-vocabulary log-softmax."""
    p = encode_prompt(tokenizer, prompt)
    a = encode_piece(tokenizer, answer_continuation(tokenizer, answer))
    ids = torch.tensor([p + a])
    with torch.no_grad():
        logp = model(input_ids=ids).logits[0].float().log_softmax(-1)
    return [logp[len(p) + j - 1, t].item() for j, t in enumerate(a)]


def pairs_for(tokenizer) -> tuple[list[ParallelPrompt | str], list[str]]:
    """QA prompts cut for parallel prefill (as the engine scores them) and one rendered
    rationale prompt, with answers of different lengths."""
    prompts = [parallel_prompt(tokenizer, q, DOCS[: 1 + i % 2]) for i, q in enumerate(QUESTIONS)]
    prompts[2] = rationale_prompt(tokenizer, QUESTIONS[2], "Rome")
    return prompts, ANSWERS


@pytest.fixture(scope="module")
def llama_gen(tiny_llama, smollm_tokenizer):
    return TransformersGenerator(tiny_llama, smollm_tokenizer, batch_size=8)


@pytest.fixture(scope="module")
def qwen_gen(tiny_qwen2, smollm_tokenizer):
    """For generation: the tied-embedding tiny Llama greedily repeats its last input token,
    the untied tiny Qwen2 produces varied text."""
    return TransformersGenerator(tiny_qwen2, smollm_tokenizer, batch_size=8)


def test_score_equals_manual_forward_and_batching_does_not_change_it(tiny_llama, smollm_tokenizer):
    prompts, answers = pairs_for(smollm_tokenizer)
    ref = [manual_token_logprobs(tiny_llama, smollm_tokenizer, p, a)
           for p, a in zip(prompts, answers)]
    one = TransformersGenerator(tiny_llama, smollm_tokenizer, batch_size=1)
    many = TransformersGenerator(tiny_llama, smollm_tokenizer, batch_size=8)
    for gen in (one, many):
        got = gen.score(prompts, answers, per_token=True)
        for r, expected in zip(got, ref):
            assert r.num_tokens == len(expected)
            assert r.token_logprobs == pytest.approx(expected, abs=1e-4)
            assert r.logprob == pytest.approx(sum(expected), abs=1e-4)


def test_per_token_sums_totals_and_normalisation(llama_gen, smollm_tokenizer):
    prompts, answers = pairs_for(smollm_tokenizer)
    plain = llama_gen.score(prompts, answers)
    norm = llama_gen.score(prompts, answers, normalize=True, per_token=True)
    for a, b in zip(plain, norm):
        assert a.token_logprobs is None
        assert sum(b.token_logprobs) == pytest.approx(b.logprob, abs=1e-5)
        assert a.value == pytest.approx(a.logprob)
        assert b.value == pytest.approx(b.logprob / b.num_tokens)
        assert a.logprob == pytest.approx(b.logprob, abs=1e-5)


def test_sorted_batches_return_input_order(llama_gen, smollm_tokenizer):
    """Pairs of very different lengths in shuffled order, two per micro-batch: every result
    must match the same pair scored alone."""
    prompts, answers = pairs_for(smollm_tokenizer)
    order = [2, 0, 1, 0, 2, 1]
    ps, ans = [prompts[i] for i in order], [answers[i] for i in order]
    small = TransformersGenerator(llama_gen.model, smollm_tokenizer, batch_size=2)
    alone = [llama_gen.score([p], [a])[0].logprob for p, a in zip(prompts, answers)]
    got = [r.logprob for r in small.score(ps, ans)]
    assert got == pytest.approx([alone[i] for i in order], abs=1e-4)


def test_length_batches_respects_limits_and_covers_every_index():
    lengths = [5, 50, 7, 30, 30, 2, 90]
    batches = list(length_batches(lengths, batch_size=3, token_budget=100))
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 3
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 100
    assert [lengths[b[0]] for b in batches] == sorted((lengths[b[0]] for b in batches),
                                                      reverse=True)


def test_gemma_scores_use_answer_span_logits_only(tiny_gemma3, gemma_tokenizer):
    """Gemma-3 (262k vocabulary): the head runs over the answer span only, and the result equals
    the full-sequence log-softmax."""
    prompts, answers = pairs_for(gemma_tokenizer)
    prompts, answers = prompts[:2], answers[:2]
    gen = TransformersGenerator(tiny_gemma3, gemma_tokenizer, batch_size=4)
    widths = []
    hook = tiny_gemma3.lm_head.register_forward_hook(
        lambda mod, inp, out: widths.append(out.shape[1]))
    try:
        got = gen.score(prompts, answers, per_token=True)
    finally:
        hook.remove()
    span = max(r.num_tokens for r in got)
    assert widths == [span + 1]  # one forward, head over the answer span (+1) only
    for r, p, a in zip(got, prompts, answers):
        expected = manual_token_logprobs(tiny_gemma3, gemma_tokenizer, p, a)
        assert r.token_logprobs == pytest.approx(expected, abs=1e-4)
    assert span + 1 < len(encode_prompt(gemma_tokenizer, prompts[0]))


def shared_prefix_pairs(tokenizer) -> tuple[list[ParallelPrompt], list[str]]:
    """QA prompts as a labelling shard scores them: one question with each document, two
    aliases of its answer each (same prompt, different answers), plus a second question."""
    prompts, answers = [], []
    for q, doc in ((QUESTIONS[0], DOCS[0]), (QUESTIONS[0], DOCS[1]), (QUESTIONS[1], DOCS[1])):
        for alias in ("Paris", "the city of Paris"):
            prompts.append(parallel_prompt(tokenizer, q, [doc]))
            answers.append(alias)
    return prompts, answers


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3"])
def test_shared_prefix_scores_equal_unshared_and_the_reference(family, request):
    """The common prompt prefix is encoded once: the results must equal the plain batched path
    and one unpadded forward per pair. Gemma-3's sliding window (8 tokens in the tiny model) is
    far shorter than the shared prefix, so its sliding layers are checked across the cache."""
    model = request.getfixturevalue(f"tiny_{family}")
    tokenizer = request.getfixturevalue("gemma_tokenizer" if family == "gemma3"
                                        else "smollm_tokenizer")
    prompts, answers = shared_prefix_pairs(tokenizer)
    shared = TransformersGenerator(model, tokenizer, batch_size=8)
    plain = TransformersGenerator(model, tokenizer, batch_size=8, share_prefix=False)
    ids = [encode_prompt(tokenizer, p) for p in prompts]
    lcp = next(j for j in range(len(ids[0])) if len({tuple(x[:j + 1]) for x in ids}) > 1)
    assert shared.shared_prefix_len(ids) == lcp >= 16  # the system instruction

    rows = []
    hook = model.get_input_embeddings().register_forward_hook(
        lambda mod, inp, out: rows.append(tuple(inp[0].shape)))
    try:
        got = shared.score(prompts, answers, per_token=True)
        assert rows[0] == (1, lcp)  # the prefix, once
        computed = sum(b * t for b, t in rows)
        rows.clear()
        unshared = plain.score(prompts, answers, per_token=True)
        # one batch of 6 rows: the 5 other rows skip the prefix
        assert computed == sum(b * t for b, t in rows) - (len(prompts) - 1) * lcp
    finally:
        hook.remove()
    for r, u, p, a in zip(got, unshared, prompts, answers):
        expected = manual_token_logprobs(model, tokenizer, p, a)
        assert r.token_logprobs == pytest.approx(expected, abs=1e-4)
        assert r.logprob == pytest.approx(u.logprob, abs=1e-4)


def test_shared_prefix_len_rules(llama_gen):
    """Whole-prompt matches keep the last prompt token per row; short or single-row prefixes
    are not worth a separate forward; sharing can be switched off."""
    long = list(range(100, 140))
    assert llama_gen.shared_prefix_len([long, long]) == len(long) - 1
    assert llama_gen.shared_prefix_len([long, long[:20] + [7, 8]]) == 20
    assert llama_gen.shared_prefix_len([long, long[:10] + [7] * 30]) == 0
    assert llama_gen.shared_prefix_len([long]) == 0
    off = TransformersGenerator(llama_gen.model, llama_gen.tokenizer, share_prefix=False)
    assert off.shared_prefix_len([long, long]) == 0


def test_scoring_token_budget_defaults_to_the_devices(llama_gen):
    """Scoring batches by its own budget (CPU default 1024), generation by ``token_budget``."""
    gen = TransformersGenerator(llama_gen.model, llama_gen.tokenizer)
    assert (gen.score_token_budget, gen.token_budget) == (1024, 8192)
    assert TransformersGenerator(llama_gen.model, llama_gen.tokenizer,
                                 score_token_budget=64).score_token_budget == 64
    with pytest.raises(ConfigError, match="score_token_budget"):
        TransformersGenerator(llama_gen.model, llama_gen.tokenizer, score_token_budget=0)


def test_greedy_generation_matches_manual_argmax_loop(tiny_qwen2, smollm_tokenizer, qwen_gen):
    prompt = pairs_for(smollm_tokenizer)[0][0]
    ids = encode_prompt(smollm_tokenizer, prompt)
    with torch.no_grad():
        for _ in range(6):
            ids.append(int(tiny_qwen2(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    assert 2 not in ids[-6:]  # no EOS among them
    expected = smollm_tokenizer.decode(ids[-6:], skip_special_tokens=True)
    assert qwen_gen.generate([prompt], max_new_tokens=6) == [expected]


def test_batched_greedy_generation_keeps_input_order(qwen_gen, smollm_tokenizer):
    prompts = pairs_for(smollm_tokenizer)[0]
    prompts = [prompts[2], "Tell me a story about", prompts[0], "Hello world, this is"]
    alone = [qwen_gen.generate([p], max_new_tokens=5)[0] for p in prompts]
    assert len(set(alone)) == 4  # distinct outputs, so a permutation would be caught
    small = TransformersGenerator(qwen_gen.model, smollm_tokenizer, batch_size=2)
    assert small.generate(prompts, max_new_tokens=5) == alone
    assert qwen_gen.generate(prompts, max_new_tokens=5) == alone


def test_seeded_sampling_is_reproducible_and_leaves_global_rng_alone(qwen_gen, smollm_tokenizer):
    prompts = pairs_for(smollm_tokenizer)[0][:2]
    params = GenerationParams(max_new_tokens=6, temperature=1.0, top_p=0.95, seed=11)
    state = torch.get_rng_state()
    first = qwen_gen.generate(prompts, params)
    assert torch.equal(torch.get_rng_state(), state)
    assert qwen_gen.generate(prompts, params) == first
    assert qwen_gen.generate(prompts, params, seed=12) != first


def test_generation_stops_at_eos_and_stop_strings(tiny_qwen2, smollm_tokenizer, qwen_gen):
    prompt = pairs_for(smollm_tokenizer)[0][0]
    ids = encode_prompt(smollm_tokenizer, prompt)
    full = qwen_gen.generate([prompt], max_new_tokens=10)[0]
    assert len(full) > 6
    stop = full[3:6]
    assert qwen_gen.generate([prompt], max_new_tokens=10, stop=[stop]) == [
        full[: full.find(stop)]]
    # Make a greedy token that first appears after position 0 the model's EOS: generation
    # ends right before it.
    with torch.no_grad():
        for _ in range(6):
            ids.append(int(tiny_qwen2(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    new = ids[-6:]
    cut = next(k for k in range(1, 6) if new[k] not in new[:k])
    model = copy.deepcopy(tiny_qwen2)
    model.generation_config.eos_token_id = new[cut]
    gen = TransformersGenerator(model, smollm_tokenizer)
    assert gen.generate([prompt], max_new_tokens=10) == [
        smollm_tokenizer.decode(new[:cut], skip_special_tokens=True)]


def test_from_name_loads_a_local_directory(tiny_llama, smollm_tokenizer, llama_gen, tmp_path):
    tiny_llama.save_pretrained(tmp_path)
    smollm_tokenizer.save_pretrained(tmp_path)
    loaded = TransformersGenerator.from_name(str(tmp_path), dtype="float32", device="cpu")
    assert loaded.model.dtype == torch.float32 and not loaded.model.training
    prompts, answers = pairs_for(smollm_tokenizer)
    assert [r.logprob for r in loaded.score(prompts, answers)] == pytest.approx(
        [r.logprob for r in llama_gen.score(prompts, answers)], abs=1e-5)


def test_bad_inputs_are_reported(llama_gen):
    with pytest.raises(DataError, match="answers"):
        llama_gen.score(["a", "b"], ["x"])
    with pytest.raises(DataError, match="record 1, field 'answer'"):
        llama_gen.score(["a", "b"], ["x", ""])  # chat-template tokenizer: "" has no tokens
    with pytest.raises(ConfigError, match="unknown generation parameter"):
        llama_gen.generate(["a"], max_tokens=3)
    with pytest.raises(ConfigError, match="temperature"):
        GenerationParams(temperature=-1)
    with pytest.raises(ConfigError, match="dtype"):
        pick_dtype("fp8", torch.device("cpu"))


def test_dtype_auto_and_stop_cut(monkeypatch):
    # auto on CPU follows the CPU's native bf16 support, whatever machine runs the test.
    for avx512_bf16, amx, expected in ((True, False, torch.bfloat16), (False, True, torch.bfloat16),
                                       (False, False, torch.float32)):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        assert pick_dtype("auto", torch.device("cpu")) == expected
    assert pick_dtype("float32", torch.device("cpu")) == torch.float32
    assert GenerationParams(stop="\n").stop == ("\n",)
    assert cut_at_stop("Paris.\nQuestion: x", ("Question:", "\n")) == "Paris."
    assert cut_at_stop("Paris", ("\n",)) == "Paris"


@pytest.mark.integration
def test_real_smollm2_prefers_the_supported_answer():
    gen = TransformersGenerator.from_name("smollm2-135m")
    prompt = qa_prompt(gen.tokenizer, "What is the capital of France?", DOCS[:1])
    paris, berlin = gen.score([prompt, prompt], ["Paris", "Berlin"], normalize=True)
    assert paris.value > berlin.value + 1.0
    assert "Paris" in gen.generate([prompt], max_new_tokens=12)[0]


def test_scores_agree_with_the_document_engine_reference(tiny_gemma3, gemma_tokenizer):
    """A ParallelPrompt is scored on the engine's piecewise token ids, so the two agree."""
    from raglign.engine.engine import DocumentEngine

    engine = DocumentEngine(tiny_gemma3, gemma_tokenizer)
    gen = TransformersGenerator(tiny_gemma3, gemma_tokenizer)
    prompts = [parallel_prompt(gemma_tokenizer, q, DOCS) for q in QUESTIONS[:2]]
    got = gen.score(prompts, ANSWERS[:2])
    for r, q, a in zip(got, QUESTIONS, ANSWERS):
        assert r.logprob == pytest.approx(engine.concat_logprob(q, DOCS, a).item(), abs=1e-4)
