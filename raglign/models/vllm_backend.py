"""vLLM generator backend: ``ray.data.llm`` processors for QA answers, RADIO rationales, ARL2
relevance judgements and answer log-likelihoods.

This follows ``ray.data.llm``'s own conventions rather than wrapping them: a raglign
:class:`VLLMConfig` becomes a real ``vLLMEngineProcessorConfig``; each job is a
``build_processor(config, preprocess=…, postprocess=…)`` applied to a Ray Dataset of request rows.
:class:`ProcessorSpec` keeps the three pieces inspectable (and testable without a GPU) before
``build()`` assembles them. The request-row helpers here (prompt text, token ids, sampling presets)
are shared with the HTTP backend so both send byte-identical prompts.

Why raglign tokenises the prompt itself (``tokenized_prompt``) and turns off ray's chat-template,
tokenize and detokenize stages:

* scoring needs the answer's token span exactly. The prompt is built as pieces (prefix, each
  document, suffix — :func:`raglign.prompts.parallel_prompt`) plus the answer continuation, each
  piece encoded with :func:`raglign.prompts.encode_piece`; the answer's tokens are then the last
  ``len(encode_piece(answer))`` ids by construction. Re-tokenising the joined text would let BPE
  merge across the boundary and shift the span silently;
* the same ids are what the transformers backend and the parallel-prefill engine score, so a
  vLLM score is comparable with theirs (ray's TokenizeStage would add BOS differently);
* ray's ChatTemplateStage would re-render messages; prompts.py is the single place prompts are
  built (:func:`raglign.prompts.render_task`).

Request rows (input columns; all others are carried through unchanged):

* ``question`` (str), ``choices`` (list[str] | None, multiple choice), the documents column
  (default ``candidates``: a list of ``{"title", "text", …}``, the canonical schema's candidates);
* scoring also needs ``answer`` (str); rationales need ``answer`` and use no documents;
  judgements need ``answer`` and judge the first document (:func:`task_inputs`).

Reserved column names (added by the processor, removed by its postprocess): see
:data:`ENGINE_COLUMNS`.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from raglign.errors import ConfigError, DataError, RaglignError
from raglign.models.generator import GenerationParams
from raglign.models.generator_spec import VLLMConfig
from raglign.models.logprobs import prompt_token_logprobs
from raglign.models.registry import resolve_model
from raglign.prompts import (TASK_SAMPLING, answer_continuation, encode_piece, encode_prompt,
                             render_task)

Task = Literal["qa", "rationale", "judge"]  # raglign.prompts.TASKS

# Columns a request row may not use: ray.data.llm's stages and vLLMOutputData write them.
ENGINE_COLUMNS = frozenset({
    "prompt", "tokenized_prompt", "sampling_params", "prompt_token_ids", "num_input_tokens",
    "generated_tokens", "generated_text", "num_generated_tokens", "embeddings", "metrics",
    "logprobs", "prompt_logprobs", "request_id", "batch_uuid", "time_taken_llm", "params",
    "__inference_error__", "payload", "http_response",
})

SOURCE = "generator request rows"


# The processors' sampling when a caller gives none: each task's defaults, stated once in
# raglign.prompts.TASK_SAMPLING (the signals' options blocks default to the same values).
DEFAULT_PARAMS: dict[str, GenerationParams] = {t: GenerationParams(**s)
                                               for t, s in TASK_SAMPLING.items()}
OUTPUT_COLUMN: dict[str, str] = {"qa": "prediction", "rationale": "rationale",
                                 "judge": "judgement"}


def sampling_params(params: GenerationParams) -> dict[str, Any]:
    """:class:`~raglign.models.generator.GenerationParams` under the names vLLM's
    ``SamplingParams`` and the OpenAI API share (``max_tokens``, ``temperature``, ``top_p``,
    ``seed``, ``stop``); unset seed and empty stop are left out."""
    out = {"max_tokens": params.max_new_tokens, "temperature": params.temperature,
           "top_p": params.top_p}
    if params.seed is not None:
        out["seed"] = params.seed
    if params.stop:
        out["stop"] = list(params.stop)
    return out


def require_vllm() -> None:
    """Fail early, on the driver, when vLLM is absent (otherwise the error surfaces minutes later
    inside a Ray actor)."""
    if importlib.util.find_spec("vllm") is None:
        raise RaglignError("the vLLM backend needs vLLM: install raglign[vllm] "
                           "(pip install 'raglign[vllm]', a CUDA machine is required)")


def engine_config(cfg: VLLMConfig):
    """The ``vLLMEngineProcessorConfig`` for ``cfg``, with ray's CPU stages off (see module doc)."""
    from ray.data.llm import vLLMEngineProcessorConfig

    explicit = {"tensor_parallel_size": cfg.tensor_parallel_size, "dtype": cfg.dtype}
    if cfg.max_model_len is not None:
        explicit["max_model_len"] = cfg.max_model_len
    clash = sorted((set(explicit) | {"max_model_len", "model"}) & set(cfg.engine_kwargs))
    if clash:
        raise ConfigError(f"engine_kwargs: {', '.join(clash)} must be set through the generator's "
                          "own fields (model, tensor_parallel_size, dtype, max_model_len)")
    return vLLMEngineProcessorConfig(
        model_source=resolve_model(cfg.model),
        engine_kwargs={**explicit, **cfg.engine_kwargs},
        batch_size=cfg.batch_size,
        concurrency=cfg.concurrency,
        accelerator_type=cfg.accelerator_type,
        chat_template_stage=False,
        tokenize_stage=False,
        detokenize_stage=False,
    )


