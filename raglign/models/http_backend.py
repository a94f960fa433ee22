"""OpenAI-compatible HTTP generator backend through ``ray.data.llm.HttpRequestProcessorConfig``.

Any server speaking the OpenAI API works for generation (vLLM's ``vllm serve``, llama.cpp's
server, ``transformers serve``, SGLang, hosted APIs): the preprocess writes the request body to
``payload``, ray's HttpRequestStage POSTs it (rate-limited by ``qps``, retried on 429/5xx) and
the postprocess reads ``http_response``.

* generation through ``/v1/chat/completions`` sends the task's messages
  (:func:`raglign.prompts.task_messages`) and lets the server apply its chat template; through
  ``/v1/completions`` it sends the same messages rendered locally
  (:func:`raglign.prompts.render_task`), which is what the vLLM and transformers backends see;
* scoring uses ``/v1/completions`` with ``echo=True, logprobs=1, max_tokens=1``: the server
  returns the log-prob of every prompt token and their character offsets, and the answer is the
  prompt's last ``len(answer)`` characters
  (:func:`raglign.models.logprobs.echoed_answer_logprobs`; ``usage.completion_tokens`` says how
  many trailing tokens were generated rather than echoed).
  Servers that ignore ``echo``/``logprobs`` (``transformers serve``) cannot score; the error says
  so. ``max_tokens=1`` rather than 0 because some servers read 0 as "no limit".
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from raglign.errors import ConfigError, DataError
from raglign.models.generator import GenerationParams
from raglign.models.generator_spec import HttpConfig
from raglign.models.logprobs import echoed_answer_logprobs
from raglign.models.registry import resolve_model
from raglign.models.vllm_backend import (
    DEFAULT_PARAMS,
    OUTPUT_COLUMN,
    ProcessorSpec,
    Task,
    as_list,
    carry,
    check_columns,
    row_documents,
    row_field,
    sampling_params,
    task_inputs,
    tokenizer_for,
)
from raglign.prompts import answer_continuation, prompt_text, qa_prompt, render_task, task_messages


def processor_config(cfg: HttpConfig, path: str):
    """The ``HttpRequestProcessorConfig`` POSTing to ``base_url + path``."""
    from ray.data.llm import HttpRequestProcessorConfig

    headers = dict(cfg.headers)
    if cfg.api_key_env:
        key = os.environ.get(cfg.api_key_env)
        if not key:
            raise ConfigError(f"api_key_env: environment variable {cfg.api_key_env} is not set")
        headers["Authorization"] = f"Bearer {key}"
    return HttpRequestProcessorConfig(
        url=cfg.base_url.rstrip("/") + path, headers=headers or None, qps=cfg.qps,
        concurrency=cfg.concurrency, batch_size=cfg.batch_size, max_retries=cfg.max_retries)


def _tokenizer_source(cfg: HttpConfig) -> str:
    return resolve_model(cfg.tokenizer or cfg.model)


def _choice(row: Mapping[str, Any]) -> Mapping[str, Any]:
    """``choices[0]`` of the response, or a DataError carrying the server's own error."""
    resp = row.get("http_response") or {}
    choices = resp.get("choices") if isinstance(resp, Mapping) else None
    if not choices:
        detail = resp.get("error", resp) if isinstance(resp, Mapping) else resp
        raise DataError("HTTP response", row.get("id"), "choices", f"missing; server said {detail!r}")
    return choices[0]


def generation_spec(cfg: HttpConfig, task: Task = "qa", params: GenerationParams | None = None,
                    documents_column: str = "candidates",
                    output_column: str | None = None) -> ProcessorSpec:
    """QA answers, RADIO rationales or ARL2 judgements (``task`` as in
    :func:`raglign.models.vllm_backend.generation_spec`) through ``cfg.endpoint``; adds
    ``prediction`` / ``rationale`` / ``judgement`` (or ``output_column``)."""
    if task not in DEFAULT_PARAMS:
        raise ConfigError(f"task: expected one of {sorted(DEFAULT_PARAMS)}, got {task!r}")
    chat = cfg.endpoint == "chat"
    source = None if chat else _tokenizer_source(cfg)

    def request(row: dict) -> dict:
        inputs = task_inputs(row, task, documents_column)
        if chat:
            return {"messages": task_messages(task, **inputs)}
        return {"prompt": prompt_text(render_task(tokenizer_for(source), task, **inputs))}

    return _generation_spec(cfg, params or DEFAULT_PARAMS[task], request,
                            output_column or OUTPUT_COLUMN[task])


