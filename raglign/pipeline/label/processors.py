"""The ``ray.data.llm`` processors of the label job: every request kind through the backend's
own preprocess/postprocess (:mod:`raglign.models.vllm_backend`,
:mod:`raglign.models.http_backend`, which render every task with :mod:`raglign.prompts`), with
each generation row's own sampling settings in place of the processor's preset.

One processor serves every request kind on vLLM (per-row ``sampling_params``), so the engine
is loaded once per job. HTTP needs ``/v1/completions`` for scoring, so with the ``chat``
endpoint scoring and generation go through two processors over the two halves of the requests.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from raglign.models import http_backend as hb
from raglign.models import vllm_backend as vb
from raglign.models.generator import GenerationParams
from raglign.models.vllm_backend import ProcessorSpec
from raglign.pipeline.label.request_rows import KEY, KIND, PARAMS, TOTAL
from raglign.pipeline.shards import SHARD_COL
from raglign.prompts import TASKS

# Result columns written by the processor's postprocess.
LOGPROB, TEXT = "_raglign_logprob", "_raglign_text"
SAMPLING_KEYS = ("max_tokens", "temperature", "top_p", "seed", "stop")
# Every row states every sampling key: Ray Data stores ``sampling_params`` as one Arrow struct
# per block, filling keys a row lacks with None, and vLLM's ``SamplingParams(**params)`` rejects
# None for ``top_p`` or ``detokenize``. Unused keys therefore carry vLLM's own defaults.
VLLM_SAMPLING_DEFAULTS = {"max_tokens": 16, "temperature": 1.0, "top_p": 1.0, "seed": None,
                          "prompt_logprobs": None, "detokenize": True}


def generation_params(row: Mapping[str, Any]) -> GenerationParams:
    """The request's own sampling settings (the per-row seed of sampled tasks included)."""
    p = row[PARAMS]
    return GenerationParams(max_new_tokens=int(p["max_new_tokens"]),
                            temperature=float(p["temperature"]), top_p=float(p["top_p"]),
                            seed=None if p["seed"] is None else int(p["seed"]))


def _routed(specs: Mapping[str, ProcessorSpec],
            set_params: Callable[[dict, GenerationParams | None], dict]) -> ProcessorSpec:
    """One processor over several request kinds: each row goes through the backend's own
    preprocess/postprocess for its kind; ``set_params`` then gives generation rows their own
    sampling parameters (``None`` for scoring rows); the output keeps only what the driver
    gathers."""
    config = next(iter(specs.values())).config

    def preprocess(row: dict) -> dict:
        out = specs[row[KIND]].preprocess(row)
        return set_params(out, None if row[KIND] == "score" else generation_params(row))

    def postprocess(row: dict) -> dict:
        kind = row[KIND]
        out = specs[kind].postprocess(row)
        return {SHARD_COL: row[SHARD_COL], KEY: row[KEY], TOTAL: row[TOTAL],
                LOGPROB: float(out["answer_logprob"]) if kind == "score" else None,
                TEXT: None if kind == "score" else out[TEXT]}

    return ProcessorSpec(config, preprocess, postprocess)


def vllm_spec(cfg: vb.VLLMConfig) -> ProcessorSpec:
    """Every request kind through one vLLM engine; prompts are raglign's own token ids."""
    gen = {t: vb.generation_spec(cfg, t, output_column=TEXT) for t in TASKS}
    return _routed({"score": vb.scoring_spec(cfg), **gen}, _vllm_params)


def _vllm_params(out: dict, params: GenerationParams | None) -> dict:
    given = out["sampling_params"] if params is None else vb.sampling_params(params)
    return {**out, "sampling_params": {**VLLM_SAMPLING_DEFAULTS, **given}}


def _http_params(out: dict, params: GenerationParams | None) -> dict:
    if params is None:
        return out
    body = {k: v for k, v in out["payload"].items() if k not in SAMPLING_KEYS}
    return {**out, "payload": {**body, **vb.sampling_params(params)}}


def http_specs(cfg: hb.HttpConfig) -> dict[str, ProcessorSpec]:
    """``{"score": …, "generate": …}``: scoring always through ``/v1/completions``, generation
    (every task, rendered as the HTTP backend renders it) through ``cfg.endpoint``."""
    gen = {t: hb.generation_spec(cfg, t, output_column=TEXT) for t in TASKS}
    return {"score": _routed({"score": hb.scoring_spec(cfg)}, _http_params),
            "generate": _routed(gen, _http_params)}
