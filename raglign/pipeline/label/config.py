"""``LabelConfig``: a label recipe. The signals' part (``context`` and each signal's options
block) is :class:`~raglign.signals.settings.SignalSettings`, defined beside the signals; this
module adds what the job needs (input and output, models, backend, actor pool) and checks the
chosen signals against where each one declares it can run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, PositiveInt, field_validator, model_validator

from raglign.config import JobConfig, StrictModel
from raglign.errors import ConfigError
from raglign.models.http_backend import HttpConfig
from raglign.models.vllm_backend import VLLMConfig
from raglign.signals import SIGNALS
from raglign.signals.settings import SignalSettings


class LabelVLLMOptions(VLLMConfig):
    """``vllm:`` — :class:`~raglign.models.vllm_backend.VLLMConfig`; ``model`` defaults to the
    job's ``generator``."""

    model: str | None = None


class LabelHttpOptions(HttpConfig):
    """``http:`` — :class:`~raglign.models.http_backend.HttpConfig`; ``model`` (the name sent
    to the server) and ``tokenizer`` (renders prompts locally) default to the job's
    ``generator``."""

    model: str | None = None


# Fields of the backend blocks that change speed or transport, never the labels.
BACKEND_RUNTIME_FIELDS = {
    "vllm": {"batch_size", "concurrency", "accelerator_type"},
    "http": {"api_key_env", "headers", "qps", "concurrency", "batch_size", "max_retries"},
}


class SignalEvalOptions(StrictModel):
    """The signal-evaluation table written after labelling (rows with gold documents only)."""

    enabled: bool = True
    ks: list[PositiveInt] = [1, 2, 5, 10]


# Fields that change how fast a job runs, never what it writes: left out of the manifest hash.
RUNTIME_FIELDS = ("ray", "input", "output", "actors", "batch_size", "cpus_per_actor",
                  "gpus_per_actor", "torch_threads", "eval")


class LabelConfig(SignalSettings, JobConfig):
    """``raglign label``: which signals, which models, where, and how wide to run."""

    job: Literal["label"] = "label"
    input: str
    output: str
    signals: list[str] = Field(min_length=1)
    generator: str
    encoder: str = "minilm-l6"
    backend: Literal["transformers", "vllm", "http"] = "transformers"
    vllm: LabelVLLMOptions = LabelVLLMOptions()
    http: LabelHttpOptions | None = None
    dtype: str = "auto"
    device: str = "auto"
    answer_alias: Literal["best", "first"] = "best"
    eval: SignalEvalOptions = SignalEvalOptions()
    limit: PositiveInt | None = None
    # Rows per output partition (the unit of resumption); None: two shards per actor, at most
    # 256, or the size an existing output was planned with (raglign.pipeline.shards).
    shard_rows: PositiveInt | None = None
    actors: PositiveInt = 1
    batch_size: PositiveInt = 8
    cpus_per_actor: float = Field(1.0, gt=0)
    gpus_per_actor: float = Field(0.0, ge=0)
    torch_threads: PositiveInt | None = None

    @field_validator("signals")
    @classmethod
    def _known_signals(cls, v: list[str]) -> list[str]:
        unknown = [s for s in v if s not in SIGNALS]
        if unknown:
            raise ValueError(f"unknown signal(s) {unknown}; known: {', '.join(SIGNALS)}")
        if len(set(v)) != len(v):
            raise ValueError(f"signals listed twice: {v}")
        return v

    @model_validator(mode="after")
    def _signals_fit_backend(self):
        if self.backend == "http" and self.http is None:
            raise ValueError("backend 'http' needs an http: block with at least base_url "
                             "(an OpenAI-compatible server ending in /v1)")
        for name in self.signals:
            why = SIGNALS[name].unsupported(self.backend, self.context)
            if why:
                raise ValueError(why)
        return self

    def fingerprint(self) -> dict[str, Any]:
        """Everything that determines the labels (for the output manifest)."""
        exclude: dict[str, Any] = {f: True for f in RUNTIME_FIELDS}
        for block, runtime in BACKEND_RUNTIME_FIELDS.items():
            exclude[block] = runtime if block == self.backend else True
        return self.model_dump(mode="json", exclude=exclude)


def load_label_config(path: str | None = None, overrides: Mapping[str, Any] | None = None,
                      **fields: Any) -> LabelConfig:
    """A validated :class:`LabelConfig` from a YAML recipe (plus dotted overrides) or fields."""
    from raglign.config import load_job, validate

    if path is not None:
        cfg = load_job(path, dict(overrides or {}))
        if not isinstance(cfg, LabelConfig):
            raise ConfigError(f"{path}: job {cfg.job!r} is not a label job")
        return cfg
    return validate(LabelConfig, {"job": "label", **fields}, "command line")
