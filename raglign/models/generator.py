"""Generator backends: free generation and answer log-likelihood scoring with one interface.

Every labelling signal talks to a :class:`Generator`: ``generate`` for rationales and answers,
``score`` for ``log p(answer | prompt)``. A prompt is either a rendered string
(``raglign.prompts.rationale_prompt`` / ``qa_prompt``) or a :class:`~raglign.prompts.ParallelPrompt`
(``parallel_prompt``), and every (prompt, answer) pair is tokenised as
``encode_prompt(prompt) + encode_piece(answer_continuation(answer))``. Pass QA prompts as
``ParallelPrompt`` when scores must equal the document engine's and the vLLM backend's: those
tokenise prefix, documents and suffix piece by piece, which can differ from tokenising the joined
string at the piece boundaries (Gemma merges newlines across them).

Requests are sorted by token length (little padding), cut into micro-batches under a row count
and a token budget, and returned in input order; batching keeps a GPU busy. On a CPU a one-pair
forward already runs near the matmul rate, so what scoring gains there is the FLOPs it skips
(docs/benchmarks.md, "Scoring throughput": 1.32x a naive loop on 32 QA pairs, FLOP-bound 1.39x):
scoring left-pads with explicit position ids, so every answer ends at the last position and the
model's own head (``logits_to_keep``, which keeps soft-capping and logit scaling correct) runs
only over the answer span -- a Gemma-3 262k-vocabulary ``[batch, seq, vocab]`` tensor is never
built -- and the prompt prefix a micro-batch shares is encoded once.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache, GenerationConfig, StoppingCriteria, StoppingCriteriaList

from raglign.batching import length_batches
from raglign.batching import token_budget as default_token_budget
from raglign.errors import ConfigError, DataError, did_you_mean
from raglign.kv_cache import cache_kwarg
from raglign.masks import LAYER_TYPES, additive_mask, sliding_window
from raglign.prompts import ParallelPrompt, answer_continuation, encode_piece, encode_prompt

Prompt = str | ParallelPrompt

# Below this many shared tokens a separate prefix forward costs about what it saves (one more
# pass through every layer against a few tokens per row).
MIN_SHARED_PREFIX = 16

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class GenerationParams:
    """Sampling settings of one ``generate`` call. ``temperature == 0`` is greedy decoding;
    otherwise plain temperature + nucleus sampling (no top-k), as in vLLM and OpenAI APIs.
    ``seed`` makes sampling reproducible for the same prompts and batch settings."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens: must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ConfigError(f"temperature: must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p: must be in (0, 1], got {self.top_p}")
        # Accept any iterable of strings (a list from YAML) but store a hashable tuple.
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        if any(not s for s in stop):
            raise ConfigError("stop: stop strings must be non-empty")
        object.__setattr__(self, "stop", stop)


@dataclass(frozen=True)
class ScoreResult:
    """``log p(answer | prompt)`` of one pair. ``logprob`` is the sum over answer tokens,
    ``mean_logprob`` the length-normalised value; ``value`` is whichever the call asked for
    (``normalize``). ``token_logprobs`` is filled only when ``per_token=True``."""

    logprob: float
    num_tokens: int
    normalized: bool = False
    token_logprobs: tuple[float, ...] | None = None

    @classmethod
    def from_token_logprobs(cls, values: Sequence[float], normalize: bool,
                            per_token: bool) -> ScoreResult:
        """The result for an answer whose tokens have log-probs ``values``."""
        values = [float(v) for v in values]
        return cls(math.fsum(values), len(values), normalize, tuple(values) if per_token else None)

    @property
    def mean_logprob(self) -> float:
        return self.logprob / self.num_tokens

    @property
    def value(self) -> float:
        return self.mean_logprob if self.normalized else self.logprob


class Generator(ABC):
    """What signals need from an LLM; implemented by the transformers, vLLM and HTTP backends."""

    @abstractmethod
    def generate(self, prompts: Sequence[Prompt], params: GenerationParams | None = None,
                 **overrides) -> list[str]:
        """Completions of rendered prompts, in input order, prompt stripped, cut at EOS and stop
        strings. ``overrides`` are :class:`GenerationParams` fields (``max_new_tokens=16``)."""

    @abstractmethod
    def score(self, prompts: Sequence[Prompt], answers: Sequence[str], *, normalize: bool = False,
              per_token: bool = False) -> list[ScoreResult]:
        """``log p(answer_i | prompt_i)`` for each pair, in input order."""


def check_pair_counts(prompts: Sequence[Prompt], answers: Sequence[str]) -> None:
    """``score`` takes one answer per prompt."""
    if len(prompts) != len(answers):
        raise DataError("score inputs", None, "answers",
                        f"{len(prompts)} prompts but {len(answers)} answers")


