"""The document engine against independent reference computations, on three architectures.

References used here never go through the engine's cache or packing:
* ``concat_logprob``: the ordinary prompt in one plain forward with the model's own masks;
* ``_one_pass``: the whole parallel prompt (prefix, documents, suffix + answer) in ONE forward,
  with a 4-D mask and position ids written out in this file;
* a fresh prefill of a document subset, for leave-one-out and near-zero masks;
* central finite differences in float64, for the mask gradient.
Gemma-3's tiny config has sliding_window=8, shorter than every document, so the window rule
(by position, not by cache index) is exercised.
"""

from __future__ import annotations

import copy

import pytest
import torch

from raglign.engine import DocumentEngine, leave_one_out_masks
from raglign.prompts import answer_continuation, encode_piece

ARCHS = {"llama": ("tiny_llama", "smollm_tokenizer"), "qwen2": ("tiny_qwen2", "smollm_tokenizer"),
         "gemma3": ("tiny_gemma3", "gemma_tokenizer")}

QUESTION = "What is the capital of France?"
ANSWER = "Paris"
DOCS = [
    ("Paris", "Paris is the capital and largest city of France, on the river Seine."),
    ("Banana", "Bananas are elongated, edible fruit."),
    ("Football", ("Association football is a team sport played between two teams of eleven "
                  "players with a spherical ball.")),
    ("Rome", "Rome is the capital city of Italy."),
]


@pytest.fixture(scope="module", params=list(ARCHS))
def arch(request):
    """(name, model, tokenizer): a deep copy, so freezing it leaves the session fixture alone."""
    model_fixture, tok_fixture = ARCHS[request.param]
    model = copy.deepcopy(request.getfixturevalue(model_fixture))
    return request.param, model, request.getfixturevalue(tok_fixture)


@pytest.fixture(scope="module")
def engine(arch):
    return DocumentEngine(arch[1], arch[2])


@pytest.fixture(scope="module")
def cache(engine):
    return engine.prepare(QUESTION, DOCS)


def _window(model):
    cfg = model.config.get_text_config(decoder=True)
    types = getattr(cfg, "layer_types", None) or []
    return cfg.sliding_window if "sliding_attention" in types else None


def _one_pass(engine, cache, answer, output_attentions=False):
    """The parallel prompt as one forward without any cache: documents see the prefix and
    themselves, the suffix sees everything before it; positions restart at P for every document
    and the suffix starts at ``cache.suffix_start``."""
    model, tok = engine.model, engine.tokenizer
    answer_ids = encode_piece(tok, answer_continuation(tok, answer))
    n, P = cache.num_docs, len(cache.prefix_ids)
    tail = cache.suffix_ids + answer_ids
    ids = cache.prefix_ids + [t for d in cache.doc_ids for t in d] + tail
    seg = [-1] * P + [i for i, d in enumerate(cache.doc_ids) for _ in d] + [n] * len(tail)
    pos = (list(range(P)) + [P + j for d in cache.doc_ids for j in range(len(d))]
           + list(range(cache.suffix_start, cache.suffix_start + len(tail))))
    seg, pos = torch.tensor(seg), torch.tensor(pos)
    T = len(ids)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    allowed = causal & ((seg[None, :] == -1) | (seg[None, :] == seg[:, None]) | (seg[:, None] == n))
    dtype = next(model.parameters()).dtype
    lo = torch.finfo(dtype).min

    def to_mask(a):
        return torch.where(a, torch.zeros((), dtype=dtype), lo)[None, None]

    mask = to_mask(allowed)
    window = _window(model)
    if window is not None:
        sliding = allowed & ((pos[:, None] - pos[None, :]) < window)
        mask = {"full_attention": mask, "sliding_attention": to_mask(sliding)}
    from transformers import DynamicCache

    from raglign.kv_cache import cache_kwarg

    kv = DynamicCache()  # filled by the forward: its values weight the attention reference
    out = model(input_ids=torch.tensor([ids]), position_ids=pos[None], attention_mask=mask,
                **cache_kwarg(model, kv), use_cache=True, output_attentions=output_attentions)
    A = len(answer_ids)
    rows = torch.arange(T - A - 1, T - 1)
    lp = torch.log_softmax(out.logits[0, rows].float(), -1)
    logprob = lp.gather(-1, torch.tensor(answer_ids)[:, None]).sum()
    return logprob, (out, kv), rows, seg