@functools.lru_cache(maxsize=4)
def tokenizer_for(source: str):
    """The tokenizer of a resolved model source, loaded once per Ray worker process (the
    preprocess closures carry only the source string, not a pickled tokenizer)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source)


# ---------------------------------------------------------------------------- request rows
def row_field(row: Mapping[str, Any], name: str) -> str:
    """A required non-empty string column of a request row."""
    if name not in row or row[name] is None:
        raise DataError(SOURCE, row.get("id"), name, "missing")
    value = row[name]
    if not isinstance(value, str) or not value.strip():
        raise DataError(SOURCE, row.get("id"), name, f"expected a non-empty string, got {value!r}")
    return value


def as_list(value: Any) -> list | None:
    """Ray Data hands list columns over as lists or numpy arrays; None stays None."""
    return None if value is None else list(value)


def row_documents(row: Mapping[str, Any], column: str) -> list[tuple[str | None, str]]:
    """``(title, text)`` pairs of a request row's documents column, in order."""
    docs = as_list(row.get(column))
    if docs is None:
        raise DataError(SOURCE, row.get("id"), column, "missing (a list of {title, text})")
    out = []
    for j, d in enumerate(docs):
        if not isinstance(d, Mapping) or not isinstance(d.get("text"), str):
            raise DataError(SOURCE, row.get("id"), f"{column}[{j}].text", "expected a string")
        out.append((d.get("title") or None, d["text"]))
    return out


def task_inputs(row: Mapping[str, Any], task: str, documents_column: str) -> dict[str, Any]:
    """The parts of ``task``'s prompt in a request row, as keyword arguments of
    :func:`raglign.prompts.render_task` and :func:`~raglign.prompts.task_messages` (shared with
    the HTTP backend, so both read a row alike): QA and judgements read the documents,
    rationales and judgements the gold answer."""
    return {"question": row_field(row, "question"),
            "docs": () if task == "rationale" else row_documents(row, documents_column),
            "answer": None if task == "qa" else row_field(row, "answer"),
            "choices": as_list(row.get("choices")) or None}


def task_token_ids(tokenizer: Any, row: Mapping[str, Any], task: str,
                   documents_column: str) -> list[int]:
    """Token ids of the row's prompt for ``task``, QA piece by piece (prefix, each document,
    suffix)."""
    return encode_prompt(tokenizer, render_task(tokenizer, task,
                                                **task_inputs(row, task, documents_column)))


def qa_token_ids(tokenizer: Any, row: Mapping[str, Any], documents_column: str) -> list[int]:
    """Token ids of the QA prompt, piece by piece (prefix, each document, suffix)."""
    return task_token_ids(tokenizer, row, "qa", documents_column)


def scoring_token_ids(tokenizer: Any, row: Mapping[str, Any], documents_column: str,
                      answer_column: str = "answer") -> tuple[list[int], int]:
    """``(ids, start)``: the QA prompt followed by the answer continuation; the answer's tokens
    are ``ids[start:]``, exact by construction since the answer is encoded as its own piece."""
    context = qa_token_ids(tokenizer, row, documents_column)
    answer = encode_piece(tokenizer, answer_continuation(tokenizer, row_field(row, answer_column)))
    if not answer:
        raise DataError(SOURCE, row.get("id"), answer_column, "encodes to no tokens")
    return context + answer, len(context)


def carry(row: Mapping[str, Any]) -> dict[str, Any]:
    """The request row's own columns, without what the processor's stages added."""
    return {k: v for k, v in row.items() if k not in ENGINE_COLUMNS}


def check_columns(row: Mapping[str, Any]) -> None:
    """Reject request rows that use a column ray.data.llm's stages would overwrite."""
    taken = sorted(ENGINE_COLUMNS & set(row))
    if taken:
        raise DataError(SOURCE, row.get("id"), taken[0],
                        "is reserved for ray.data.llm's stages; rename the column")


# ---------------------------------------------------------------------------- processors
@dataclass(frozen=True)
class ProcessorSpec:
    """A ``ray.data.llm`` processor before it is built: config, preprocess, postprocess."""

    config: Any  # a ray.data.llm ProcessorConfig
    preprocess: Callable[[dict], dict]
    postprocess: Callable[[dict], dict]

    def build(self):
        """``ray.data.llm.build_processor`` over the three pieces; call it on a Dataset."""
        from ray.data.llm import build_processor

        return build_processor(self.config, preprocess=self.preprocess,
                               postprocess=self.postprocess)