def resolve_params(params: GenerationParams | None, overrides: dict) -> GenerationParams:
    """``params`` (or the defaults) with keyword overrides applied; unknown names are errors."""
    base = params or GenerationParams()
    if not overrides:
        return base
    known = {f.name for f in dataclasses.fields(GenerationParams)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        hints = "".join(did_you_mean(u, known) for u in unknown)
        raise ConfigError(f"unknown generation parameter(s) {unknown}{hints}; known: "
                          f"{sorted(known)}")
    return dataclasses.replace(base, **overrides)


def pick_device(device: str = "auto") -> torch.device:
    """``auto`` is CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX-512 BF16 or AMX tiles).

    Without those instructions PyTorch emulates bf16 matmuls, and they are far slower than
    fp32: on an AVX2-only AMD EPYC a 200 x 576 x 1536 matmul ran at 7.7 GFLOP/s in bf16 against
    53.3 in fp32, SmolLM2's prefill at 0.15x, and bf16 labelling about 5x slower
    (docs/benchmarks.md, "CPU dtype"). On an AVX-512-BF16 EPYC bf16 was 1.7x *faster*.
    """
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def pick_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on CUDA GPUs that support it (fp16 on older ones) and on CPUs with native
    bf16 (:func:`cpu_has_fast_bf16`), fp32 on other CPUs."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    if dtype not in DTYPES:
        raise ConfigError(f"dtype: expected 'auto' or one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int, device: torch.device):
    """Left-padded ``input_ids``, ``attention_mask`` and ``position_ids`` (real tokens start at
    position 0, so a padded row computes what it would alone)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        if s:
            ids[row, width - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[row, width - len(s):] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), pos.to(device)


class _StopOnStrings(StoppingCriteria):
    """Per-row stopping criterion: a row is done once its generated text contains a stop
    string. Decodes only the generated part (prompts may contain the stop string)."""

    def __init__(self, tokenizer, stops: tuple[str, ...], prompt_len: int):
        self.tokenizer, self.stops, self.prompt_len = tokenizer, stops, prompt_len

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_len:],
                                            skip_special_tokens=True)
        done = [any(s in t for s in self.stops) for t in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def cut_at_stop(text: str, stops: tuple[str, ...]) -> str:
    """``text`` up to (not including) the earliest stop string."""
    cut = min((p for p in (text.find(s) for s in stops) if p >= 0), default=len(text))
    return text[:cut]


class TransformersGenerator(Generator):
    """A causal LM from transformers, batched for generation and scoring.

    Wraps an already-built ``(model, tokenizer)`` (put into eval mode, gradients off) or loads
    one with :meth:`from_name`. ``batch_size`` caps rows per forward; ``token_budget`` caps
    ``rows * padded_length`` (prompt plus new tokens) of a generation batch and so activation and
    KV memory; ``score_token_budget`` the same for scoring (None: the device's default, 1024 on
    CPU, 16384 on CUDA: a scoring forward is one prefill, and on a CPU smaller pieces pad less
    and run faster -- 32 QA pairs scored 1.17x faster at 1024 than at 8192, docs/benchmarks.md,
    while decoding steps want many rows); ``logits_budget`` caps the answer-span logits
    (``rows * span * vocab`` elements).
    ``share_prefix`` encodes a micro-batch's common prompt prefix once when scoring (every QA
    prompt starts with the same system instruction; aliases of one answer share their whole
    prompt).
    """

    def __init__(self, model, tokenizer, *, batch_size: int = 32, token_budget: int = 8192,
                 score_token_budget: int | None = None, logits_budget: int = 2**26,
                 share_prefix: bool = True):
        budgets = (batch_size, token_budget, logits_budget,
                   1 if score_token_budget is None else score_token_budget)
        if min(budgets) < 1:
            raise ConfigError("batch_size, token_budget, score_token_budget and logits_budget "
                              "must be >= 1")
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.batch_size, self.token_budget, self.logits_budget = (batch_size, token_budget,
                                                                  logits_budget)
        self.score_token_budget = default_token_budget(self.device, score_token_budget)
        self.share_prefix = share_prefix and _explicit_masks_fit(model)
        self._window = sliding_window(model) if self.share_prefix else None
        self.vocab_size = model.get_output_embeddings().weight.shape[0]
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (tokenizer.eos_token_id or 0)
        eos = model.generation_config.eos_token_id
        if eos is None:
            eos = tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        self.max_positions = getattr(model.config, "max_position_embeddings", None)

    @classmethod
    def from_name(cls, name: str, *, dtype: str | torch.dtype = "auto", device: str = "auto",
                  attn_implementation: str | None = None, **kwargs) -> TransformersGenerator:
        """Load a hub id, a local directory, a ``.gguf`` file or a packaged short name
        (``smollm2-135m``, ``gemma3-270m``) through ``resolve_model``; ``kwargs`` go to the
        constructor (``batch_size``, ``token_budget``, ``score_token_budget``,
        ``logits_budget``, ``share_prefix``)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from raglign.models.registry import resolve_model

        dev = pick_device(device)
        path = resolve_model(name)
        extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
        model = AutoModelForCausalLM.from_pretrained(path, dtype=pick_dtype(dtype, dev), **extra)
        tokenizer = AutoTokenizer.from_pretrained(path)
        return cls(model.to(dev), tokenizer, **kwargs)

    # ------------------------------------------------------------------ generation

    def generate(self, prompts: Sequence[Prompt], params: GenerationParams | None = None,
                 **overrides) -> list[str]:
        p = resolve_params(params, overrides)
        encoded = [encode_prompt(self.tokenizer, x) for x in prompts]
        for i, ids in enumerate(encoded):
            if not ids:
                raise DataError("prompts", i, "prompt", "prompt tokenises to no tokens")
        lengths = [len(e) + p.max_new_tokens for e in encoded]
        outputs: list[str] = [""] * len(encoded)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.inference_mode():
            # Seeding inside fork_rng keeps the caller's global RNG state untouched.
            if p.seed is not None:
                torch.manual_seed(p.seed)
            for batch in length_batches(lengths, self.batch_size, self.token_budget):
                texts = self._generate_batch([encoded[i] for i in batch], p)
                for i, text in zip(batch, texts):
                    outputs[i] = text
        return outputs

    def _generate_batch(self, seqs: list[list[int]], p: GenerationParams) -> list[str]:
        ids, mask, _ = left_pad(seqs, self.pad_id, self.device)
        sampling = (dict(do_sample=True, temperature=p.temperature, top_p=p.top_p, top_k=0)
                    if p.temperature > 0 else dict(do_sample=False))
        config = GenerationConfig(max_new_tokens=p.max_new_tokens,
                                  eos_token_id=sorted(self.eos_ids), pad_token_id=self.pad_id,
                                  **sampling)
        stopping = (StoppingCriteriaList([_StopOnStrings(self.tokenizer, p.stop, ids.shape[1])])
                    if p.stop else None)
        out = self.model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                                  stopping_criteria=stopping)
        texts = []
        for row in out[:, ids.shape[1]:].tolist():
            end = next((k for k, t in enumerate(row) if t in self.eos_ids), len(row))
            text = self.tokenizer.decode(row[:end], skip_special_tokens=True)
            texts.append(cut_at_stop(text, p.stop))
        return texts

    # ------------------------------------------------------------------ scoring

    def encode_pair(self, prompt: Prompt, answer: str) -> tuple[list[int], list[int]]:
        """Prompt and answer token ids, tokenised piecewise as the document engine does."""
        tok = self.tokenizer
        return encode_prompt(tok, prompt), encode_piece(tok, answer_continuation(tok, answer))

    def score(self, prompts: Sequence[Prompt], answers: Sequence[str], *, normalize: bool = False,
              per_token: bool = False) -> list[ScoreResult]:
        check_pair_counts(prompts, answers)
        pairs = [self.encode_pair(p, a) for p, a in zip(prompts, answers)]
        for i, (p_ids, a_ids) in enumerate(pairs):
            if not p_ids:
                raise DataError("score inputs", i, "prompt", "prompt tokenises to no tokens")
            if not a_ids:
                raise DataError("score inputs", i, "answer", "answer tokenises to no tokens")
            if self.max_positions and len(p_ids) + len(a_ids) > self.max_positions:
                raise DataError("score inputs", i, "prompt",
                                f"{len(p_ids) + len(a_ids)} tokens exceed the model's "
                                f"{self.max_positions} positions")
        return self.score_ids(pairs, normalize=normalize, per_token=per_token)

    def score_ids(self, pairs: Sequence[tuple[list[int], list[int]]], *, normalize: bool = False,
                  per_token: bool = False) -> list[ScoreResult]:
        """:meth:`score` on pre-tokenised ``(prompt_ids, answer_ids)`` pairs."""
        lengths = [len(p) + len(a) for p, a in pairs]

        def logits_fit(batch: list[int]) -> bool:
            span = max(len(pairs[i][1]) for i in batch)
            return len(batch) * span * self.vocab_size <= self.logits_budget

        results: list[ScoreResult | None] = [None] * len(pairs)
        with torch.inference_mode():
            for batch in length_batches(lengths, self.batch_size, self.score_token_budget,
                                        logits_fit):
                token_lps = self._score_batch([pairs[i] for i in batch])
                for i, lps in zip(batch, token_lps):
                    results[i] = ScoreResult.from_token_logprobs(lps, normalize, per_token)
        return results

    def _score_batch(self, pairs: list[tuple[list[int], list[int]]]) -> list[list[float]]:
        """Per-token log-probs of each answer. Left padding puts every answer's last token at
        the last position; the logits kept are the ``span`` positions before it, right-aligned
        per row: row ``b``'s answer token ``j`` is predicted at column ``span - len_b + j``.

        The prompts' common prefix (:meth:`shared_prefix_len`) is encoded once and its
        keys/values serve every row: rows are ``prefix | padding | rest``, the padding masked
        out and the rest's positions continuing from the prefix, so each row computes what it
        would alone (:meth:`_shared_prefix_mask`)."""
        span = max(len(a) for _, a in pairs)
        shared = self.shared_prefix_len([p for p, _ in pairs])
        ids, mask, pos = left_pad([p[shared:] + a for p, a in pairs], self.pad_id, self.device)
        extra = {"use_cache": False}
        if shared:
            pos = pos + shared
            extra = {**cache_kwarg(self.model, self._prefix_cache(pairs[0][0][:shared],
                                                                  len(pairs))),
                     "use_cache": True}
            mask = self._shared_prefix_mask(mask.bool(), pos, shared)
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=pos,
                            logits_to_keep=span + 1, **extra).logits[:, :-1].float()
        targets = torch.zeros((len(pairs), span), dtype=torch.long)
        for row, (_, a) in enumerate(pairs):
            targets[row, span - len(a):] = torch.tensor(a, dtype=torch.long)
        targets = targets.to(logits.device)
        lp = logits.gather(-1, targets[..., None])[..., 0] - logits.logsumexp(-1)
        lp = lp.cpu().tolist()
        return [row[span - len(a):] for row, (_, a) in zip(lp, pairs)]

    def shared_prefix_len(self, prompts: Sequence[Sequence[int]]) -> int:
        """Tokens at the start of every prompt of a micro-batch that are encoded once for all
        of them: their longest common prefix, less one token (the last prompt token's logit
        predicts the answer, so every row keeps it), or 0 when sharing is off, the batch has
        one row, or fewer than ``MIN_SHARED_PREFIX`` tokens are shared."""
        if not self.share_prefix or len(prompts) < 2:
            return 0
        first, n = prompts[0], min(len(p) for p in prompts) - 1
        for p in prompts[1:]:
            n = next((j for j in range(n) if p[j] != first[j]), n)
        return n if n >= MIN_SHARED_PREFIX else 0

    def _prefix_cache(self, ids: list[int], rows: int) -> DynamicCache:
        """Keys/values of ``ids`` encoded once by the decoder (no head), viewed as ``rows``
        batch rows. A config-less cache, as in the document engine: a config would make
        Gemma's sliding layers truncate it. The prefix pass itself has no padding, so the
        model's own masks (window by index) are right there."""
        cache, decoder = DynamicCache(), self.model.get_decoder()
        decoder(input_ids=torch.tensor([ids], device=self.device), **cache_kwarg(decoder, cache),
                use_cache=True)
        return DynamicCache(ddp_cache_data=[
            (layer.keys.expand(rows, -1, -1, -1), layer.values.expand(rows, -1, -1, -1))
            for layer in cache.layers])

    def _shared_prefix_mask(self, valid: torch.Tensor, q_pos: torch.Tensor, shared: int):
        """Explicit attention masks for ``prefix | padding | rest`` rows (``valid`` marks the
        real tokens of the ``[rows, T]`` rest, ``q_pos`` their positions). transformers' own
        masks apply a sliding window by index, which padding in the middle of a row would
        shift; these apply it by position. A padding query sees the prefix and itself (its
        output is discarded, but a row with no visible key would be NaN)."""
        rows, T = valid.shape
        dev = valid.device
        causal = torch.ones(T, T, dtype=torch.bool, device=dev).tril()
        rest = (valid[:, None, :] & causal) | torch.eye(T, dtype=torch.bool, device=dev)
        allowed = torch.cat([rest.new_ones(rows, T, shared), rest], dim=2)
        dtype = self.model.dtype
        full = additive_mask(allowed, dtype)
        if self._window is None:
            return full
        k_pos = torch.cat([torch.arange(shared, device=dev).expand(rows, -1), q_pos], dim=1)
        return {"full_attention": full,
                "sliding_attention": additive_mask(allowed, dtype, None, q_pos, k_pos,
                                                   self._window)}


def _explicit_masks_fit(model) -> bool:
    """Whether :meth:`TransformersGenerator._shared_prefix_mask` can describe the model's
    attention: only full and (typed) sliding-window layers. A model with a window but no layer
    types (Mistral-style) or other layer types is scored without prefix sharing."""
    cfg = model.config.get_text_config(decoder=True)
    types = set(getattr(cfg, "layer_types", None) or [])
    if not types:
        return getattr(cfg, "sliding_window", None) is None
    return types <= LAYER_TYPES
