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
from raglign.prompts import ParallelPrompt, render_task
from raglign.signals.base import Generate, Request, Score


def render(req: Request, tokenizer) -> str | ParallelPrompt:
    """The rendered prompt of a request (:func:`raglign.prompts.render_task`, as every backend
    renders it; a scoring request's prompt is the QA prompt)."""
    return render_task(tokenizer, req.task, req.question, req.docs, req.answer, req.choices)


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
            groups.setdefault(GenerationParams(**r.sampling), []).append(r)
    for params, reqs in groups.items():
        texts = generator.generate([render(r, tok) for r in reqs], params)
        results.update(zip(reqs, texts))
    return results
