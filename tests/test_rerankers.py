"""Rerankers and encoders: numerics against direct transformers computations, gradients,
save → load round trips through raglign and sentence-transformers, and the real MiniLM."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from raglign.errors import ConfigError
from raglign.models.encoders import load_encoder
from raglign.models.rerankers import (
    BiEncoderReranker,
    CrossEncoderReranker,
    doc_text,
    load_reranker,
)

QUERY = "who wrote the origin of species"
DOCS = [
    "On the Origin of Species was written by Charles Darwin and published in 1859.",
    "The Eiffel Tower is a wrought-iron lattice tower in Paris.",
    "Darwin",
    "Natural selection explains how populations adapt over many generations of offspring.",
    "",
]


@pytest.fixture(scope="session")
def tiny_cross_dir(tmp_path_factory, tiny_bert_dir, minilm_tokenizer):
    """The tiny BERT with a one-label classification head (a ready cross-encoder checkpoint)."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(1)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=1)
    path = tmp_path_factory.mktemp("tiny-cross")
    model.save_pretrained(path)
    minilm_tokenizer.save_pretrained(path)
    return path


def _mean_pool_reference(model_dir, texts, max_length=128):
    """Embeddings computed independently: one unpadded text at a time, numpy mean + L2 norm."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    out = []
    with torch.no_grad():
        for t in texts:
            enc = tok(t, truncation=True, max_length=max_length, return_tensors="pt")
            h = model(**enc).last_hidden_state[0].numpy().astype(np.float64)
            v = h.mean(axis=0)
            out.append(v / np.linalg.norm(v))
    return np.array(out)


def test_doc_text_puts_title_on_first_line_and_skips_empty_titles():
    assert doc_text("Paris", "Capital of France.") == "Paris\nCapital of France."
    assert doc_text("", "Capital of France.") == "Capital of France."
    assert doc_text(None, "x") == "x"


def test_encoder_matches_independent_mean_pooling(tiny_bert_dir):
    texts = [QUERY] + DOCS
    enc = load_encoder(str(tiny_bert_dir), device="cpu")
    assert (enc.pooling, enc.normalize, enc.max_length) == ("mean", True, 128)
    got = enc.encode(texts, batch_size=2)  # batches mix lengths: padding must not leak in
    np.testing.assert_allclose(got, _mean_pool_reference(tiny_bert_dir, texts), atol=1e-5)
    raw = enc.encode(texts[:2], normalize=False)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), got[:2], atol=1e-6)


def test_cross_encoder_scores_match_per_pair_logits(tiny_cross_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    reranker = load_reranker(str(tiny_cross_dir), kind="cross", device="cpu")
    assert isinstance(reranker, CrossEncoderReranker) and reranker.kind == "cross"
    tok = AutoTokenizer.from_pretrained(tiny_cross_dir)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_cross_dir).eval()
    with torch.no_grad():
        ref = [model(**tok(QUERY, d, return_tensors="pt")).logits.item() for d in DOCS]
    got = reranker.score(QUERY, DOCS, batch_size=2)
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert reranker.rank(QUERY, DOCS) == list(np.argsort(-np.array(ref), kind="stable"))
    batched = reranker.forward_scores([QUERY, "darwin"], [DOCS[:3], DOCS[2:]])
    assert batched.shape == (2, 3) and batched.dtype == torch.float32
    np.testing.assert_allclose(batched[0].detach().numpy(), ref[:3], atol=1e-5)


def test_bi_encoder_scores_are_cosine_of_embeddings(tiny_bert_dir):
    reranker = load_reranker(str(tiny_bert_dir), kind="bi", device="cpu")
    assert isinstance(reranker, BiEncoderReranker) and reranker.similarity == "cosine"
    emb = _mean_pool_reference(tiny_bert_dir, [QUERY] + DOCS)
    np.testing.assert_allclose(reranker.score(QUERY, DOCS, batch_size=2), emb[1:] @ emb[0],
                               atol=1e-5)
    fs = reranker.forward_scores([QUERY], [DOCS]).detach().numpy()[0]
    np.testing.assert_allclose(fs, emb[1:] @ emb[0], atol=1e-5)

    dot = load_reranker(str(tiny_bert_dir), kind="bi", similarity="dot", normalize=False)
    raw = dot.encoder.encode([QUERY] + DOCS)
    np.testing.assert_allclose(dot.score(QUERY, DOCS), raw[1:] @ raw[0], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("kind", ["cross", "bi"])
def test_length_sorted_micro_batches_keep_scores_and_gradients(kind, tiny_cross_dir, tiny_bert_dir):
    """A small token budget splits the (query, document) pairs into several length-sorted
    forwards: scores come back in input order and equal one padded forward's, and so do the
    gradients."""
    path = tiny_cross_dir if kind == "cross" else tiny_bert_dir
    queries = [QUERY, "where is the eiffel tower"]
    groups = [[DOCS[1], DOCS[0], DOCS[2]], [DOCS[3], DOCS[2], DOCS[0]]]
    results = []
    for budget in (10**6, 40):  # one forward / one or two texts per forward
        reranker = load_reranker(str(path), kind=kind, device="cpu").eval()
        (reranker.encoder if kind == "bi" else reranker).token_budget = budget
        calls = []
        model = reranker.encoder.model if kind == "bi" else reranker.model
        model.register_forward_hook(lambda m, a, kw, out: calls.append(kw["input_ids"].shape),
                                    with_kwargs=True)
        scores = reranker.forward_scores(queries, groups)
        scores.sum().backward()
        grads = torch.cat([p.grad.flatten() for p in reranker.parameters() if p.grad is not None])
        results.append((scores.detach(), grads, calls))
    (s_one, g_one, c_one), (s_many, g_many, c_many) = results
    assert len(c_many) > len(c_one)
    torch.testing.assert_close(s_many, s_one, atol=1e-5, rtol=0)
    torch.testing.assert_close(g_many, g_one, atol=1e-5, rtol=1e-4)
    # The padded tokens actually computed shrink: that is the point of the sorting.
    assert sum(b * t for b, t in c_many) < sum(b * t for b, t in c_one)


@pytest.mark.parametrize("kind", ["cross", "bi"])
def test_cpu_default_budget_is_the_encoders_not_the_generators(kind, tiny_cross_dir,
                                                                tiny_bert_dir):
    """Without a ``token_budget`` a reranker on CPU cuts its texts into pieces of at most
    ``ENCODER_TOKEN_BUDGET["cpu"]`` (512) padded tokens -- texts that one 1024-token piece, the
    generator's default, would hold run as several."""
    from raglign.batching import DEVICE_TOKEN_BUDGET, ENCODER_TOKEN_BUDGET

    budget = ENCODER_TOKEN_BUDGET["cpu"]
    assert budget < DEVICE_TOKEN_BUDGET["cpu"]
    path = tiny_cross_dir if kind == "cross" else tiny_bert_dir
    reranker = load_reranker(str(path), kind=kind, max_length=128, device="cpu").eval()
    assert (reranker.encoder if kind == "bi" else reranker).token_budget is None
    calls = []
    model = reranker.encoder.model if kind == "bi" else reranker.model
    model.register_forward_hook(lambda m, a, kw, out: calls.append(kw["input_ids"].numel()),
                                with_kwargs=True)
    long_doc = " ".join(DOCS * 4)  # truncated to 128 tokens
    with torch.no_grad():
        reranker.forward_scores([QUERY], [[long_doc] * 6])
    assert max(calls) <= budget
    assert sum(calls) > budget  # so one piece of the generator's budget would have done
    assert len(calls) > 1