# (1) one document: parallel == concatenated -------------------------------------------------
def test_one_document_parallel_equals_concat(engine):
    for doc in (DOCS[0], DOCS[2]):
        cache = engine.prepare(QUESTION, [doc])
        par = engine.answer_logprob(cache, ANSWER, per_token=True)
        ref = engine.concat_logprob(QUESTION, [doc], ANSWER, per_token=True)
        torch.testing.assert_close(par, ref, atol=1e-4, rtol=0)


def test_prepare_many_equals_prepare(engine, cache):
    other = [DOCS[3], DOCS[1]]
    many = engine.prepare_many([QUESTION, "Which fruit is yellow?"], [DOCS, other])
    for c in many:
        assert torch.isfinite(engine.answer_logprob(c, ANSWER))
    torch.testing.assert_close(engine.single_document(many[0], ANSWER),
                               engine.single_document(cache, ANSWER), atol=1e-5, rtol=0)
    alone = engine.prepare("Which fruit is yellow?", other)
    torch.testing.assert_close(engine.single_document(many[1], "Bananas"),
                               engine.single_document(alone, "Bananas"), atol=1e-5, rtol=0)


# (2) leave-one-out through the cache == fresh prefill of the subset -------------------------
def test_leave_one_out_equals_fresh_prefill(engine, cache):
    k = 3  # document 3 is outside the top-k: hidden in every pass
    loo = engine.leave_one_out(cache, ANSWER, k=k)
    assert loo.shape == (k,)
    for i in range(k):
        subset = [DOCS[j] for j in range(k) if j != i]
        fresh = engine.prepare(QUESTION, subset)  # the subset's own positions (hard-mask rule)
        torch.testing.assert_close(loo[i], engine.answer_logprob(fresh, ANSWER), atol=1e-4, rtol=0)
    assert loo.unique().numel() == k  # the passes really differ


# (2b) hard masks score at natural positions: one document == its concatenated prompt ---------
def test_single_document_equals_concatenated_one_document_prompt(engine, cache):
    single = engine.single_document(cache, ANSWER)
    ref = torch.stack([engine.concat_logprob(QUESTION, [d], ANSWER) for d in DOCS])
    torch.testing.assert_close(single, ref, atol=1e-4, rtol=0)
    # and per token, with every document's block packed into one row
    per_token = engine.masked_logprobs(cache, ANSWER, torch.eye(cache.num_docs), per_token=True)
    for i, d in enumerate(DOCS):
        torch.testing.assert_close(per_token[i], engine.concat_logprob(QUESTION, [d], ANSWER,
                                                                       per_token=True),
                                   atol=1e-4, rtol=0)


def test_suffix_position_rule_per_mask_kind(engine, cache):
    P, lens = len(cache.prefix_ids), cache.doc_lens
    assert lens[0] < max(lens) and min(lens) < max(lens[2:])  # a wrong rule cannot pass by chance
    masks = torch.tensor([[1.0, 0, 0, 0], [0, 0, 1, 1], [0, 0, 0, 0], [1, 1, 1, 1],
                          [0.5, 0, 1, 1], [1e-9, 1, 1, 1]])
    starts = engine.suffix_starts(cache, masks).tolist()
    assert starts == [P + lens[0], P + max(lens[2], lens[3]), P, P + max(lens),
                      cache.suffix_start, cache.suffix_start]
    assert cache.suffix_start == P + max(lens)
    grad_mask = torch.eye(cache.num_docs)[:1].requires_grad_()  # differentiable: always soft
    assert engine.suffix_starts(cache, grad_mask).tolist() == [cache.suffix_start]
    pinned = engine.prepare(QUESTION, DOCS[:1], suffix_start=cache.suffix_start)
    assert engine.suffix_starts(pinned, torch.ones(1, 1)).tolist() == [cache.suffix_start]


def test_token_budget_prefill_equals_one_document_at_a_time(arch, cache):
    """Length-sorted prefill batches under a token budget give the same cache as one document
    per forward (padding is invisible), and a budget below the longest document still works."""
    for budget in (1, 64, 100_000):
        eng = DocumentEngine(arch[1], arch[2], prefill_token_budget=budget)
        other = eng.prepare(QUESTION, DOCS)
        for a, b in zip(other.keys + other.values, cache.keys + cache.values):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