def generation_spec(cfg: VLLMConfig, task: Task = "qa", params: GenerationParams | None = None,
                    documents_column: str = "candidates",
                    output_column: str | None = None) -> ProcessorSpec:
    """QA answers (``task="qa"``), RADIO rationales (``"rationale"``) or ARL2 judgements
    (``"judge"``) as a new column (``prediction`` / ``rationale`` / ``judgement`` by default)."""
    if task not in DEFAULT_PARAMS:
        raise ConfigError(f"task: expected one of {sorted(DEFAULT_PARAMS)}, got {task!r}")

    def ids_of(tok, row: dict) -> list[int]:
        return task_token_ids(tok, row, task, documents_column)

    return _generation_spec(cfg, params or DEFAULT_PARAMS[task], ids_of,
                            output_column or OUTPUT_COLUMN[task])


def _generation_spec(cfg: VLLMConfig, params: GenerationParams,
                     ids_of: Callable[[Any, dict], list[int]], column: str) -> ProcessorSpec:
    """Generation from the prompt ids ``ids_of(tokenizer, row)``; the text goes to ``column``."""
    config = engine_config(cfg)
    source = config.model_source
    sampling = sampling_params(params)

    def preprocess(row: dict) -> dict:
        check_columns(row)
        return {"tokenized_prompt": ids_of(tokenizer_for(source), row),
                "sampling_params": dict(sampling)}

    def postprocess(row: dict) -> dict:
        return {**carry(row), column: row["generated_text"]}

    return ProcessorSpec(config, preprocess, postprocess)


def scoring_spec(cfg: VLLMConfig, documents_column: str = "candidates",
                 answer_column: str = "answer") -> ProcessorSpec:
    """log p(answer | QA prompt): adds ``answer_logprob`` (sum over the answer's tokens) and
    ``answer_token_logprobs``.

    vLLM computes prompt log-probs in the prefill; ``max_tokens=1`` makes the one decode step
    negligible. ``prompt_logprobs=1`` returns each position's top-1 plus the prompt's own token,
    which is all the parser needs.
    """
    return _scoring_spec(cfg, lambda tok, row: scoring_token_ids(tok, row, documents_column,
                                                                 answer_column))


def _scoring_spec(cfg: VLLMConfig,
                  ids_of: Callable[[Any, dict], tuple[list[int], int]]) -> ProcessorSpec:
    """Answer log-probs of ``ids_of(tokenizer, row) = (ids, start)``: the tokens ``ids[start:]``."""
    config = engine_config(cfg)
    source = config.model_source
    sampling = {"temperature": 0.0, "max_tokens": 1, "prompt_logprobs": 1, "detokenize": False}

    def preprocess(row: dict) -> dict:
        check_columns(row)
        ids, start = ids_of(tokenizer_for(source), row)
        return {"tokenized_prompt": ids, "sampling_params": dict(sampling),
                "_raglign_answer_start": start}

    def postprocess(row: dict) -> dict:
        ids = as_list(row.get("prompt_token_ids")) or list(row["tokenized_prompt"])
        try:
            values = prompt_token_logprobs(row["prompt_logprobs"] or [], ids,
                                           int(row["_raglign_answer_start"]))
        except ValueError as e:
            raise DataError("vLLM scoring output", row.get("id"), "prompt_logprobs", str(e)) from None
        out = {k: v for k, v in carry(row).items() if k != "_raglign_answer_start"}
        return {**out, "answer_logprob": sum(values), "answer_token_logprobs": values}

    return ProcessorSpec(config, preprocess, postprocess)


def prompt_generation_spec(cfg: VLLMConfig, params: GenerationParams) -> ProcessorSpec:
    """Generation for rows that carry their prompt as token ids (``prompt_ids``), as
    :class:`raglign.models.processor_generator.VLLMGenerator` sends them; adds ``text``."""
    return _generation_spec(cfg, params, lambda tok, row: as_list(row["prompt_ids"]), "text")


def prompt_scoring_spec(cfg: VLLMConfig) -> ProcessorSpec:
    """Scoring for rows that carry ``prompt_ids`` (prompt then answer) and ``answer_start``."""
    return _scoring_spec(cfg, lambda tok, row: (as_list(row["prompt_ids"]),
                                                int(row["answer_start"])))


def generation_processor(cfg: VLLMConfig, task: Task = "qa",
                         params: GenerationParams | None = None, **columns: str):
    """A built processor for :func:`generation_spec` (needs vLLM: ``raglign[vllm]``)."""
    require_vllm()
    return generation_spec(cfg, task, params, **columns).build()


def scoring_processor(cfg: VLLMConfig, **columns: str):
    """A built processor for :func:`scoring_spec` (needs vLLM: ``raglign[vllm]``)."""
    require_vllm()
    return scoring_spec(cfg, **columns).build()
