"""raglign.metrics against hand-computed values and the official SQuAD v1.1 script's behaviour."""

from __future__ import annotations

import math

import pytest

from raglign.metrics import (
    choice_accuracy,
    exact_match,
    extract_choice,
    f1_score,
    mrr,
    ndcg_at_k,
    normalize_answer,
    qa_metrics,
    ranking_metrics,
    recall_at_k,
    sub_exact_match,
)


@pytest.mark.parametrize("raw, expected", [
    ("  A  Tale of Two   Cities ", "tale of two cities"),
    ("Hello, World!!", "hello world"),
    # punctuation goes before articles: "the-end" merges into one word and keeps its "the"
    ("The U.S.A. — the-end, an apple!", "usa — theend apple"),
    ("theatre anthem", "theatre anthem"),        # articles only as whole words
    ("“quoted”", "“quoted”"),                    # only ASCII punctuation is stripped
    ("AN AnT", "ant"),
    ("", ""),
])
def test_normalize_answer_matches_squad_v11(raw, expected):
    assert normalize_answer(raw) == expected


def test_exact_match():
    assert exact_match("The Beatles", ["beatles"]) == 1.0
    assert exact_match("Beatles!", ["The Beatles band"]) == 0.0
    assert exact_match("paris", "Paris") == 1.0  # a bare string is one answer, not characters
    assert exact_match("p", "Paris") == 0.0
    assert exact_match("the", ["a"]) == 1.0      # both normalise to ""
    assert exact_match("anything", []) is None


def test_f1_hand_computed():
    # pred tokens [cat, sat, on, mat], gold [cat, on, mat]: P = 3/4, R = 1
    assert f1_score("the cat sat on the mat", ["a cat on a mat"]) == pytest.approx(6 / 7)
    # repeated tokens count with multiplicity: common = {new: 1, york: 1}, P = 2/4, R = 1
    assert f1_score("New York New York", ["New York"]) == pytest.approx(2 / 3)
    # max over aliases: vs "obama" 2/3; vs "barack hussein obama" P = 1, R = 2/3 → 0.8
    assert f1_score("Barack Obama", ["Obama", "Barack Hussein Obama"]) == pytest.approx(0.8)
    assert f1_score("Barack Obama", ["Obama"]) == pytest.approx(2 / 3)
    assert f1_score("London", ["Paris"]) == 0.0
    # the official v1.1 script scores two empty normalised strings F1 = 0 (EM = 1)
    assert f1_score("", [""]) == 0.0
    assert f1_score("the", ["a"]) == 0.0
    assert f1_score("x", []) is None


def test_sub_exact_match():
    assert sub_exact_match("He was born in New York City.", ["new york"]) == 1.0
    assert sub_exact_match("He was born in Boston.", ["new york", "NYC"]) == 0.0
    assert sub_exact_match("start", ["art"]) == 1.0       # character substring, as FlashRAG
    assert sub_exact_match("anything", ["the"]) is None   # gold normalises to "": unusable
    assert sub_exact_match("the answer", ["The", "answer"]) == 1.0


def test_qa_metrics_bundle():
    assert qa_metrics("the cat sat on the mat", ["a cat on a mat"]) == {
        "em": 0.0, "f1": pytest.approx(6 / 7), "subem": 0.0}
    assert qa_metrics("x", []) == {"em": None, "f1": None, "subem": None}


@pytest.mark.parametrize("text, expected", [
    ("B", "B"), ("b", "B"), ("B.", "B"), ("(B)", "B"), ("[c]", "C"), ("**D**", "D"),
    ("The answer is B", "B"),
    ("Answer: b) Paris", "B"),
    ("the answer is (d)", "D"),
    ("The correct option is C.", "C"),
    ("B. Paris", "B"), ("(C) Rome", "C"), ("d) none", "D"), ("D, because it is", "D"),
    ("A cat sat on the mat, so B", "B"),        # the article "A" yields to a clear letter
    ("A cat sat on the mat", None),              # ... and alone is not an option
    ("The answer is a cat", None),               # lower-case "a" after a cue is a word
    ("A is correct", "A"),                       # "A" before a copula is the option
    ("The answer is B. On reflection, the final answer is C.", "C"),  # the last cue wins
    ("I think it's D because the others are wrong", "D"),
    ("Either B or C", None),                     # two letters: ambiguous
    ("E", None),                                 # out of range for 4 options
    ("", None), (None, None),
])
def test_extract_choice(text, expected):
    assert extract_choice(text) == expected