def test_forward_length_sorted_returns_rows_in_input_order():
    from raglign.batching import forward_length_sorted

    lengths = [3, 9, 1, 9, 4, 7]
    seen = []

    def forward(idx):
        seen.append(list(idx))
        assert len(idx) == 1 or len(idx) * max(lengths[i] for i in idx) <= 10
        return torch.tensor([[float(i), float(lengths[i])] for i in idx])

    out = forward_length_sorted(lengths, 10, forward)
    assert out[:, 0].tolist() == list(range(len(lengths)))
    assert out[:, 1].tolist() == [float(x) for x in lengths]
    assert sorted(i for chunk in seen for i in chunk) == list(range(len(lengths)))


@pytest.mark.parametrize("kind", ["cross", "bi"])
def test_training_step_through_forward_scores_lowers_the_loss(kind, tiny_cross_dir, tiny_bert_dir):
    path = tiny_cross_dir if kind == "cross" else tiny_bert_dir
    torch.manual_seed(0)
    reranker = load_reranker(str(path), kind=kind, device="cpu")
    queries = [QUERY, "where is the eiffel tower"]
    groups = [[DOCS[1], DOCS[0], DOCS[3]], [DOCS[0], DOCS[3], DOCS[1]]]
    target = torch.tensor([1, 2])  # index of the relevant document in each group
    scale = 20.0 if kind == "bi" else 1.0  # cosine scores need a temperature for softmax CE

    def loss_fn():
        return torch.nn.functional.cross_entropy(scale * reranker.forward_scores(queries, groups),
                                                 target)

    reranker.eval()  # dropout off, so the before/after losses compare the same function
    with torch.no_grad():
        before = loss_fn().item()
    opt = torch.optim.Adam(reranker.parameters(), lr=1e-2)
    for _ in range(6):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        assert all(p.grad is not None for p in reranker.parameters() if p.requires_grad)
        opt.step()
    with torch.no_grad():
        after = loss_fn().item()
    assert after < before - 0.05, (before, after)