# (3) all-ones mask == the parallel prompt with no mask at all -------------------------------
def test_all_ones_mask_equals_unmasked_one_pass(engine, cache):
    ones = engine.answer_logprob(cache, ANSWER, torch.ones(cache.num_docs))
    ref, *_ = _one_pass(engine, cache, ANSWER)
    torch.testing.assert_close(ones, ref, atol=1e-4, rtol=0)


# (4) a near-zero mask == removing the document ----------------------------------------------
def test_near_zero_mask_equals_removal(engine, cache):
    for i in (0, 2):
        mask = torch.ones(cache.num_docs)
        mask[i] = 1e-9
        kept = [d for j, d in enumerate(DOCS) if j != i]
        # a soft mask keeps the all-candidate position: pin the subset's prefill there
        fresh = engine.prepare(QUESTION, kept, suffix_start=cache.suffix_start)
        torch.testing.assert_close(engine.answer_logprob(cache, ANSWER, mask),
                                   engine.answer_logprob(fresh, ANSWER), atol=1e-4, rtol=0)


# (5) gradient wrt a soft mask == central finite differences (float64) -----------------------
def test_mask_gradient_matches_finite_differences(arch):
    _, model, tok = arch
    eng = DocumentEngine(copy.deepcopy(model).to(torch.float64), tok)
    cache = eng.prepare(QUESTION, DOCS[:3])
    mask = torch.tensor([0.7, 0.2, 0.9], dtype=torch.float64, requires_grad=True)
    nll = -eng.answer_logprob(cache, ANSWER, mask)
    (grad,) = torch.autograd.grad(nll, mask)
    # Llama/Qwen2 RMSNorm computes in float32 even in a float64 model, which puts ~1e-7 relative
    # noise on every forward: a tiny step amplifies it, so use h=1e-2 (O(h^2) ~ 1e-4 truncation).
    h = 1e-2
    fd = torch.empty(3, dtype=torch.float64)
    with torch.no_grad():
        for i in range(3):
            e = torch.zeros(3, dtype=torch.float64)
            e[i] = h
            fd[i] = (-eng.answer_logprob(cache, ANSWER, mask + e)
                     + eng.answer_logprob(cache, ANSWER, mask - e)) / (2 * h)
    assert grad.abs().max() > 1e-6  # a real signal, not a detached zero
    torch.testing.assert_close(grad, fd, rtol=1e-3, atol=1e-7)
    assert all(p.grad is None for p in eng.model.parameters())  # the LLM stays frozen


# (6) packed masks == one mask per forward --------------------------------------------------
def test_packed_masks_equal_one_at_a_time(arch, engine, cache):
    g = torch.Generator().manual_seed(0)
    masks = torch.cat([torch.rand(3, cache.num_docs, generator=g),
                       leave_one_out_masks(cache.num_docs), torch.eye(cache.num_docs)])
    packed = engine.masked_logprobs(cache, ANSWER, masks, per_token=True)
    single = DocumentEngine(arch[1], arch[2], max_pack_tokens=1)  # forces one mask per pass
    alone = torch.stack([single.answer_logprob(cache, ANSWER, m, per_token=True) for m in masks])
    torch.testing.assert_close(packed, alone, atol=1e-4, rtol=0)
    torch.testing.assert_close(engine.single_document(cache, ANSWER),
                               alone[-cache.num_docs:].sum(-1), atol=1e-4, rtol=0)


