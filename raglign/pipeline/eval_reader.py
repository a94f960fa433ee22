"""The reader of ``raglign eval``'s generator setting on every backend.

Each row's top-k documents (in the ranking being evaluated) go into the papers' QA prompt and
the generator answers greedily, up to ``max_new_tokens`` and the first newline:

* ``transformers``: :class:`GenerateActor`, a Ray Data actor pool (one model per actor,
  ``gpus_per_actor`` each) that renders the prompt with :func:`raglign.prompts.parallel_prompt`;
* ``vllm`` / ``http``: the QA processor of :mod:`raglign.models.vllm_backend` /
  :mod:`raglign.models.http_backend` over request rows (:func:`request_rows`), the same
  ``ray.data.llm`` pieces labelling uses. Its preprocess renders the same prompt from the same
  parts (:func:`raglign.prompts.render_task`): vLLM gets its token ids piece by piece, an HTTP
  server the text (``endpoint: completions``) or the chat messages (``chat``).

Answers are cut at the first newline on every backend (a server that ignores ``stop`` is
cut here), so the metrics compare like with like.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from raglign.models.generator import GenerationParams, cut_at_stop
from raglign.models.generator_spec import GeneratorSpec

STOP = ("\n",)
DOCUMENTS = "documents"  # the request rows' column of the top-k documents, in ranking order


def qa_params(max_new_tokens: int) -> GenerationParams:
    """Greedy answers up to ``max_new_tokens``, stopping at the first newline."""
    return GenerationParams(max_new_tokens=max_new_tokens, temperature=0.0, top_p=1.0,
                            stop=STOP)


def top_documents(row: dict, k: int) -> list[tuple[str | None, str]]:
    """``(title, text)`` of the row's first ``k`` candidates in its ``ranking``."""
    cands = list(row["candidates"])
    return [(cands[i]["title"], cands[i]["text"]) for i in list(row["ranking"])[:k]]


def request_rows(rows: list[dict], k: int) -> list[dict[str, Any]]:
    """The QA processors' request rows: ``id``, ``question``, ``choices`` and the top-k
    documents as ``{title, text}`` in ranking order."""
    return [{"id": r["id"], "question": r["question"], "choices": r.get("choices") or None,
             DOCUMENTS: [{"title": t, "text": x} for t, x in top_documents(r, k)]}
            for r in rows]


def reader_stage(spec: GeneratorSpec, params: GenerationParams) -> Callable:
    """``dataset of request rows -> dataset with prediction`` through the spec's
    ``ray.data.llm`` processor (vLLM engines or an OpenAI-compatible server)."""
    from raglign.models import http_backend as hb
    from raglign.models import vllm_backend as vb

    if spec.backend == "vllm":
        vb.require_vllm()
        return vb.generation_spec(spec.vllm_config(), "qa", params,
                                  documents_column=DOCUMENTS).build()
    return hb.generation_spec(spec.http_config(), "qa", params,
                              documents_column=DOCUMENTS).build()


def finish(outputs: list[dict]) -> list[dict]:
    """``{id, prediction}`` of each processor output, cut at the stop string."""
    return [{"id": o["id"], "prediction": cut_at_stop(str(o["prediction"]), STOP)}
            for o in outputs]


class GenerateActor:
    """Ray Data callable class (transformers backend): answers each row from its top-k
    documents with the QA prompt."""

    def __init__(self, generator: dict, k: int, max_new_tokens: int):
        from raglign.models.generator_spec import build_generator

        self.gen = build_generator(GeneratorSpec.model_validate(generator))
        self.k, self.params = k, qa_params(max_new_tokens)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from raglign.prompts import parallel_prompt

        prompts = []
        for question, cands, order, choices in zip(batch["question"], batch["candidates"],
                                                   batch["ranking"], batch["choices"]):
            row = {"candidates": cands, "ranking": order}
            choices = None if choices is None else [str(c) for c in choices]
            prompts.append(parallel_prompt(self.gen.tokenizer, str(question),
                                           top_documents(row, self.k), choices or None))
        return {"id": list(batch["id"]), "prediction": self.gen.generate(prompts, self.params)}
