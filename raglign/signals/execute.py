"""Run signal requests on an in-process generator (the transformers backend).

Requests are deduplicated first (``answer_quality`` and ``dpa`` ask for the same single-document
answers; two signals scoring one prompt score it once), then sent in as few generator calls as
possible: all scorings in one ``score`` call (the generator length-sorts and micro-batches them),
greedy generations grouped by their parameters, and sampled generations grouped by parameters
*and seed*. Seeds are per row, so each sampled group is one row's prompts: that is the price of
sampled outputs that do not depend on batch composition (the transformers generator seeds once
per call, where vLLM seeds per request).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from raglign.models.generator import GenerationParams
from raglign.prompts import ParallelPrompt, parallel_prompt, rationale_prompt
from raglign.signals.base import Generate, Request, Score
from raglign.signals.judge import judge_prompt


def _choices(req) -> list[str] | None:
    return list(req.choices) if req.choices else None


def render(req: Request, tokenizer) -> str | ParallelPrompt:
    """The rendered prompt of a request. QA prompts stay cut into pieces (prefix, documents,
    suffix) so that the backend tokenises them exactly as the document engine does."""
    if isinstance(req, Score) or req.task == "qa":
        return parallel_prompt(tokenizer, req.question, list(req.docs), _choices(req))
    if req.task == "rationale":
        return rationale_prompt(tokenizer, req.question, req.answer)
    if req.task == "judge":
        return judge_prompt(tokenizer, req.question, req.answer, req.docs[0])
    raise ValueError(f"unknown generation task {req.task!r}")


def run_requests(requests: Iterable[Request], generator) -> dict[Request, Any]:
    """``{request: result}``: a float log-prob for a :class:`Score`, the text for a
    :class:`Generate`."""
    unique = list(dict.fromkeys(requests))
    tok = generator.tokenizer
    results: dict[Request, Any] = {}
    scores = [r for r in unique if isinstance(r, Score)]
    if scores:
        out = generator.score([render(r, tok) for r in scores], [r.answer for r in scores])
        results.update((r, o.logprob) for r, o in zip(scores, out))
    groups: dict[GenerationParams, list[Generate]] = {}
    for r in unique:
        if isinstance(r, Generate):
            params = GenerationParams(max_new_tokens=r.max_new_tokens, temperature=r.temperature,
                                      top_p=r.top_p, seed=r.seed if r.temperature > 0 else None)
            groups.setdefault(params, []).append(r)
    for params, reqs in groups.items():
        texts = generator.generate([render(r, tok) for r in reqs], params)
        results.update(zip(reqs, texts))
    return results
