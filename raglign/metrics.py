"""Per-example metrics: answer quality (EM, F1, SubEM, MMLU letter accuracy) and ranking quality.

Plain Python, no torch, so they run anywhere (Ray Data map functions, notebooks, tests).
Answer metrics follow the official SQuAD v1.1 evaluation script exactly (normalisation, token
F1, max over gold aliases), because every paper raglign reproduces reports those numbers; the
edge cases where that script differs from intuition are kept and documented in docs/metrics.md.

A metric that is *undefined* for an example (no gold answers, no gold documents) returns
``None``. Aggregation (:mod:`raglign.evaluate.aggregate`) skips such values and counts them, so a
missing label is never silently scored as a hit or a miss.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
LETTERS = "ABCDEFGHIJ"


def normalize_answer(s: str) -> str:
    """SQuAD v1.1 normalisation: lower-case, drop ASCII punctuation, drop a/an/the, collapse spaces.

    The steps run in the official order, so punctuation is removed *before* articles: "U.S." →
    "us", "the-end" → "theend" (the article survives inside the merged word).
    """
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def _gold_list(answers: str | Iterable[str]) -> list[str]:
    # A bare string is one answer; iterating it would score every character as an alias.
    return [answers] if isinstance(answers, str) else list(answers)


def exact_match(prediction: str, answers: str | Iterable[str]) -> float | None:
    """1.0 if the normalised prediction equals any normalised gold answer; None without answers."""
    golds = _gold_list(answers)
    if not golds:
        return None
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(a) for a in golds))


def _f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    common = Counter(pred_tokens) & Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:  # also when both are empty: the official v1.1 script scores that 0
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str, answers: str | Iterable[str]) -> float | None:
    """Token-level F1 of normalised bags of words, max over gold answers; None without answers."""
    golds = _gold_list(answers)
    if not golds:
        return None
    pred = normalize_answer(prediction).split()
    return max(_f1(pred, normalize_answer(a).split()) for a in golds)


def sub_exact_match(prediction: str, answers: str | Iterable[str]) -> float | None:
    """1.0 if a normalised gold answer occurs in the normalised prediction (character substring).

    Gold answers that normalise to the empty string are ignored (they would match anything);
    None if no usable gold answer remains.
    """
    golds = [g for g in (normalize_answer(a) for a in _gold_list(answers)) if g]
    if not golds:
        return None
    pred = normalize_answer(prediction)
    return float(any(g in pred for g in golds))


def qa_metrics(prediction: str, answers: str | Iterable[str]) -> dict[str, float | None]:
    """``{"em", "f1", "subem"}`` for one prediction: the three numbers every QA table reports."""
    golds = _gold_list(answers)
    return {"em": exact_match(prediction, golds), "f1": f1_score(prediction, golds),
            "subem": sub_exact_match(prediction, golds)}


# ---------------------------------------------------------------------------------------------
# MMLU: which option letter did the generator pick?
# ---------------------------------------------------------------------------------------------

_MARKUP = re.compile(r"[*_`#]+")
_WHOLE = re.compile(r"^\s*[\(\[]?\s*([A-Za-z])\s*[\)\]]?\s*[.:,;!]?\s*$")
_CUE = re.compile(
    r"\b(?:answer|option|choice)s?\b\s*(?:is|would be|will be|should be|:|-)?\s*(?:option|choice)?\s*:?\s*"
    r"(?:([\(\[])\s*([A-Za-z])\s*[\)\]]"          # (B) / [b]
    r"|(?-i:([A-Z]))(?![\w'])"                     # B  followed by a non-word character
    r"|(?-i:([a-z]))(?=\s*(?:[).:]|$)))",          # b) / b. / b:  / b at the very end
    re.IGNORECASE,
)
_LEADING = re.compile(r"^\s*(?:[\(\[]\s*([A-Za-z])\s*[\)\]]|([A-Za-z])\s*[.):]|([A-Z])\s*(?:,|$))")
_STANDALONE = re.compile(r"(?<![\w'’-])([A-Z])(?![\w'’-])")
_ARTICLE_A = re.compile(r"A\s+(?!is\b|was\b|seems\b|appears\b|would\b|should\b)[a-z]")


def _letter(ch: str | None, n_options: int) -> str | None:
    if not ch:
        return None
    ch = ch.upper()
    return ch if ch in LETTERS[:n_options] else None


def _match_choice_text(text: str, choices: Sequence[str]) -> str | None:
    """The letter of the one option whose normalised text the prediction is or contains."""
    pred = normalize_answer(text)
    if not pred:
        return None
    norm = [normalize_answer(c) for c in choices]
    exact = [i for i, c in enumerate(norm) if c and c == pred]
    if len(exact) == 1:
        return LETTERS[exact[0]]
    padded = f" {pred} "
    hits = [i for i, c in enumerate(norm) if c and f" {c} " in padded]
    # "Paris, Texas" also contains "Paris": keep only matches not contained in another match.
    hits = [i for i in hits if not any(j != i and f" {norm[i]} " in f" {norm[j]} " for j in hits)]
    return LETTERS[hits[0]] if len(hits) == 1 else None


def extract_choice(text: str | None, n_options: int = 4,
                   choices: Sequence[str] | None = None) -> str | None:
    """The option letter a generated answer commits to, or None when it commits to none or several.

    Rules, first match wins (see docs/metrics.md for examples):

    1. the whole answer is a letter, optionally bracketed/punctuated: "B", "b", "(B)", "B.";
    2. an explicit cue, the *last* one if several: "The answer is B", "Answer: b) ...",
       "answer is (C)", "Option D" — a lower-case letter after a cue counts only when bracketed
       or followed by ``)``, ``.``, ``:`` or the end, so "the answer is a cat" is no letter;
    3. a leading letter with a delimiter: "B. Paris", "(B) Paris", "b) Paris", "C: ...", "D, ...";
    4. with ``choices``: the answer equals or contains exactly one option's text (normalised);
    5. a unique stand-alone capital letter in range anywhere, where an "A" followed by a
       lower-case word ("A cat sat…") is read as the article unless that word is a copula
       ("A is correct"); several different letters → None (ambiguous).

    Only letters among the first ``n_options`` (``len(choices)`` when given) are accepted.
    """
    if not text:
        return None
    if choices is not None:
        n_options = len(choices)
    if not 1 <= n_options <= len(LETTERS):
        raise ValueError(f"n_options must be in 1..{len(LETTERS)}, got {n_options}")
    clean = _MARKUP.sub("", text).strip()

    m = _WHOLE.match(clean)
    if m:
        return _letter(m.group(1), n_options)

    cued = [_letter(g[1] or g[2] or g[3], n_options) for g in _CUE.findall(clean)]
    cued = [c for c in cued if c]
    if cued:
        return cued[-1]

    m = _LEADING.match(clean)
    if m:
        letter = _letter(m.group(1) or m.group(2) or m.group(3), n_options)
        if letter:
            return letter

    if choices:
        letter = _match_choice_text(clean, choices)
        if letter:
            return letter

    found = set()
    for m in _STANDALONE.finditer(clean):
        letter = _letter(m.group(1), n_options)
        if letter == "A" and _ARTICLE_A.match(clean, m.start()):
            continue
        if letter:
            found.add(letter)
    return found.pop() if len(found) == 1 else None


def choice_accuracy(prediction: str | None, answer_letter: str | int, n_options: int = 4,
                    choices: Sequence[str] | None = None) -> float:
    """1.0 if :func:`extract_choice` finds the gold letter (``"B"`` or index ``1``), else 0.0.

    An answer with no extractable letter scores 0: for MMLU the generator was asked for a letter.
    """
    gold = LETTERS[answer_letter] if isinstance(answer_letter, int) else answer_letter.strip().upper()
    return float(extract_choice(prediction, n_options, choices) == gold)


# ---------------------------------------------------------------------------------------------
# Ranking metrics against gold documents
# ---------------------------------------------------------------------------------------------

def _dedup(ranked_ids: Iterable[str]) -> list[str]:
    # A document listed twice is one document: a duplicate must not earn gain twice.
    seen: set[str] = set()
    out = []
    for d in ranked_ids:
        if d not in seen:
            seen.add(d)
            out.append(d)
    return out


def _check_k(k: int) -> None:
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")


def recall_at_k(ranked_ids: Sequence[str], gold_ids: Iterable[str], k: int) -> float | None:
    """Fraction of the gold documents found in the top ``k``; None when there is no gold."""
    _check_k(k)
    gold = set(gold_ids)
    if not gold:
        return None
    return len(gold.intersection(_dedup(ranked_ids)[:k])) / len(gold)


def ndcg_at_k(ranked_ids: Sequence[str], gold_ids: Iterable[str], k: int) -> float | None:
    """NDCG@k with binary gains: DCG = Σ_{i<k, d_i gold} 1/log2(i+2) over the ideal DCG, whose
    min(k, |gold|) gold documents fill the top ranks; None when there is no gold."""
    _check_k(k)
    gold = set(gold_ids)
    if not gold:
        return None
    dcg = sum(1.0 / math.log2(i + 2) for i, d in enumerate(_dedup(ranked_ids)[:k]) if d in gold)
    idcg = sum(1.0 / math.log2(i + 2) for i in range(min(k, len(gold))))
    return dcg / idcg


def mrr(ranked_ids: Sequence[str], gold_ids: Iterable[str]) -> float | None:
    """1 / (1-based rank of the first gold document); 0.0 if none is ranked; None without gold."""
    gold = set(gold_ids)
    if not gold:
        return None
    for i, d in enumerate(_dedup(ranked_ids)):
        if d in gold:
            return 1.0 / (i + 1)
    return 0.0


def ranking_metrics(ranked_ids: Sequence[str], gold_ids: Iterable[str],
                    ks: Iterable[int] = (1, 5, 10, 20)) -> dict[str, float | None]:
    """``{"recall@k", "ndcg@k" for each k, "mrr"}`` for one query, keyed like sentence-transformers'
    evaluators so that aggregated reports read the same."""
    gold = set(gold_ids)
    out: dict[str, float | None] = {}
    for k in ks:
        out[f"recall@{k}"] = recall_at_k(ranked_ids, gold, k)
        out[f"ndcg@{k}"] = ndcg_at_k(ranked_ids, gold, k)
    out["mrr"] = mrr(ranked_ids, gold)
    return out
