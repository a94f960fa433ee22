"""The vLLM and HTTP backends behind the :class:`~raglign.models.generator.Generator` interface.

The label job maps ``ray.data.llm`` processors over Ray Datasets of question rows (streaming,
sharded, resumable). Code that holds prompts in hand — a notebook, a custom signal, a script —
wants the calls :class:`~raglign.models.generator.TransformersGenerator` offers instead:
``generate(prompts) -> [text]`` and ``score(prompts, answers) -> [ScoreResult]``. A
:class:`ProcessorGenerator` turns the list into a Ray Dataset of index-tagged request rows, runs
the backend's processor over it (the same ``build_processor`` pipeline as the label job) and puts
the outputs back in input order; a request that does not come back is an error, never a dropped
row.

A caller that sends many small batches from one process — an RRPO reward actor, once per
rollout — would pay for a new pipeline per call, and on vLLM for a new engine (minutes of weight
loading each time). With ``in_process=True`` the processor's stages run in the calling process
instead: each stage's UDF (Ray's own ``vLLMEngineStageUDF`` / ``HttpRequestUDF``, wrapped by
Ray's own preprocess and postprocess) is built on the first call and kept, so the engine loads
once and serves every later call, generation and scoring alike (both use one engine config).
The caller then holds the engine's GPUs itself (one per tensor-parallel rank).

Prompts are rendered and tokenised on the driver exactly as the transformers backend does
(``encode_prompt(prompt) + encode_piece(answer_continuation(answer))``), so for the same model a
vLLM score is the transformers score of the same token ids. The HTTP server tokenises the text
itself: its scores follow the server's tokenizer on the joined text (docs/generators.md).
"""

from __future__ import annotations

import asyncio
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

from raglign.errors import ConfigError, DataError
from raglign.models import http_backend, vllm_backend
from raglign.models.generator import (
    GenerationParams,
    Generator,
    Prompt,
    ScoreResult,
    check_pair_counts,
    cut_at_stop,
    resolve_params,
)
from raglign.models.registry import resolve_model
from raglign.models.vllm_backend import ProcessorSpec, tokenizer_for
from raglign.prompts import answer_continuation, encode_piece, encode_prompt, prompt_text

INDEX = "request_index"


class ProcessorGenerator(Generator):
    """``generate``/``score`` over a ``ray.data.llm`` processor; uses (or starts) the current
    Ray session, like any Ray Data job."""

    tokenizer: Any

    def __init__(self, in_process: bool = False):
        self.in_process = in_process
        self._udfs: dict[tuple[str, str], Any] = {}  # (stage, its constructor kwargs) -> UDF
        self._loop: asyncio.AbstractEventLoop | None = None

    @abstractmethod
    def generation_spec(self, params: GenerationParams) -> ProcessorSpec:
        """The processor that completes one request row (adds ``text``)."""

    @abstractmethod
    def scoring_spec(self) -> ProcessorSpec:
        """The processor that scores one request row (adds ``answer_token_logprobs``)."""

    @abstractmethod
    def generation_request(self, prompt: Prompt) -> dict:
        """The request-row columns of one prompt."""

    @abstractmethod
    def scoring_request(self, prompt: Prompt, answer: str) -> dict:
        """The request-row columns of one (prompt, answer) pair."""

    def apply(self, spec: ProcessorSpec, ds):
        """Run the built processor over a Dataset (tests put an engine stand-in here)."""
        return spec.build()(ds)

    def stage_udf(self, stage: Any, kwargs: dict) -> Any:
        """A processor stage's UDF, built as Ray Data's ``map_batches`` builds it (tests put an
        engine stand-in here)."""
        return stage.fn(**kwargs)

    def run_in_process(self, spec: ProcessorSpec, items: list[dict]) -> list[dict]:
        """The processor of ``spec`` over ``items`` in this process: Ray's wrapped preprocess,
        each stage's kept UDF over batches of the processor's ``batch_size`` (all batches in
        flight at once, as Ray Data runs an async stage), Ray's wrapped postprocess."""
        processor = spec.build()
        column = processor.DATA_COLUMN
        if self._loop is None:  # one loop for the process: an async engine is bound to it
            self._loop = asyncio.new_event_loop()
        data = [processor.preprocess(item)[column] for item in items]
        size = processor.config.batch_size
        for name, stage in processor.stages.items():
            kwargs = stage.get_dataset_map_batches_kwargs(batch_size=size, data_column=column)
            key = (name, repr(sorted(kwargs["fn_constructor_kwargs"].items())))
            if key not in self._udfs:
                self._udfs[key] = self.stage_udf(stage, kwargs["fn_constructor_kwargs"])
            chunks = [data[i:i + size] for i in range(0, len(data), size)]
            data = self._loop.run_until_complete(_through_stage(self._udfs[key], column, chunks))
        return [processor.postprocess({column: row}) for row in data]

    def generate(self, prompts: Sequence[Prompt], params: GenerationParams | None = None,
                 **overrides) -> list[str]:
        p = resolve_params(params, overrides)
        rows = self._run(self.generation_spec(p), [self.generation_request(x) for x in prompts])
        return [cut_at_stop(r["text"], p.stop) for r in rows]

    def score(self, prompts: Sequence[Prompt], answers: Sequence[str], *, normalize: bool = False,
              per_token: bool = False) -> list[ScoreResult]:
        check_pair_counts(prompts, answers)
        for i, a in enumerate(answers):
            if not isinstance(a, str) or not a.strip():
                raise DataError("score inputs", i, "answer", f"expected a non-empty string, got {a!r}")
        rows = self._run(self.scoring_spec(),
                         [self.scoring_request(p, a) for p, a in zip(prompts, answers)])
        return [ScoreResult.from_token_logprobs(r["answer_token_logprobs"], normalize, per_token)
                for r in rows]

    def _run(self, spec: ProcessorSpec, requests: list[dict]) -> list[dict]:
        import ray

        if not requests:
            return []
        items = [{INDEX: i, **r} for i, r in enumerate(requests)]
        done = (self.run_in_process(spec, items) if self.in_process
                else self.apply(spec, ray.data.from_items(items)).take_all())
        by_index = {int(r[INDEX]): r for r in done}
        missing = [i for i in range(len(items)) if i not in by_index]
        if missing:
            raise RuntimeError(f"{len(missing)} of {len(items)} requests came back without a "
                               f"result (first: request {missing[0]})")
        return [by_index[i] for i in range(len(items))]