def test_extract_choice_option_text():
    choices = ["London", "Paris", "Rome", "Paris, Texas"]
    assert extract_choice("Paris", choices=choices) == "B"
    assert extract_choice("It is Paris, Texas.", choices=choices) == "D"  # longest match wins
    assert extract_choice("the capital is rome", choices=choices) == "C"
    assert extract_choice("Berlin", choices=choices) is None
    # numeric options match as whole tokens only
    assert extract_choice("It must be 2", choices=["0", "1", "2", "3"]) == "C"
    assert extract_choice("12", choices=["0", "1", "2", "3"]) is None
    assert extract_choice("E", choices=list("abcde")) == "E"  # n_options follows choices


def test_choice_accuracy():
    assert choice_accuracy("The answer is B", "B") == 1.0
    assert choice_accuracy("The answer is B", "b") == 1.0
    assert choice_accuracy("(C)", 2) == 1.0
    assert choice_accuracy("A cat", "A") == 0.0
    assert choice_accuracy(None, "A") == 0.0
    with pytest.raises(ValueError):
        extract_choice("A", n_options=11)


RANKED = [f"d{i}" for i in range(1, 11)]
GOLD = {"d2", "d5", "d11"}


def test_recall_at_k():
    assert recall_at_k(RANKED, GOLD, 1) == 0.0
    assert recall_at_k(RANKED, GOLD, 2) == pytest.approx(1 / 3)
    assert recall_at_k(RANKED, GOLD, 5) == pytest.approx(2 / 3)
    assert recall_at_k(RANKED, GOLD, 50) == pytest.approx(2 / 3)  # d11 never retrieved
    assert recall_at_k(["d1", "d1", "d2"], {"d2"}, 2) == 1.0        # duplicates count once
    assert recall_at_k(RANKED, set(), 5) is None
    with pytest.raises(ValueError):
        recall_at_k(RANKED, GOLD, 0)


def test_ndcg_at_k():
    # gold at 1-based ranks 2 and 5; ideal places min(5, 3) = 3 gold docs at ranks 1..3
    dcg = 1 / math.log2(3) + 1 / math.log2(6)
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at_k(RANKED, GOLD, 5) == pytest.approx(dcg / idcg)
    assert ndcg_at_k(RANKED, GOLD, 5) == pytest.approx(0.477623, abs=1e-6)
    # k = 2: ideal over min(2, 3) = 2
    assert ndcg_at_k(RANKED, GOLD, 2) == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    assert ndcg_at_k(RANKED, GOLD, 1) == 0.0
    assert ndcg_at_k(["g", "x"], {"g"}, 5) == 1.0
    assert ndcg_at_k(RANKED, [], 5) is None


def test_mrr():
    assert mrr(RANKED, GOLD) == 0.5
    assert mrr(RANKED, {"zz"}) == 0.0
    assert mrr(RANKED, set()) is None
    assert mrr(["a", "a", "b"], {"b"}) == 0.5


def test_ranking_metrics_keys():
    out = ranking_metrics(RANKED, GOLD, ks=(1, 5))
    assert out == {"recall@1": 0.0, "ndcg@1": 0.0, "recall@5": pytest.approx(2 / 3),
                   "ndcg@5": pytest.approx(0.477623, abs=1e-6), "mrr": 0.5}
    assert set(ranking_metrics(RANKED, [], ks=(5,)).values()) == {None}