def _generation_spec(cfg: HttpConfig, params: GenerationParams,
                     request: Callable[[dict], dict], column: str) -> ProcessorSpec:
    """POSTs ``request(row)`` (``messages`` for chat, ``prompt`` for completions) with the
    sampling settings; the returned text goes to ``column``."""
    chat = cfg.endpoint == "chat"
    config = processor_config(cfg, "/chat/completions" if chat else "/completions")
    body = {"model": cfg.model, **sampling_params(params)}

    def preprocess(row: dict) -> dict:
        check_columns(row)
        return {"payload": {**body, **request(row)}}

    def postprocess(row: dict) -> dict:
        choice = _choice(row)
        text = choice["message"]["content"] if chat else choice["text"]
        return {**carry(row), column: text}

    return ProcessorSpec(config, preprocess, postprocess)


def scoring_spec(cfg: HttpConfig, documents_column: str = "candidates",
                 answer_column: str = "answer") -> ProcessorSpec:
    """log p(answer | QA prompt) from ``/v1/completions`` with ``echo``: adds ``answer_logprob``
    and ``answer_token_logprobs``. The server tokenises the prompt text itself, so token
    boundaries follow its tokenizer on the joined text (see docs/generators.md)."""
    source = _tokenizer_source(cfg)

    def texts(row: dict) -> tuple[str, str]:
        tok = tokenizer_for(source)
        prompt = qa_prompt(tok, row_field(row, "question"), row_documents(row, documents_column),
                           as_list(row.get("choices")) or None)
        return prompt, answer_continuation(tok, row_field(row, answer_column))

    return _scoring_spec(cfg, texts)


def _scoring_spec(cfg: HttpConfig, texts: Callable[[dict], tuple[str, str]]) -> ProcessorSpec:
    """Echo scoring of ``texts(row) = (prompt, answer continuation)``, sent as one text."""
    config = processor_config(cfg, "/completions")
    body = {"model": cfg.model, "echo": True, "logprobs": 1, "max_tokens": 1, "temperature": 0.0}

    def preprocess(row: dict) -> dict:
        check_columns(row)
        prompt, answer = texts(row)
        return {"payload": {**body, "prompt": prompt + answer},
                "_raglign_answer_chars": len(answer)}

    def postprocess(row: dict) -> dict:
        choice = _choice(row)
        usage = row["http_response"].get("usage") or {}
        try:
            values = echoed_answer_logprobs(choice.get("logprobs"),
                                            int(row["_raglign_answer_chars"]),
                                            int(usage.get("completion_tokens", 1)))
        except ValueError as e:
            raise DataError("HTTP scoring response", row.get("id"), "logprobs", str(e)) from None
        out = {k: v for k, v in carry(row).items() if k != "_raglign_answer_chars"}
        return {**out, "answer_logprob": sum(values), "answer_token_logprobs": values}

    return ProcessorSpec(config, preprocess, postprocess)


def prompt_generation_spec(cfg: HttpConfig, params: GenerationParams) -> ProcessorSpec:
    """Completions of rows that carry a locally rendered ``prompt_text``, as
    :class:`raglign.models.processor_generator.HttpGenerator` sends them; adds ``text``."""
    if cfg.endpoint != "completions":
        raise ConfigError("endpoint: rendered prompts go to /v1/completions; set endpoint: "
                          "completions (chat requests let the server apply its own template)")
    return _generation_spec(cfg, params, lambda row: {"prompt": row["prompt_text"]}, "text")


def prompt_scoring_spec(cfg: HttpConfig) -> ProcessorSpec:
    """Echo scoring of rows that carry ``prompt_text`` and ``answer_text`` (the continuation)."""
    return _scoring_spec(cfg, lambda row: (row["prompt_text"], row["answer_text"]))


def generation_processor(cfg: HttpConfig, task: Task = "qa",
                         params: GenerationParams | None = None, **columns: str):
    """A built processor for :func:`generation_spec`."""
    return generation_spec(cfg, task, params, **columns).build()


def scoring_processor(cfg: HttpConfig, **columns: str):
    """A built processor for :func:`scoring_spec`."""
    return scoring_spec(cfg, **columns).build()