def test_cross_encoder_round_trips_through_sentence_transformers(tiny_cross_dir, tmp_path):
    from sentence_transformers import CrossEncoder

    reranker = load_reranker(str(tiny_cross_dir), kind="cross", max_length=64)
    expected = np.array(reranker.score(QUERY, DOCS))
    out = tmp_path / "saved"
    limit_before = reranker.tokenizer.model_max_length
    reranker.save(str(out), model_card="# tiny cross-encoder\n")
    # Saving writes the limit into the directory, not into a tokenizer others may share.
    assert reranker.tokenizer.model_max_length == limit_before != 64
    assert (out / "README.md").read_text() == "# tiny cross-encoder\n"
    again = load_reranker(str(out), kind="cross")
    assert again.max_length == 64
    np.testing.assert_allclose(again.score(QUERY, DOCS), expected, atol=1e-5)
    ce = CrossEncoder(str(out), device="cpu")
    assert ce.max_seq_length == 64
    logits = ce.predict([(QUERY, d) for d in DOCS], activation_fn=torch.nn.Identity())
    np.testing.assert_allclose(logits, expected, atol=1e-5)
    np.testing.assert_allclose(ce.predict([(QUERY, d) for d in DOCS]),
                               1 / (1 + np.exp(-expected)), atol=1e-5)  # its default sigmoid