async def _through_stage(udf: Any, column: str, chunks: list[list[dict]]) -> list[dict]:
    """The rows of ``chunks`` after one stage UDF, each chunk a batch, all batches at once."""

    async def one(batch: list[dict]) -> list[dict]:
        return [row for out in [o async for o in udf({column: batch})]
                for row in out.get(column, [])]

    return [row for done in await asyncio.gather(*(one(c) for c in chunks)) for row in done]


class VLLMGenerator(ProcessorGenerator):
    """vLLM engines through ``ray.data.llm`` (needs ``raglign[vllm]`` and a GPU): prompt ids in
    ``tokenized_prompt``, scores from ``prompt_logprobs``."""

    def __init__(self, config: vllm_backend.VLLMConfig, in_process: bool = False):
        vllm_backend.require_vllm()
        super().__init__(in_process)
        self.config = in_process_engine(config) if in_process else config
        self.tokenizer = tokenizer_for(resolve_model(config.model))

    def generation_spec(self, params: GenerationParams) -> ProcessorSpec:
        return vllm_backend.prompt_generation_spec(self.config, params)

    def scoring_spec(self) -> ProcessorSpec:
        return vllm_backend.prompt_scoring_spec(self.config)

    def generation_request(self, prompt: Prompt) -> dict:
        return {"prompt_ids": encode_prompt(self.tokenizer, prompt)}

    def scoring_request(self, prompt: Prompt, answer: str) -> dict:
        context = encode_prompt(self.tokenizer, prompt)
        ids = encode_piece(self.tokenizer, answer_continuation(self.tokenizer, answer))
        return {"prompt_ids": context + ids, "answer_start": len(context)}


class HttpGenerator(ProcessorGenerator):
    """An OpenAI-compatible server's ``/v1/completions``: prompts rendered locally with the
    config's tokenizer. ``generate`` needs ``endpoint: completions``; scoring always uses
    completions and needs a server that honours ``echo`` with ``logprobs`` (llama.cpp's does,
    ``transformers serve`` does not)."""

    def __init__(self, config: http_backend.HttpConfig, in_process: bool = False):
        super().__init__(in_process)
        self.config = config
        self.tokenizer = tokenizer_for(resolve_model(config.tokenizer or config.model))

    def generation_spec(self, params: GenerationParams) -> ProcessorSpec:
        return http_backend.prompt_generation_spec(self.config, params)

    def scoring_spec(self) -> ProcessorSpec:
        return http_backend.prompt_scoring_spec(self.config)

    def generation_request(self, prompt: Prompt) -> dict:
        return {"prompt_text": prompt_text(prompt)}

    def scoring_request(self, prompt: Prompt, answer: str) -> dict:
        return {"prompt_text": prompt_text(prompt),
                "answer_text": answer_continuation(self.tokenizer, answer)}


def in_process_engine(config: vllm_backend.VLLMConfig) -> vllm_backend.VLLMConfig:
    """``config`` for an engine that runs inside the calling process on the GPUs it holds:
    vLLM's single-process executor for one GPU, its multiprocessing executor over the
    process's GPUs for tensor parallelism (Ray Data's default there, the Ray executor, places
    its workers in a placement group of the map_batches actor, which a caller's actor does not
    have)."""
    executor = "uni" if config.tensor_parallel_size == 1 else "mp"
    chosen = config.engine_kwargs.get("distributed_executor_backend", executor)
    if chosen != executor:
        raise ConfigError(f"vllm.engine_kwargs.distributed_executor_backend: {chosen!r} cannot "
                          f"run an engine inside the reward actor; leave it out ({executor!r})")
    return config.model_copy(update={"engine_kwargs": {**config.engine_kwargs,
                                                       "distributed_executor_backend": executor}})