# (7) attention mass: a distribution, equal to a direct eager computation ---------------------
def test_attention_mass_matches_direct_eager_computation(arch, engine, cache):
    mass = engine.attention_mass(cache, ANSWER)
    assert mass.shape == (cache.num_docs,)
    assert torch.all(mass > 0)
    torch.testing.assert_close(mass.sum(), torch.tensor(1.0))

    eager = copy.deepcopy(arch[1])
    eager.set_attn_implementation("eager")
    ref_engine = DocumentEngine(eager, arch[2])
    _, (out, kv), rows, seg = _one_pass(ref_engine, cache, ANSWER, output_attentions=True)
    per_layer = []
    for probs, layer in zip(out.attentions, kv.layers):
        H = probs.shape[1]
        vnorm = layer.values[0].norm(dim=-1).repeat_interleave(H // layer.values.shape[1], 0)
        w = probs[0][:, rows, :] * vnorm[:, None, :]  # [H, A, T]
        per_layer.append(torch.stack([w[..., seg == i].sum(-1).mean()
                                      for i in range(cache.num_docs)]))
    ref = torch.stack(per_layer).mean(0)
    torch.testing.assert_close(mass, ref / ref.sum(), atol=1e-5, rtol=1e-4)
    assert engine.model.config._attn_implementation == arch[1].config._attn_implementation


def test_attention_mass_closed_form_under_uniform_attention(arch):
    """With zero query projections every visible key gets logit 0 + log(mask): attention is
    m_i / Z on document i's keys, so the mass must be proportional to m_i * sum of its keys'
    value norms (over layers and heads) -- a closed form that also checks the log-mask bias."""
    if arch[0] != "llama":
        pytest.skip("one architecture is enough for the closed form")
    model = copy.deepcopy(arch[1])
    for layer in model.model.layers:
        torch.nn.init.zeros_(layer.self_attn.q_proj.weight)
    eng = DocumentEngine(model, arch[2])
    cache = eng.prepare(QUESTION, DOCS)
    mask = torch.tensor([1.0, 0.5, 0.25, 1.0])
    norms = torch.stack([v[0].norm(dim=-1).sum(0) for v in cache.values]).sum(0)  # [keys]
    per_doc = torch.stack([norms[cache.key_doc == i].sum() for i in range(cache.num_docs)])
    expected = mask * per_doc
    torch.testing.assert_close(eng.attention_mass(cache, ANSWER, mask), expected / expected.sum(),
                               atol=1e-6, rtol=1e-5)


def test_attention_mass_of_hidden_document_is_zero(engine, cache):
    mass = engine.attention_mass(cache, ANSWER, torch.tensor([1.0, 0.0, 1.0, 1.0]))
    assert mass[1] == 0 and torch.isclose(mass.sum(), torch.tensor(1.0))


def test_sliding_window_applies_by_position(arch):
    """Every document starts at the same position, so a window applied by cache index would
    show the answer only the last document's tail; applied by position (as here) the answer sees
    the tail of every document. W=32 spans the suffix plus a few tokens of each document."""
    if arch[0] != "gemma3":
        pytest.skip("no sliding-window layers")
    model = copy.deepcopy(arch[1])
    model.config.sliding_window = 32
    eng = DocumentEngine(model, arch[2])
    cache = eng.prepare(QUESTION, DOCS)
    assert cache.num_keys - len(cache.prefix_ids) > 32 > len(cache.suffix_ids) + 1
    per_layer = eng.attention_mass(cache, ANSWER, per_layer=True)
    sliding = [i for i, t in enumerate(model.config.layer_types) if t == "sliding_attention"]
    assert torch.all(per_layer[sliding] > 0)
    ref, *_ = _one_pass(eng, cache, ANSWER)
    torch.testing.assert_close(eng.answer_logprob(cache, ANSWER), ref, atol=1e-4, rtol=0)
    torch.testing.assert_close(eng.answer_logprob(eng.prepare(QUESTION, [DOCS[2]]), ANSWER),
                               eng.concat_logprob(QUESTION, [DOCS[2]], ANSWER), atol=1e-4, rtol=0)


def test_bad_masks_are_rejected(engine, cache):
    with pytest.raises(ValueError, match="shape"):
        engine.masked_logprobs(cache, ANSWER, torch.ones(2, cache.num_docs + 1))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        engine.answer_logprob(cache, ANSWER, torch.full((cache.num_docs,), 1.5))
    with pytest.raises(ValueError, match="k="):
        engine.leave_one_out(cache, ANSWER, k=cache.num_docs + 1)


def test_bfloat16_parallel_close_to_concat(arch):
    if arch[0] != "llama":
        pytest.skip("one bf16 check is enough")
    eng = DocumentEngine(copy.deepcopy(arch[1]).to(torch.bfloat16), arch[2])
    cache = eng.prepare(QUESTION, [DOCS[0]])
    par = eng.answer_logprob(cache, ANSWER)
    ref = eng.concat_logprob(QUESTION, [DOCS[0]], ANSWER)
    assert par.dtype == torch.float32
    assert abs(par.item() - ref.item()) < 0.05 * abs(ref.item()) + 0.05


@pytest.mark.integration
@pytest.mark.parametrize("name", ["smollm2-135m", "gemma3-270m"])
def test_real_models_single_document_equals_concatenated_prompt(name, shared_data, tmp_path):
    """The label-fidelity contract on real weights (float32) and a real HotpotQA row of 10
    paragraphs of 36-346 tokens: every single-document score through the shared cache equals
    the ordinary one-document prompt within 1e-3 nats, and leave-one-out equals the concatenated
    prompt without that document's fresh parallel prefill."""
    from transformers import AutoModelForCausalLM

    from raglign.data.convert import convert
    from raglign.data.io import read_rows
    from raglign.models.registry import load_tokenizer, resolve_model
    from raglign.signals.items import pick_answer

    convert("hotpotqa", shared_data / "hotpotqa" / "hotpotqa_train.json", tmp_path / "rows",
            limit=1)
    row = read_rows(tmp_path / "rows")[0]
    docs = [(c["title"], c["text"]) for c in row["candidates"]]
    answer = pick_answer(list(row["answers"]), row["candidates"], "best")
    model = AutoModelForCausalLM.from_pretrained(resolve_model(name), dtype=torch.float32)
    eng = DocumentEngine(model, load_tokenizer(name))
    cache = eng.prepare(row["question"], docs)
    assert len(set(cache.doc_lens)) > 5  # lengths differ: the old fixed position would fail
    single = eng.single_document(cache, answer)
    ref = torch.stack([eng.concat_logprob(row["question"], [d], answer) for d in docs])
    torch.testing.assert_close(single, ref, atol=1e-3, rtol=0)
    loo = eng.leave_one_out(cache, answer, k=3)
    for i in range(3):
        subset = [docs[j] for j in range(3) if j != i]
        fresh = eng.prepare(row["question"], subset)
        torch.testing.assert_close(loo[i], eng.answer_logprob(fresh, answer), atol=1e-3, rtol=0)


@pytest.mark.integration
def test_real_smollm2_parallel_and_single_document():
    from transformers import AutoModelForCausalLM

    from raglign.models.registry import load_tokenizer, resolve_model

    model = AutoModelForCausalLM.from_pretrained(resolve_model("smollm2-135m"), dtype=torch.float32)
    eng = DocumentEngine(model, load_tokenizer("smollm2-135m"))
    docs = [("Banana", ("Bananas are elongated, edible fruit produced by several kinds of large "
                        "herbaceous flowering plants.")),
            ("Paris", "Paris is the capital and most populous city of France."),
            ("Association football", ("Association football, more commonly known as football "
                                      "or soccer, is a team sport played between two teams."))]
    one = eng.answer_logprob(eng.prepare(QUESTION, [docs[1]]), ANSWER)
    torch.testing.assert_close(one, eng.concat_logprob(QUESTION, [docs[1]], ANSWER),
                               atol=1e-3, rtol=0)
    single = eng.single_document(eng.prepare(QUESTION, docs), ANSWER)
    assert single.argmax().item() == 1  # the gold-containing document, by a clear margin
    assert single[[0, 2]].max() < single[1] - 0.5


def test_differentiable_bias_on_cuda_pins_sdpa_to_the_math_kernel():
    """CUDA's memory-efficient SDPA backward refuses a gradient into the attention bias (seen on
    an H200); only a CUDA forward whose bias requires grad switches kernels."""
    from raglign.engine.engine import _bias_grad_kernel

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    soft = torch.zeros(1, 4, 4, requires_grad=True)
    assert torch.backends.cuda.mem_efficient_sdp_enabled()
    with _bias_grad_kernel(soft, cuda):
        assert torch.backends.cuda.math_sdp_enabled()
        assert not torch.backends.cuda.mem_efficient_sdp_enabled()
        assert not torch.backends.cuda.flash_sdp_enabled()
    assert torch.backends.cuda.mem_efficient_sdp_enabled()
    for bias, device in ((soft.detach(), cuda), (None, cuda), (soft, cpu)):
        with _bias_grad_kernel(bias, device):
            assert torch.backends.cuda.mem_efficient_sdp_enabled()
