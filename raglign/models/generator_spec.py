"""``GeneratorSpec``: which LLM a job runs and on which backend, written once for every job.

Labelling, evaluation's generator setting, the demo, G-Rerank (mining weights, the ablation,
training) and RRPO's reader all run a generator; each config embeds one ``generator:`` block of
this type, and every job gets its :class:`~raglign.models.generator.Generator` from
:func:`build_generator`. A recipe writes the block in full::

    generator:
      name: meta-llama/Llama-3.1-8B-Instruct   # packaged short name, local dir or hub id
      backend: vllm                            # transformers | vllm | http
      dtype: bfloat16
      vllm: {tensor_parallel_size: 1, max_model_len: 8192}

or, for the transformers backend with its defaults, as the name alone (``generator:
smollm2-135m``), which stays the shorthand for ``{name: smollm2-135m}``. The flags
``--generator``, ``--backend``, ``--dtype`` and ``--device`` set ``name``, ``backend``, ``dtype``
and ``device`` of this block on every command (:mod:`raglign.cli.recipe`).

The backends' own settings live here too (:class:`VLLMConfig`, :class:`HttpConfig`): this
module imports neither torch nor Ray, so that ``raglign.training_config`` (validated without
torch) can embed the spec; the backends that use them (:mod:`~raglign.models.vllm_backend`,
:mod:`~raglign.models.http_backend`) import them from here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, PositiveInt, model_validator

from raglign.config import StrictModel
from raglign.errors import ConfigError

if TYPE_CHECKING:
    from raglign.models.generator import Generator

Backend = Literal["transformers", "vllm", "http"]
BACKENDS: tuple[str, ...] = ("transformers", "vllm", "http")
Dtype = Literal["auto", "float32", "bfloat16", "float16"]
# The spec's fields that a flag of the same name sets on every command.
FLAG_FIELDS = {"generator": "name", "backend": "backend", "dtype": "dtype", "device": "device"}


class VLLMOptions(StrictModel):
    """The ``vllm:`` block of a spec: how vLLM runs (``ray.data.llm``'s engine processor).

    ``model`` defaults to the spec's ``name``; the weights' dtype is the spec's ``dtype``.
    ``batch_size`` (rows per engine call), ``concurrency`` (engine replicas, or a min/max
    autoscaling pair) and ``accelerator_type`` change speed only.
    """

    model: str | None = None
    tensor_parallel_size: PositiveInt = 1
    batch_size: PositiveInt = 32
    concurrency: PositiveInt | tuple[PositiveInt, PositiveInt] = 1
    accelerator_type: str | None = None
    max_model_len: PositiveInt | None = None
    engine_kwargs: dict[str, Any] = Field(default_factory=dict)


class VLLMConfig(VLLMOptions):
    """Where and how vLLM runs; becomes a ``ray.data.llm.vLLMEngineProcessorConfig``
    (:func:`raglign.models.vllm_backend.engine_config`).

    ``model`` is a packaged short name (``smollm2-135m``), a local directory or ``.gguf`` file
    (resolved with :func:`raglign.models.registry.resolve_model`), or a hub id. A local path must
    exist on every node that runs an engine replica. ``dtype: auto`` is vLLM's own choice (the
    model's dtype, fp16 for fp32 checkpoints).
    """

    model: str
    dtype: str = "auto"


class HttpConfig(StrictModel):
    """An OpenAI-compatible server and how hard to drive it.

    ``base_url`` ends in ``/v1``. ``model`` is the name sent in each request. ``tokenizer``
    (a packaged short name, local path or hub id; defaults to ``model``) renders prompts locally
    for ``/v1/completions`` and scoring; chat requests need none. The API key is read from the
    environment variable ``api_key_env`` when the processor is built, never stored in configs.
    """

    base_url: str
    model: str
    tokenizer: str | None = None
    endpoint: Literal["chat", "completions"] = "chat"
    api_key_env: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    qps: PositiveInt | None = None
    concurrency: PositiveInt = 1
    batch_size: PositiveInt = 16
    max_retries: int = 2


class HttpOptions(HttpConfig):
    """The ``http:`` block of a spec: :class:`HttpConfig` whose ``model`` (the name sent to the
    server) and ``tokenizer`` (renders prompts locally) default to the spec's ``name``."""

    model: str | None = None


# Fields of the backend blocks that change speed or transport, never what the model computes:
# a label manifest leaves them out of its hash (raglign.pipeline.label.config).
BACKEND_RUNTIME_FIELDS = {
    "vllm": {"batch_size", "concurrency", "accelerator_type"},
    "http": {"api_key_env", "headers", "qps", "concurrency", "batch_size", "max_retries"},
}


class GeneratorSpec(StrictModel):
    """One generator: ``name`` on ``backend``.

    ``dtype``: the weights' precision; ``auto`` is bf16 on GPUs that support it and on CPUs
    with native bf16, fp32 on other CPUs (transformers backend), the model's own dtype (vLLM).
    ``device``: where the transformers backend loads the model (``auto``: CUDA when available);
    vLLM places its engines through Ray and an HTTP server loads its own model, so neither
    takes a device. ``vllm:`` / ``http:``: the chosen backend's settings (``http`` needs at
    least ``base_url``).
    """

    name: str = Field(min_length=1, description="packaged short name, local dir or hub id")
    backend: Backend = "transformers"
    dtype: Dtype = "auto"
    device: str = "auto"
    vllm: VLLMOptions = VLLMOptions()
    http: HttpOptions | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        # `generator: smollm2-135m` is `generator: {name: smollm2-135m}`.
        return {"name": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _check(self) -> GeneratorSpec:
        if self.backend == "http" and self.http is None:
            raise ValueError("backend 'http' needs an http: block with at least base_url "
                             "(an OpenAI-compatible server ending in /v1)")
        if self.backend != "transformers" and self.device != "auto":
            raise ValueError(f"device applies to the transformers backend only (backend "
                             f"{self.backend!r} places the model itself); leave it auto")
        if self.backend == "http" and self.dtype != "auto":
            raise ValueError("dtype does not apply to backend 'http': the server loads its own "
                             "model; leave it auto")
        return self

    def vllm_config(self) -> VLLMConfig:
        """The ``vllm:`` block as a :class:`VLLMConfig` (``model`` defaults to ``name``, the
        dtype is the spec's)."""
        opts = self.vllm.model_dump()
        return VLLMConfig(**{**opts, "model": opts["model"] or self.name, "dtype": self.dtype})

    def http_config(self) -> HttpConfig:
        """The ``http:`` block as an :class:`HttpConfig` (``model`` and ``tokenizer`` default to
        ``name``)."""
        if self.http is None:
            raise ConfigError("generator.http: missing (backend 'http' needs base_url)")
        opts = self.http.model_dump()
        return HttpConfig(**{**opts, "model": opts["model"] or self.name,
                             "tokenizer": opts["tokenizer"] or self.name})

    def require_transformers(self, why: str) -> None:
        """Refuse the vLLM and HTTP backends where a job needs the model's weights in this
        process (gradients, attention, the document engine); ``why`` says what for."""
        if self.backend != "transformers":
            raise ValueError(f"backend {self.backend!r} cannot run here: {why}; use backend "
                             "transformers")

    def fingerprint(self) -> dict[str, Any]:
        """What determines the model's outputs, in the flat form label manifests have recorded
        since before the spec existed (``generator`` = the name, ``backend``, ``dtype``,
        ``device`` and, for the chosen backend only, its block without the fields that change
        speed): an output labelled before keeps its manifest hash."""
        out: dict[str, Any] = {"generator": self.name, "backend": self.backend,
                               "dtype": self.dtype, "device": self.device}
        if self.backend == "vllm":
            block = self.vllm.model_dump(mode="json", exclude=BACKEND_RUNTIME_FIELDS["vllm"])
            out["vllm"] = {**block, "dtype": self.dtype}
        elif self.backend == "http":
            out["http"] = self.http.model_dump(mode="json", exclude=BACKEND_RUNTIME_FIELDS["http"])
        return out


def moved_keys(data: Any, keys: tuple[str, ...], block: str = "generator") -> None:
    """For a config's ``mode="before"`` validator: raise a ``ValueError`` (reported with the
    config's path) naming the new place of generator settings that a recipe still gives beside
    ``block`` (``dtype: float32`` where ``generator: {name: …, dtype: float32}`` is meant),
    rather than pydantic's bare "unknown key"."""
    if not isinstance(data, dict):
        return
    old = [k for k in keys if k in data]
    if old:
        name = data.get(block)
        name = name.get("name", "…") if isinstance(name, dict) else name or "…"
        inner = ", ".join(f"{k}: {data[k]}" for k in old)
        raise ValueError(f"{', '.join(old)}: generator settings are keys of the {block} "
                         f"block now: write {block}: {{name: {name}, {inner}}}")


def build_generator(spec: GeneratorSpec, *, in_process: bool = False,
                    **kwargs: Any) -> Generator:
    """The :class:`~raglign.models.generator.Generator` of ``spec``: a
    :class:`~raglign.models.generator.TransformersGenerator` (``kwargs`` go to its
    constructor: batch and token budgets), or a ``ray.data.llm``-backed
    :class:`~raglign.models.processor_generator.VLLMGenerator` /
    :class:`~raglign.models.processor_generator.HttpGenerator` (``in_process``: its
    processor's stages run in this process, the engine kept between calls). Imported here, on
    call, so that validating a config that embeds a spec loads neither torch nor
    transformers."""
    if spec.backend == "transformers":
        from raglign.models.generator import TransformersGenerator

        return TransformersGenerator.from_name(spec.name, dtype=spec.dtype, device=spec.device,
                                               **kwargs)
    if kwargs:
        raise ConfigError(f"{sorted(kwargs)}: options of the transformers backend, not of "
                          f"{spec.backend!r}")
    from raglign.models.processor_generator import HttpGenerator, VLLMGenerator

    if spec.backend == "vllm":
        return VLLMGenerator(spec.vllm_config(), in_process)
    return HttpGenerator(spec.http_config(), in_process)