@pytest.mark.parametrize("pooling,similarity", [("mean", "cosine"), ("cls", "dot")])
def test_bi_encoder_round_trips_through_sentence_transformers(pooling, similarity, tiny_bert_dir,
                                                              tmp_path):
    from sentence_transformers import SentenceTransformer

    normalize = similarity == "cosine"
    reranker = load_reranker(str(tiny_bert_dir), kind="bi", pooling=pooling, normalize=normalize,
                             similarity=similarity)
    expected_emb = reranker.encoder.encode([QUERY] + DOCS)
    expected = np.array(reranker.score(QUERY, DOCS))
    reranker.save(str(tmp_path / "saved"))
    modules = json.loads((tmp_path / "saved" / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == (
        ["Transformer", "Pooling", "Normalize"] if normalize else ["Transformer", "Pooling"])

    again = load_reranker(str(tmp_path / "saved"), kind="bi")
    assert (again.encoder.pooling, again.encoder.normalize, again.similarity) == (
        pooling, normalize, similarity)
    np.testing.assert_allclose(again.score(QUERY, DOCS), expected, atol=1e-5)
    st = SentenceTransformer(str(tmp_path / "saved"), device="cpu")
    assert st.similarity_fn_name == similarity and st.max_seq_length == reranker.max_length
    st_emb = st.encode([QUERY] + DOCS, convert_to_numpy=True)
    np.testing.assert_allclose(st_emb, expected_emb, atol=1e-5)
    np.testing.assert_allclose(st.similarity(st_emb[:1], st_emb[1:]).numpy()[0], expected,
                               atol=1e-5)

    # and the layout sentence-transformers 6 itself writes reads back the same
    st.save(str(tmp_path / "st6"))
    assert "pooling_mode" in json.loads((tmp_path / "st6" / "1_Pooling" / "config.json").read_text())
    st6 = load_reranker(str(tmp_path / "st6"), kind="bi")
    assert (st6.encoder.pooling, st6.encoder.normalize, st6.similarity, st6.max_length) == (
        pooling, normalize, similarity, reranker.max_length)
    np.testing.assert_allclose(st6.encoder.encode([QUERY] + DOCS), expected_emb, atol=1e-5)


def test_bare_encoder_as_cross_encoder_warns_random_head(tiny_bert_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="raglign.models.rerankers"):
        reranker = load_reranker(str(tiny_bert_dir), kind="cross")
    assert "RANDOM" in caplog.text
    assert reranker.model.config.num_labels == 1


def test_bad_inputs_are_reported(tiny_bert_dir, tiny_cross_dir, tmp_path):
    reranker = load_reranker(str(tiny_cross_dir), kind="cross")
    with pytest.raises(ValueError, match="query 1 has 2 candidates"):
        reranker.forward_scores(["a", "b"], [["x", "y", "z"], ["x", "y"]])
    with pytest.raises(ConfigError, match="kind"):
        load_reranker(str(tiny_bert_dir), kind="colbert")
    with pytest.raises(ConfigError, match="unexpected options"):
        load_reranker(str(tiny_bert_dir), kind="cross", pooling="cls")

    from transformers import AutoModelForSequenceClassification

    three = tmp_path / "three-labels"
    head3 = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=3)
    head3.save_pretrained(three)
    with pytest.raises(ConfigError, match="3 labels"):
        load_reranker(str(three), kind="cross")

    st_dir = tmp_path / "dense-st"
    load_reranker(str(tiny_bert_dir), kind="bi").save(str(st_dir))
    modules = json.loads((st_dir / "modules.json").read_text())
    modules.insert(2, {"idx": 2, "name": "2", "path": "2_Dense",
                       "type": "sentence_transformers.models.Dense"})
    (st_dir / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ConfigError, match=r"modules.json: module 2 .*Dense.* not supported"):
        load_reranker(str(st_dir), kind="bi")


def test_bfloat16_scores_track_float32(tiny_cross_dir, tiny_bert_dir):
    for path, kind in ((tiny_cross_dir, "cross"), (tiny_bert_dir, "bi")):
        full = load_reranker(str(path), kind=kind)
        half = load_reranker(str(path), kind=kind, dtype="bfloat16")
        assert next(half.parameters()).dtype == torch.bfloat16
        scores = half.forward_scores([QUERY], [DOCS])
        assert scores.dtype == torch.float32
        np.testing.assert_allclose(scores.detach().numpy()[0], full.score(QUERY, DOCS), atol=0.05)


@pytest.mark.integration
def test_real_minilm_bi_encoder_reproduces_sentence_transformers(tmp_path):
    from sentence_transformers import SentenceTransformer

    from raglign.models.registry import resolve_model

    texts = [QUERY] + DOCS + ["long passage " * 300]  # last one is truncated at 256 tokens
    st = SentenceTransformer(resolve_model("minilm-l6"), device="cpu")
    reranker = load_reranker("minilm-l6", kind="bi", device="cpu")
    assert reranker.max_length == st.max_seq_length == 256
    np.testing.assert_allclose(reranker.encoder.encode(texts, batch_size=3),
                               st.encode(texts, convert_to_numpy=True), atol=1e-5)
    # and the real encoder ranks the answering passage first
    assert reranker.rank(QUERY, DOCS)[0] == 0


@pytest.mark.integration
def test_real_minilm_cross_encoder_round_trip(tmp_path, caplog):
    from sentence_transformers import CrossEncoder

    with caplog.at_level(logging.WARNING, logger="raglign.models.rerankers"):
        reranker = load_reranker("minilm-l6", kind="cross", device="cpu")
    assert "RANDOM" in caplog.text
    expected = reranker.score(QUERY, DOCS)
    reranker.save(str(tmp_path / "ce"))
    np.testing.assert_allclose(load_reranker(str(tmp_path / "ce")).score(QUERY, DOCS), expected,
                               atol=1e-5)
    ce = CrossEncoder(str(tmp_path / "ce"), device="cpu")
    np.testing.assert_allclose(ce.predict([(QUERY, d) for d in DOCS],
                                          activation_fn=torch.nn.Identity()), expected, atol=1e-5)
