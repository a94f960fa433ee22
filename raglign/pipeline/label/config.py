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
from raglign.models.generator_spec import GeneratorSpec, moved_keys
from raglign.signals import SIGNALS
from raglign.signals.settings import SignalSettings


class SignalEvalOptions(StrictModel):
    """The signal-evaluation table written after labelling (rows with gold documents only)."""

    enabled: bool = True
    ks: list[PositiveInt] = [1, 2, 5, 10]


# Fields that change how fast a job runs, never what it writes: left out of the manifest hash
# (and those of the generator's backend block: GeneratorSpec.fingerprint).
RUNTIME_FIELDS = ("ray", "input", "output", "actors", "batch_size", "cpus_per_actor",
                  "gpus_per_actor", "torch_threads", "eval")


class LabelConfig(SignalSettings, JobConfig):
    """``raglign label``: which signals, which models, where, and how wide to run."""

    job: Literal["label"] = "label"
    input: str
    output: str
    signals: list[str] = Field(min_length=1)
    generator: GeneratorSpec
    encoder: str = "minilm-l6"  # on the generator's device (its device: field)
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

    @model_validator(mode="before")
    @classmethod
    def _moved_to_generator(cls, data: Any) -> Any:
        moved_keys(data, ("backend", "vllm", "http", "dtype", "device"))
        return data

    @model_validator(mode="after")
    def _signals_fit_backend(self):
        for name in self.signals:
            why = SIGNALS[name].unsupported(self.generator.backend, self.context)
            if why:
                raise ValueError(why)
        return self

    def fingerprint(self) -> dict[str, Any]:
        """Everything that determines the labels (for the output manifest). The generator
        enters in the flat form manifests recorded before it was one block
        (:meth:`~raglign.models.generator_spec.GeneratorSpec.fingerprint`), so an output
        labelled then is still resumed by the same recipe."""
        exclude = {f: True for f in (*RUNTIME_FIELDS, "generator")}
        return {**self.model_dump(mode="json", exclude=exclude), **self.generator.fingerprint()}


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
