"""G-Rerank end to end: the loss against direct engine computations and finite differences,
gradients into cross- and bi-encoder rerankers (never into the LLM), hard top-k inference,
Algorithm 2 and the Gumbel ablation on a hand-built "copy" LLM whose optimum is known.

The copy model is a one-layer Llama whose attention is uniform over visible keys (q = k = 0),
whose values carry the (RMS-normalised) token embeddings, and whose vocabulary embeddings are
zero except for a few content words. The next-token logits are then ≈ c·α_w/‖α‖ for each word
w, α_w being the attention share of w's tokens, so:
* an answer made of ALL the documents' words has its NLL, 4·LSE(x) − Σx, minimised exactly when
  the documents share attention equally — the no-noise ablation must drift to the uniform mask;
* a one-word answer is best served by the single document that holds the word — Algorithm 2
  must put that document first.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import transformers

from raglign.cli import main
from raglign.data.io import write_rows
from raglign.data.schema import candidate, make_row
from raglign.engine import DocumentEngine
from raglign.gumbel.ablation import run_ablation, write_ablation
from raglign.gumbel.options import SamplingWeightOptions
from raglign.gumbel.report import mining_report
from raglign.gumbel.weights import learn_weights
from raglign.models.rerankers import doc_text, load_reranker
from raglign.objectives.gumbel import (
    gumbel_lm_loss,
    hard_topk_mask,
    stochastic_subset_mask,
)
from raglign.signals.base import row_seed
from raglign.signals.items import Item

QUERIES = [
    ("What is the capital of France?", "Paris",
     [("Paris", "Paris is the capital and largest city of France."),
      ("Banana", "Bananas are elongated, edible fruit."),
      ("Rome", "Rome is the capital city of Italy."),
      ("Seine", "The Seine flows through Paris.")]),
    ("Who wrote Hamlet?", "William Shakespeare",
     [("Hamlet", "Hamlet is a tragedy written by William Shakespeare."),
      ("Football", "Association football is a team sport."),
      ("Oslo", "Oslo is the capital of Norway.")]),
]
WORDS = ["apple", "river", "stone", "cloud", "grass"]


@pytest.fixture(scope="module")
def llm(tiny_llama):
    return copy.deepcopy(tiny_llama)  # the engine freezes it; leave the session fixture alone


@pytest.fixture(scope="module")
def engine(llm, smollm_tokenizer):
    return DocumentEngine(llm, smollm_tokenizer)


@pytest.fixture(scope="module")
def caches(engine):
    return [engine.prepare(q, docs) for q, _, docs in QUERIES]


def _padded(scores: list[list[float]], dtype=torch.float32):
    n = max(len(s) for s in scores)
    w = torch.zeros(len(scores), n, dtype=dtype)
    valid = torch.zeros(len(scores), n, dtype=torch.bool)
    for b, s in enumerate(scores):
        w[b, :len(s)] = torch.tensor(s, dtype=dtype)
        valid[b, :len(s)] = True
    return w, valid


@pytest.mark.parametrize("samples", [1, 3])
def test_loss_equals_direct_engine_computation(engine, caches, samples):
    scores, valid = _padded([[0.5, -1.0, 2.0, 0.1], [1.5, 0.0, -0.5]])
    answers = [a for _, a, _ in QUERIES]
    loss = gumbel_lm_loss(engine, caches, answers, scores, k=2, tau=0.5, kappa=1.5, valid=valid,
                          generator=torch.Generator().manual_seed(11), samples=samples)
    # the same noise, drawn the same way, then one engine call per (query, sample)
    masks = stochastic_subset_mask(scores.expand(samples, -1, -1), 2, 0.5, 1.5,
                                   generator=torch.Generator().manual_seed(11),
                                   valid=valid.expand(samples, -1, -1))
    per_query = []
    for b, (cache, answer) in enumerate(zip(caches, answers)):
        nll = [-engine.answer_logprob(cache, answer, masks[s, b, :cache.num_docs],
                                      per_token=True).mean() for s in range(samples)]
        per_query.append(torch.stack(nll).mean())
    torch.testing.assert_close(loss, torch.stack(per_query).mean())
    assert masks[:, 1, 3].eq(0).all()  # the padded candidate is never seen


def test_score_gradient_matches_finite_differences(llm, smollm_tokenizer):
    eng = DocumentEngine(copy.deepcopy(llm).double(), smollm_tokenizer)
    q, answer, docs = QUERIES[0]
    cache = eng.prepare(q, docs)

    def loss_at(w):
        return gumbel_lm_loss(eng, [cache], [answer], w, k=2,
                              generator=torch.Generator().manual_seed(3))

    w = torch.tensor([[0.3, -0.7, 1.1, 0.0]], dtype=torch.float64, requires_grad=True)
    loss_at(w).backward()
    numeric = torch.zeros_like(w)
    # RMSNorm runs in float32 inside a float64 Llama (~1e-7 relative noise per forward), so a
    # tiny step would amplify it: h = 1e-2 keeps the O(h^2) truncation at ~1e-4 (as test_engine)
    h = 1e-2
    for i in range(w.shape[1]):
        e = torch.zeros_like(w)
        e[0, i] = h
        numeric[0, i] = (loss_at(w.detach() + e) - loss_at(w.detach() - e)) / (2 * h)
    torch.testing.assert_close(w.grad, numeric, rtol=2e-3, atol=1e-6)
    assert w.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", ["cross", "bi"])
def test_gradients_reach_the_reranker_only(kind, tiny_bert_dir, engine, caches, llm):
    reranker = load_reranker(str(tiny_bert_dir), kind=kind).train()
    n = max(len(docs) for _, _, docs in QUERIES)
    texts = [[doc_text(t, x) for t, x in docs] + [""] * (n - len(docs)) for _, _, docs in QUERIES]
    valid = torch.tensor([[i < len(docs) for i in range(n)] for _, _, docs in QUERIES])
    scores = reranker.forward_scores([q for q, _, _ in QUERIES], texts)
    loss = gumbel_lm_loss(engine, caches, [a for _, a, _ in QUERIES], scores, k=2, valid=valid,
                          generator=torch.Generator().manual_seed(0))
    loss.backward()
    grads = [p.grad for p in reranker.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    assert all(not p.requires_grad and p.grad is None for p in llm.parameters())


def test_inference_is_hard_topk_of_reranker_scores(tiny_bert_dir, engine, caches):
    reranker = load_reranker(str(tiny_bert_dir), kind="cross")
    q, answer, docs = QUERIES[0]
    texts = [doc_text(t, x) for t, x in docs]
    scores = torch.tensor(reranker.score(q, texts))
    top = reranker.rank(q, texts)[:2]
    mask = hard_topk_mask(scores, 2)
    assert sorted(torch.nonzero(mask).flatten().tolist()) == sorted(top)
    # the hard mask reads exactly what a prompt holding only the top-k documents reads
    subset = engine.prepare(q, [docs[i] for i in sorted(top)])
    torch.testing.assert_close(engine.answer_logprob(caches[0], answer, mask),
                               engine.answer_logprob(subset, answer), rtol=1e-4, atol=1e-4)
    # no noise, a temperature far below the score gaps, k = 1: the relaxed mask is the hard top-1
    spread = float(scores.max() - scores.min())
    relaxed = stochastic_subset_mask(scores, 1, tau=spread * 1e-4, noise=False)
    torch.testing.assert_close(relaxed, hard_topk_mask(scores, 1), atol=1e-3, rtol=0)


# ----------------------------------------------------------------------------- the copy model
@pytest.fixture(scope="module")
def copy_engine(smollm_tokenizer):
    tok, d = smollm_tokenizer, 64
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=d, intermediate_size=16,
                                   num_hidden_layers=1, num_attention_heads=4,
                                   num_key_value_heads=4, max_position_embeddings=2048,
                                   tie_word_embeddings=True)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    ids = sorted({i for w in WORDS for i in tok(" " + w, add_special_tokens=False)["input_ids"]})
    with torch.no_grad():
        layer = model.model.layers[0]
        for p in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.mlp.down_proj):
            p.weight.zero_()  # uniform attention, no MLP
        layer.self_attn.v_proj.weight.copy_(torch.eye(d) * 300.0)  # attention dominates residual
        layer.self_attn.o_proj.weight.copy_(torch.eye(d))
        model.model.norm.weight.fill_(1.0)
        emb = model.model.embed_tokens.weight
        emb.zero_()
        emb[ids] = torch.randn(len(ids), d)
    return DocumentEngine(model, tok)


def _word_docs(words):
    return [(None, " " + " ".join([w] * 8)) for w in words]


def test_without_noise_the_mask_collapses_to_uniform(copy_engine, tmp_path):
    item = Item(make_row("all-words", "Name four things.", [" apple river stone cloud"]),
                " apple river stone cloud", _word_docs(WORDS[:4]))
    options = SamplingWeightOptions(steps=40, lr=0.1, k=2, init="normal", init_std=2.0, seed=1)
    result = run_ablation(copy_engine, [item], options, progress=lambda _: None)
    without, with_noise = result["without_noise"]["mean"], result["with_noise"]["mean"]
    assert result["uniform"] == pytest.approx(0.25)
    assert without[0] == with_noise[0] > 0.5  # the same random start for both arms
    assert without[-1] < 0.3 and without[-1] < without[0] - 0.2
    assert max(without[20:]) < 0.35  # it stays near 1/n, not a lucky last step
    assert with_noise[-1] > without[-1] + 0.1
    paths = write_ablation(result, tmp_path)
    saved = json.loads(Path(paths["json"]).read_text())
    assert saved["without_noise"]["mean"] == without
    assert Path(paths["png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_algorithm2_puts_the_answer_document_first(copy_engine):
    docs = _word_docs(["apple", "stone", "river", "cloud", "grass"])
    cache = copy_engine.prepare("Which one flows?", docs)
    run = learn_weights(copy_engine, cache, " river",
                        SamplingWeightOptions(steps=25, lr=0.1, k=2, seed=0))
    assert max(range(5), key=run.weights.__getitem__) == 2
    assert run.loss[-1] < run.loss[0]
    assert len(run.max_weight) == 26 and run.max_weight[0] == pytest.approx(0.2)


def test_gumbel_weight_signal_is_algorithm2_seeded_per_row(copy_engine):
    from raglign.pipeline.label import label_in_process, load_label_config
    from raglign.signals.base import Models

    cands = [candidate(f"d{i}", None, text.strip(), is_gold=(i == 2))
             for i, (_, text) in enumerate(_word_docs(["apple", "stone", "river"]))]
    rows = [make_row("q1", "Which one flows?", ["river"], cands)]
    cfg = load_label_config(input="unused", output="unused", generator="unused",
                            signals=["gumbel_weight"], gumbel={"steps": 3, "seed": 7})
    out = label_in_process(cfg, rows, Models(tokenizer=copy_engine.tokenizer,
                                             engine=copy_engine))
    got = [c["gumbel_weight"] for c in out[0]["candidates"]]
    cache = copy_engine.prepare("Which one flows?", [(None, c["text"]) for c in cands])
    expected = learn_weights(copy_engine, cache, "river", cfg.gumbel,
                             torch.Generator().manual_seed(row_seed(7, "q1"))).weights
    assert got == pytest.approx(expected)
    assert any(abs(v) > 0 for v in got)


# ----------------------------------------------------------------------------- the report + CLI
def _labelled_rows():
    rows = []
    for i, (gw, lp) in enumerate([([3, 2, 0, 1], [0, 1, 3, 2]), ([1, 3, 2, 0], [3, 2, 1, 0]),
                                  ([2, 3, 1, 0], [2, 3, 1, 0])]):
        cands = [dict(candidate(f"d{j}", None, "t", is_gold=j < 2), gumbel_weight=float(gw[j]),
                      answer_logprob=float(lp[j])) for j in range(4)]
        rows.append(make_row(f"q{i}", "q?", ["a"], cands))
    return rows


def test_mining_report_means_and_paired_difference():
    report = mining_report(_labelled_rows(), n_boot=200)
    gw, lp = report["signals"]["gumbel_weight"], report["signals"]["answer_logprob"]
    # gold = d0, d1; gumbel ranks both in the top 2 in rows 0 and 2, one of them in row 1
    assert gw["recall@2"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert lp["recall@2"] == pytest.approx((0 + 1 + 1) / 3)
    assert gw["mrr"] == pytest.approx(1.0) and lp["mrr"] == pytest.approx((1 / 3 + 1 + 1) / 3)
    diff = report["paired"]["answer_logprob"]["recall@2"]
    assert diff["diff"] == pytest.approx(1 / 6)
    assert gw["recall@2_ci"][0] <= gw["recall@2"] <= gw["recall@2_ci"][1]


def test_cli_report_writes_tables_and_rejects_unknown_signal(tmp_path, capsys):
    write_rows(_labelled_rows(), tmp_path / "labelled")
    assert main(["grerank", "report", str(tmp_path / "labelled"), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed["signals"]) == {"retrieval", "gumbel_weight", "answer_logprob"}
    assert "G-Rerank weights" in (tmp_path / "labelled" / "_grerank_mining.md").read_text()
    assert main(["grerank", "report", str(tmp_path / "labelled"), "--signals", "attention"]) == 2
    assert "attention" in capsys.readouterr().err


# ----------------------------------------------------------------------------- real SmolLM2
@pytest.mark.integration
def test_smollm2_algorithm2_finds_the_paris_document():
    from raglign.models.generator import TransformersGenerator

    gen = TransformersGenerator.from_name("smollm2-135m", dtype="float32", device="cpu")
    eng = DocumentEngine(gen.model, gen.tokenizer)
    docs = [("Banana", "Bananas are elongated, edible fruit."),
            ("Rome", "Rome is the capital city of Italy."),
            ("Paris", "Paris is the capital and largest city of France."),
            ("Football", "Association football is a team sport played with a ball."),
            ("Oslo", "Oslo is the capital of Norway.")]
    cache = eng.prepare("What is the capital of France?", docs)
    run = learn_weights(eng, cache, "Paris", SamplingWeightOptions(steps=10, lr=0.2, k=2))
    assert max(range(5), key=run.weights.__getitem__) == 2, run.weights
