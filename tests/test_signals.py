"""Each labelling signal against a direct reference computation, with tiny random models.

References never go through the signal code: generator.score / generate on prompts written here,
the engine's exact concat reference or a fresh prefill of a subset, numpy for min-max mixing.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from raglign.config import validate
from raglign.data.schema import candidate, make_row
from raglign.engine import DocumentEngine
from raglign.errors import ConfigError
from raglign.metrics import f1_score
from raglign.models.encoders import Encoder
from raglign.models.generator import GenerationParams, TransformersGenerator
from raglign.pipeline.label import LabelConfig, label_rows
from raglign.pipeline.shards import REJECT_COL
from raglign.prompts import qa_prompt, rationale_prompt
from raglign.signals import SIGNALS, Models
from raglign.signals.base import Generate, row_seed
from raglign.signals.dpa import dpa_mix
from raglign.signals.items import pick_answer
from raglign.signals.judge import parse_judgement

QUESTION = "What is the capital of France?"
DOCS = [("Paris", "Paris is the capital and largest city of France."),
        ("Banana", "Bananas are elongated, edible fruit."),
        ("Rome", "Rome is the capital city of Italy."),
        (None, "The Seine flows through Paris."),
        ("Football", "Football is a team sport.")]


def _row(rid="q1", answers=("Paris",), docs=DOCS, scores=None):
    scores = scores or [10.0 - i for i in range(len(docs))]
    cands = [candidate(f"d{i}", t, x, scores[i], i == 0) for i, (t, x) in enumerate(docs)]
    return make_row(rid, QUESTION, list(answers), cands)


def _cfg(signals, **kw):
    return validate(LabelConfig, dict(job="label", input="in", output="out", signals=signals,
                                      generator="tiny", **kw))


@pytest.fixture(scope="module")
def models(tiny_llama, smollm_tokenizer):
    model = copy.deepcopy(tiny_llama)
    gen = TransformersGenerator(model, smollm_tokenizer)
    from raglign.models.registry import load_tokenizer
    from transformers import BertConfig, BertModel

    tok = load_tokenizer("minilm-l6")
    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1,
                                num_attention_heads=2, intermediate_size=64)).eval()
    return Models(smollm_tokenizer, gen, DocumentEngine(model, smollm_tokenizer),
                  Encoder(bert, tok, max_length=128))


def _label(models, signals, rows=None, **kw):
    cfg = _cfg(signals, **kw)
    return label_rows(rows or [_row()], [SIGNALS[s] for s in signals], models, cfg)


def _values(out, name, i=0):
    return [c[name] for c in out[i]["candidates"]]


def test_answer_logprob_concat_equals_generator_score(models):
    out = _label(models, ["answer_logprob"], context="concat")
    tok = models.tokenizer
    ref = models.generator.score([qa_prompt(tok, QUESTION, [d]) for d in DOCS], ["Paris"] * 5)
    np.testing.assert_allclose(_values(out, "answer_logprob"), [r.logprob for r in ref], atol=1e-5)


def test_answer_logprob_parallel_equals_single_document_prefill(models):
    values = _values(_label(models, ["answer_logprob"], context="parallel"), "answer_logprob")
    eng = models.engine
    # A hard mask scores the answer right after its one visible document: every value is the
    # ordinary one-document prompt, whatever the other candidates' lengths.
    ref = [eng.concat_logprob(QUESTION, [d], "Paris").item() for d in DOCS]
    np.testing.assert_allclose(values, ref, atol=2e-4)
    concat = _values(_label(models, ["answer_logprob"], context="concat"), "answer_logprob")
    np.testing.assert_allclose(values, concat, atol=2e-4)


def test_loo_concat_and_parallel_against_subset_references(models):
    k = 3
    concat = _values(_label(models, ["loo_logprob"], context="concat", loo={"k": k}), "loo_logprob")
    parallel = _values(_label(models, ["loo_logprob"], context="parallel", loo={"k": k}),
                       "loo_logprob")
    assert concat[k:] == [None, None] and parallel[k:] == [None, None]
    eng = models.engine
    for i in range(k):
        keep = [j for j in range(k) if j != i]
        ref_concat = eng.concat_logprob(QUESTION, DOCS, "Paris", keep=keep).item()
        assert math.isclose(concat[i], ref_concat, abs_tol=2e-4)
        # Parallel mode's reference: a fresh parallel prefill of the subset (its own positions).
        fresh = eng.prepare(QUESTION, [DOCS[j] for j in keep])
        assert math.isclose(parallel[i], eng.answer_logprob(fresh, "Paris").item(), abs_tol=2e-4)


def test_attention_is_the_engines_mass_and_needs_parallel(models):
    values = _values(_label(models, ["attention"]), "attention")
    ref = models.engine.attention_mass(models.engine.prepare(QUESTION, DOCS), "Paris")
    np.testing.assert_allclose(values, ref.tolist(), atol=1e-6)
    assert math.isclose(sum(values), 1.0, abs_tol=1e-5)
    with pytest.raises(ConfigError, match="context: parallel"):
        _cfg(["attention"], context="concat")


def test_judge_parsing_and_unparseable_are_null_and_counted():
    assert [parse_judgement(t) for t in ["Relevant.", "partially relevant", "Not relevant",
                                         "irrelevant", "  \nRelevant", "I cannot say", ""]] == \
        [2, 1, 0, 0, 2, None, None]
    cfg = _cfg(["judge"])
    item_row = _row()
    from raglign.signals.items import prepare_item

    item = prepare_item(item_row, "best")
    reqs = SIGNALS["judge"].requests(item, cfg)
    outputs = ["Relevant", "blah", "Not relevant", "partially", "???"]
    labels = SIGNALS["judge"].compute(item, dict(zip(reqs, outputs)), Models(), cfg)
    assert labels.values == [2.0, None, 0.0, 1.0, None]
    assert labels.counts == {"judge_unparseable": 2, "judge_outputs": 5}


def test_answer_quality_and_dpa_from_generated_answers(models):
    tok = models.tokenizer
    out = _label(models, ["answer_quality", "dpa"], answer_quality={"max_new_tokens": 6})
    answers = models.generator.generate([qa_prompt(tok, QUESTION, [d]) for d in DOCS],
                                        max_new_tokens=6)
    f1 = [f1_score(a.strip(), ["Paris"]) for a in answers]
    assert _values(out, "answer_quality") == f1
    from raglign.metrics import sub_exact_match

    correct = [sub_exact_match(a.strip(), ["Paris"]) for a in answers]
    np.testing.assert_allclose(_values(out, "dpa"),
                               [0.5 * c + 0.5 * (1 - r / 5) for r, c in enumerate(correct)])


def test_dpa_mix_puts_every_correct_document_first():
    mixed = dpa_mix([0.0, 1.0, 0.0, 1.0], alpha=0.5)
    assert sorted(range(4), key=lambda i: -mixed[i]) == [1, 3, 0, 2]


@pytest.mark.parametrize("similarity", ["cosine", "reference"])
def test_rationale_score_is_minmax_mix_of_similarity_and_retrieval(models, similarity):
    row = _row(answers=["Paris", "City of Light"])
    out = _label(models, ["rationale_score"], rows=[row],
                 rationale={"max_new_tokens": 8, "similarity": similarity, "alpha": 0.3})
    tok = models.tokenizer
    params = GenerationParams(max_new_tokens=8, temperature=0.2, top_p=1.0,
                              seed=row_seed(42, "q1"))
    rationale = models.generator.generate([rationale_prompt(tok, QUESTION, "Paris")], params)[0]
    assert out[0]["rationale"] == rationale.strip()
    texts = [(f"(Title: {t}) " if t else "") + x for t, x in DOCS]
    enc = models.encoder
    if similarity == "cosine":
        q = enc.encode([rationale.strip()], normalize=True)[0]
        d = enc.encode(texts, normalize=True)
    else:
        q = enc.encode([f"{QUESTION}. Paris, City of Light. {rationale.strip()}"])[0]
        d = enc.encode(texts)
    sim = d.astype(np.float64) @ q.astype(np.float64)
    ret = np.array([10.0 - i for i in range(5)])
    mm = lambda x: (x - x.min()) / (x.max() - x.min())  # noqa: E731
    np.testing.assert_allclose(_values(out, "rationale_score"),
                               0.3 * mm(sim) + 0.7 * mm(ret), atol=1e-5)


def test_rows_without_candidates_or_answers_are_rejected(models):
    rows = [_row("ok"), make_row("empty", QUESTION, ["Paris"], []), _row("noans", answers=[" "])]
    out = _label(models, ["answer_logprob"], rows=rows, context="concat")
    assert [r[REJECT_COL] for r in out] == [None, "no candidates", "no answers"]


def test_answer_alias_best_is_the_one_the_documents_state():
    cands = [{"title": "x", "text": "The City of Light is Paris."}, {"title": "y", "text": "Paris!"}]
    assert pick_answer(["Lutetia", "Paris"], cands, "best") == "Paris"
    assert pick_answer(["Lutetia", "Paris"], cands, "first") == "Lutetia"


def test_requests_are_shared_between_answer_quality_and_dpa(models):
    from raglign.signals.items import prepare_item

    item = prepare_item(_row(), "best")
    cfg = _cfg(["answer_quality", "dpa"])
    a = SIGNALS["answer_quality"].requests(item, cfg)
    assert a == SIGNALS["dpa"].requests(item, cfg) and all(isinstance(r, Generate) for r in a)


def test_config_rejects_unknown_signal():
    with pytest.raises(ConfigError, match="unknown signal"):
        _cfg(["perplexity"])
