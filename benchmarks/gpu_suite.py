"""GPU suite: raglign's GPU numbers in one command, with no network and no downloaded weights.

    PYTHONPATH=. python benchmarks/gpu_suite.py --out $OUT/gpu_suite      # one H100 / H200
    PYTHONPATH=. python benchmarks/gpu_suite.py --tiny --out /tmp/gs      # CPU smoke, < 2 min

(``benchmarks/run_gpu_suite.sh`` is the first line.) Every model is built from a config of the
real model's shape with random weights, so nothing is downloaded; the weights' values do not
change the work a forward does. Text is random words of a tokenizer built in code
(:func:`synthetic_tokenizer`: one token per whitespace-separated word, so document lengths are
exact), because the document engine and the cross-encoder take text and a tokenizer and the
packaged tokenizers are not on a lent machine. Writes ``gpu_suite.json`` and ``gpu_suite.md``.

Parts, each through raglign's own code:

* **peak** -- the bf16 matmul rate (``n x n @ n x n``, timed after a warm-up): the denominator of
  every MFU below.
* **(a) engine** -- :class:`raglign.engine.DocumentEngine` on a Llama-3.1-8B-shaped model in
  bf16: ``prepare_many`` over the queries' 20 documents, then ``single_document`` (20 one-hot
  masks) and ``leave_one_out`` (20 masks) per query. ``single`` = prefill + single passes,
  ``loo`` = prefill + LOO passes; tokens/s counts every token through the model, MFU counts
  model FLOPs (:func:`llama_forward_flops`) per second over the peak. ``loo_over_single`` is
  the ratio of the two times.
* **(b) reranker** -- a bge-reranker-base-shaped (XLM-R base) :class:`CrossEncoderReranker`
  trained with InfoNCE at length 512, the steps of ``raglign train``'s loop: the DDP-facing
  ``scorer_class`` wrapper, its fused AdamW (``build_optimizer``), bf16 autocast on fp32
  weights (the trainer's ``bf16: true``), clipping at 1.0. Pairs/s and MFU of 6 x params x
  tokens + attention.
* **(c) grerank** -- one G-Rerank training step, the body of ``GumbelLoss.__call__``
  (``training/losses/gumbel.py``): prefill without grad, score the candidates with the (b)
  reranker, :func:`raglign.objectives.gumbel.gumbel_lm_loss` with n = 20, k = 5, backward into
  the reranker, optimizer step; for 1B- and 8B-shaped generators: seconds per step and peak
  memory. (``GumbelLoss`` itself builds its generator from the pydantic config, which a lent
  machine does not have; the suite calls the same pieces in the same order.)
* **(d) label** -- ``raglign label`` (``loo_logprob``) through Ray Data with one GPU actor
  (:func:`raglign.pipeline.label.run_label`, end to end) vs the plain loop
  (:func:`~raglign.pipeline.label.label_in_process`), 1B-shaped generator saved to a temp dir.
  Runs only where Ray and the job's dependencies import; otherwise the reason is recorded.
* **(e) vllm** -- the vLLM scoring processor (:func:`raglign.models.vllm_backend.scoring_processor`)
  on the same 1B-shaped model: prompt tokens scored per second. Runs only where vLLM imports.

Model FLOPs of one decoder forward (:func:`llama_forward_flops`): 2 x (the layers' matmul
parameters) per token + 2 x vocab x hidden per row whose logits are computed (the engine keeps
only the answer's) + 4 x layers x heads x head_dim per (query, key) pair of the forward's
attention mask (QK^T and AV over every key the explicit mask spans, which is what the kernel
computes). ``mfu_matmul_only`` leaves the attention term out.

Time budget on one H200 (assuming a ~700 TFLOP/s bf16 matmul peak, ~45% of it reached): 8B forward
~15 GFLOP/token. (a) 3 repeats x (16 queries x 20 x 128 prefill tokens + 2 x 16 x ~500 pass
tokens) = ~0.16 M tokens = 2.4 PFLOP, ~10 s + model init. (b) 11 steps x 64 pairs x 512 tokens
x 6 x 86 M = 0.2 PFLOP, ~1 s (64 pairs keep the activations near 20 GB). (c) 4 steps x (80 prefill documents + 80 reranker pairs) per
generator, ~10 s. Model inits ~20 s each. Every part stops repeating after ``--part-seconds``
(90 s by default), and a part that would start after ``--budget-seconds`` (420 s) is skipped
with that reason, so the whole stays under 8 minutes even at a tenth of the assumed rate.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import platform
import random
import resource
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

# ---------------------------------------------------------------------------- shapes
#: Llama-3.1-8B (head_dim 128) and Llama-3.2-1B (head_dim 64, tied embeddings).
LLAMA_8B = dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=8, intermediate_size=14336, vocab_size=128256,
                tie_word_embeddings=False, max_position_embeddings=131072)
LLAMA_1B = dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
                num_key_value_heads=8, intermediate_size=8192, vocab_size=128256,
                tie_word_embeddings=True, max_position_embeddings=131072)
#: bge-reranker-base is an XLM-RoBERTa base: 12 layers, hidden 768, 250,002-token vocabulary.
XLMR_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, vocab_size=250002, max_position_embeddings=514,
                 type_vocab_size=1)
TINY_LLAMA = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, intermediate_size=128, vocab_size=1000,
                  tie_word_embeddings=False, max_position_embeddings=4096)
TINY_LLAMA_1B = {**TINY_LLAMA, "tie_word_embeddings": True, "hidden_size": 32}
TINY_XLMR = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=128, vocab_size=1000, max_position_embeddings=514,
                 type_vocab_size=1)
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]  # XLM-R's ids 0-3


@dataclass(frozen=True)
class Plan:
    """How big each part runs; :data:`FULL` on a GPU, :data:`TINY` for the CPU smoke run."""

    generators: dict[str, dict]
    reranker: dict
    queries: int  # (a) queries prefilled together
    docs: int  # (a) and (c): candidates per query
    doc_tokens: int
    answer_tokens: int
    repeats: int  # (a) measured repeats (medians reported)
    rr_groups: int  # (b) groups per optimizer step
    rr_group_size: int  # (b) 1 positive + negatives
    rr_length: int  # (b) tokens per (query, document) pair
    rr_steps: int  # (b) measured steps, after one warm-up step
    gr_queries: int  # (c) queries per step
    gr_k: int
    gr_steps: int  # (c) measured steps, after one warm-up step
    label_rows: int
    vllm_rows: int
    peak_n: int  # the matmul's side
    peak_iters: int


FULL = Plan(generators={"8b": LLAMA_8B, "1b": LLAMA_1B}, reranker=XLMR_BASE, queries=16,
            docs=20, doc_tokens=128, answer_tokens=8, repeats=3, rr_groups=8, rr_group_size=8,
            rr_length=512, rr_steps=10, gr_queries=4, gr_k=5, gr_steps=3, label_rows=64,
            vllm_rows=256, peak_n=8192, peak_iters=20)
TINY = Plan(generators={"8b": TINY_LLAMA, "1b": TINY_LLAMA_1B}, reranker=TINY_XLMR, queries=2,
            docs=20, doc_tokens=16, answer_tokens=4, repeats=2, rr_groups=2, rr_group_size=4,
            rr_length=128, rr_steps=2, gr_queries=2, gr_k=5, gr_steps=2, label_rows=4,
            vllm_rows=4, peak_n=256, peak_iters=10)


@dataclass
class Context:
    plan: Plan
    device: torch.device
    dtype: torch.dtype  # the generators' weights (bf16 on CUDA, fp32 on a CPU)
    peak_flops: float = 0.0  # measured matmul FLOP/s
    part_seconds: float = 90.0
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="gs-")))
    rng: random.Random = field(default_factory=lambda: random.Random(0))


# ---------------------------------------------------------------------------- FLOP accounting
def llama_layer_params(cfg) -> int:
    """Matmul parameters of the decoder layers (attention q/k/v/o + gated MLP), no norms."""
    h, heads, kv = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads
    hd = getattr(cfg, "head_dim", None) or h // heads
    attn = h * heads * hd + 2 * h * kv * hd + heads * hd * h
    return cfg.num_hidden_layers * (attn + 3 * h * cfg.intermediate_size)


def llama_forward_flops(cfg, batch: int, queries: int, keys: int, logit_rows: int) -> int:
    """Model FLOPs of one forward of ``batch`` rows of ``queries`` tokens attending over
    ``keys`` keys each, with logits for ``logit_rows`` positions in all (module docstring)."""
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    tokens = batch * queries
    return (2 * tokens * llama_layer_params(cfg)
            + 2 * logit_rows * cfg.vocab_size * cfg.hidden_size
            + 4 * tokens * keys * cfg.num_hidden_layers * cfg.num_attention_heads * hd)


def encoder_params(cfg) -> int:
    """Matmul parameters of an XLM-R cross-encoder: layers (4 h^2 attention + 2 h i MLP) plus
    the classification head (dense h x h, out h x 1); the embeddings are lookups."""
    h = cfg.hidden_size
    return cfg.num_hidden_layers * (4 * h * h + 2 * h * cfg.intermediate_size) + h * h + h


def encoder_train_flops(cfg, lengths: list[int]) -> int:
    """Training FLOPs (forward + backward = 3 x forward) of pairs of the given token lengths:
    6 x params x tokens + 12 x layers x hidden x length^2 per pair for attention."""
    tokens = sum(lengths)
    attention = sum(12 * cfg.num_hidden_layers * cfg.hidden_size * n * n for n in lengths)
    return 6 * encoder_params(cfg) * tokens + attention


class FlopCounter:
    """Counts tokens and model FLOPs of every forward of a Llama model (a forward pre-hook reads
    the shapes the engine passes: ``input_ids``, the 4-D attention mask, ``logits_to_keep``)."""

    def __init__(self, model):
        self.cfg = model.config
        self.tokens = 0
        self.flops = 0
        self.flops_matmul = 0
        self._handle = model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        ids = kwargs["input_ids"]
        b, q = ids.shape
        mask = kwargs.get("attention_mask")
        if isinstance(mask, dict):
            mask = mask["full_attention"]
        keys = mask.shape[-1] if mask is not None and mask.dim() == 4 else q
        keep = kwargs.get("logits_to_keep", 0)
        if isinstance(keep, torch.Tensor):
            rows = b * keep.numel()
        else:
            rows = b * (q if keep == 0 else min(int(keep), q))
        self.tokens += b * q
        self.flops += llama_forward_flops(self.cfg, b, q, keys, rows)
        self.flops_matmul += llama_forward_flops(self.cfg, b, q, 0, rows)

    def take(self) -> tuple[int, int, int]:
        out = (self.tokens, self.flops, self.flops_matmul)
        self.tokens = self.flops = self.flops_matmul = 0
        return out

    def close(self) -> None:
        self._handle.remove()


# ---------------------------------------------------------------------------- models and text
def synthetic_tokenizer(vocab_size: int, words: int = 30000, max_length: int = 131072):
    """A fast tokenizer built in code: XLM-R's four specials, then the words ``w0``, ``w1``, …
    (at most ``vocab_size - 4``), one token per whitespace-separated word (anything else is
    ``<unk>``); ``<s> A`` for one sequence (BOS, as Llama's), ``<s> A </s></s> B </s>`` for a
    pair (XLM-R's). No file, no download, ids inside the model's vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    n = min(words, vocab_size - len(SPECIALS))
    vocab = {t: i for i, t in enumerate(SPECIALS)}
    vocab.update({f"w{i}": i + len(SPECIALS) for i in range(n)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>",
                                   model_max_length=max_length)


def words(rng: random.Random, tokenizer, n: int) -> str:
    """``n`` random vocabulary words: ``n`` tokens."""
    size = len(tokenizer) - len(SPECIALS)
    return " ".join(f"w{rng.randrange(size)}" for _ in range(n))


def build_model(cls, config, ctx: Context, dtype: torch.dtype):
    """A randomly initialised ``cls(config)`` created directly on the device with ``dtype`` as
    the default dtype, as ``from_pretrained(dtype=...)`` builds it (an 8B model is never
    materialised on the host)."""
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with ctx.device:
            model = cls(config)
    finally:
        torch.set_default_dtype(previous)
    return model  # as from_pretrained(dtype=...) leaves it: fp32 buffers (rotary) stay fp32


def llama(shape: dict, ctx: Context):
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = synthetic_tokenizer(shape["vocab_size"])
    cfg = LlamaConfig(**shape, bos_token_id=0, eos_token_id=2, pad_token_id=1)
    return build_model(LlamaForCausalLM, cfg, ctx, ctx.dtype).eval(), tok


def cross_encoder(ctx: Context, max_length: int):
    """The (b)/(c) reranker: fp32 weights, as ``raglign train`` keeps them under bf16 autocast."""
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    from raglign.models.rerankers import CrossEncoderReranker

    cfg = XLMRobertaConfig(**ctx.plan.reranker, num_labels=1, bos_token_id=0, pad_token_id=1,
                           eos_token_id=2)
    model = build_model(XLMRobertaForSequenceClassification, cfg, ctx, torch.float32)
    tok = synthetic_tokenizer(cfg.vocab_size, max_length=max_length)
    return CrossEncoderReranker(model, tok, max_length=max_length).train()


def qa_set(ctx: Context, tokenizer, queries: int, docs: int, doc_tokens: int):
    """Questions, ``docs`` (title, text) documents each and answers, all random words."""
    r = ctx.rng
    return ([words(r, tokenizer, 12) for _ in range(queries)],
            [[(words(r, tokenizer, 1), words(r, tokenizer, doc_tokens)) for _ in range(docs)]
             for _ in range(queries)],
            [words(r, tokenizer, ctx.plan.answer_tokens) for _ in range(queries)])


# ---------------------------------------------------------------------------- timing
def sync(ctx: Context) -> None:
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)


def timed(ctx: Context, fn: Callable[[], Any]) -> tuple[Any, float]:
    sync(ctx)
    start = time.perf_counter()
    out = fn()
    sync(ctx)
    return out, time.perf_counter() - start


def reset_memory(ctx: Context) -> None:
    gc.collect()
    if ctx.device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(ctx.device)


def peak_memory_mib(ctx: Context) -> tuple[str, float]:
    """The device's peak allocation since :func:`reset_memory`; on a CPU the process's peak RSS
    (it never resets, so it covers everything the process did before too)."""
    if ctx.device.type == "cuda":
        return "peak_cuda_mib", torch.cuda.max_memory_allocated(ctx.device) / 2**20
    return "peak_rss_mib", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_peak(ctx: Context, trials: int = 5) -> dict:
    """Dense matmul FLOP/s in the generators' dtype, the denominator of every MFU: the best of
    ``trials`` timings of ``iters`` back-to-back ``n x n`` products (clock ramp-up and other
    processes only ever make a trial slower)."""
    n, iters = ctx.plan.peak_n, ctx.plan.peak_iters
    a = torch.randn(n, n, device=ctx.device, dtype=ctx.dtype)
    b = torch.randn(n, n, device=ctx.device, dtype=ctx.dtype)
    for _ in range(3):
        a @ b
    seconds = min(timed(ctx, lambda: [a @ b for _ in range(iters)])[1] for _ in range(trials))
    ctx.peak_flops = 2 * n**3 * iters / seconds
    return {"n": n, "iters": iters, "trials": trials, "seconds": seconds,
            "tflops": ctx.peak_flops / 1e12}


# ---------------------------------------------------------------------------- (a) engine
def part_engine(ctx: Context) -> dict:
    from raglign.engine import DocumentEngine

    p = ctx.plan
    model, tok = llama(p.generators["8b"], ctx)
    engine = DocumentEngine(model, tok)
    counter = FlopCounter(model)
    questions, docs, answers = qa_set(ctx, tok, p.queries, p.docs, p.doc_tokens)
    warm = engine.prepare(questions[0], docs[0][:2])
    engine.single_document(warm, answers[0])
    engine.leave_one_out(warm, answers[0])
    counter.take()
    started, samples = time.perf_counter(), []
    for _ in range(p.repeats):
        caches, t_prefill = timed(ctx, lambda: engine.prepare_many(questions, docs))
        prefill = (*counter.take(), t_prefill)
        single_scores, t_single = timed(ctx, lambda: [engine.single_document(c, a)
                                                       for c, a in zip(caches, answers)])
        single = (*counter.take(), t_single)
        loo_scores, t_loo = timed(ctx, lambda: [engine.leave_one_out(c, a)
                                                for c, a in zip(caches, answers)])
        loo = (*counter.take(), t_loo)
        finite = all(bool(torch.isfinite(s).all()) for s in single_scores + loo_scores)
        samples.append((prefill, single, loo, finite))
        del caches
        if time.perf_counter() - started > ctx.part_seconds:
            break
    counter.close()

    def phase(i: int) -> tuple[int, int, int, float]:  # the median repeat's (by seconds)
        return sorted((s[i] for s in samples), key=lambda x: x[3])[len(samples) // 2]

    pre, sin, loo = phase(0), phase(1), phase(2)
    metrics = {"prefill_tokens": pre[0], "prefill_s": pre[3]}
    for name, passes in (("single", sin), ("loo", loo)):
        tokens, flops, matmul = pre[0] + passes[0], pre[1] + passes[1], pre[2] + passes[2]
        seconds = pre[3] + passes[3]
        metrics.update({f"{name}_s": seconds, f"{name}_passes_s": passes[3],
                        f"{name}_tokens": tokens, f"{name}_tokens_per_s": tokens / seconds,
                        f"{name}_tflops": flops / seconds / 1e12,
                        f"{name}_mfu": flops / seconds / ctx.peak_flops,
                        f"{name}_mfu_matmul_only": matmul / seconds / ctx.peak_flops})
    metrics["loo_over_single"] = metrics["loo_s"] / metrics["single_s"]
    metrics[peak_memory_mib(ctx)[0]] = peak_memory_mib(ctx)[1]
    metrics["scores_finite"] = int(all(s[3] for s in samples))
    config = {"shape": "Llama-3.1-8B" if p.generators["8b"] is LLAMA_8B else "tiny",
              "params": sum(x.numel() for x in model.parameters()), "queries": p.queries,
              "docs": p.docs, "doc_tokens": p.doc_tokens, "answer_tokens": p.answer_tokens,
              "repeats": len(samples), "dtype": str(ctx.dtype).removeprefix("torch.")}
    return {"config": config, "metrics": metrics}


# ---------------------------------------------------------------------------- (b) reranker
def reranker_step(ctx: Context, reranker):
    """``raglign train``'s optimizer step around a loss: returns ``step(loss_fn) -> (loss,
    grad norm)`` over the DDP-facing scorer, its fused AdamW on ``param_groups``, bf16 autocast
    on CUDA."""
    from raglign.training.reranker import build_optimizer, scorer_class

    scorer = scorer_class()(reranker, False)
    optimizer = build_optimizer(reranker, 6e-5, 0.01)
    autocast = torch.autocast(device_type=ctx.device.type, dtype=torch.bfloat16,
                              enabled=ctx.device.type == "cuda")

    def step(loss_fn):
        with autocast:
            loss = loss_fn(scorer)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(reranker.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach()), float(norm)

    return step


def part_reranker(ctx: Context) -> dict:
    from raglign.objectives import infonce

    p = ctx.plan
    reranker = cross_encoder(ctx, p.rr_length)
    tok = reranker.tokenizer
    step = reranker_step(ctx, reranker)
    queries = [words(ctx.rng, tok, 16) for _ in range(p.rr_groups)]
    docs = [[words(ctx.rng, tok, p.rr_length) for _ in range(p.rr_group_size)] for _ in queries]
    lengths = reranker.token_lengths([q for q in queries for _ in range(p.rr_group_size)],
                                     [d for g in docs for d in g])

    def loss_fn(scorer):
        return infonce(scorer(queries, docs).float(), 1.0, 0)

    step(loss_fn)  # warm-up: allocations, optimizer state
    started, seconds, norms = time.perf_counter(), [], []
    for _ in range(p.rr_steps):
        (_, norm), t = timed(ctx, lambda: step(loss_fn))
        seconds.append(t)
        norms.append(norm)
        if time.perf_counter() - started > ctx.part_seconds:
            break
    per_step = statistics.median(seconds)
    pairs = p.rr_groups * p.rr_group_size
    flops = encoder_train_flops(reranker.model.config, lengths)
    key, mib = peak_memory_mib(ctx)
    metrics = {"step_s": per_step, "pairs_per_s": pairs / per_step,
               "tokens_per_s": sum(lengths) / per_step, "tflops": flops / per_step / 1e12,
               "mfu": flops / per_step / ctx.peak_flops, key: mib,
               "grad_norm_finite": int(all(math.isfinite(n) and n > 0 for n in norms))}
    config = {"shape": "XLM-R base" if p.reranker is XLMR_BASE else "tiny",
              "params": sum(x.numel() for x in reranker.parameters()),
              "pairs_per_step": pairs, "group_size": p.rr_group_size, "length": p.rr_length,
              "tokens_per_step": sum(lengths), "steps": len(seconds),
              "precision": "bf16 autocast, fp32 weights" if ctx.device.type == "cuda"
              else "fp32 (the trainer's CPU precision)"}
    return {"config": config, "metrics": metrics}


# ---------------------------------------------------------------------------- (c) G-Rerank
def grerank_step(ctx: Context, generator: str) -> dict:
    from raglign.engine import DocumentEngine
    from raglign.models.rerankers import doc_text
    from raglign.objectives.gumbel import gumbel_lm_loss

    p = ctx.plan
    model, tok = llama(p.generators[generator], ctx)
    engine = DocumentEngine(model, tok)  # freezes the generator
    reranker = cross_encoder(ctx, 512)
    step = reranker_step(ctx, reranker)
    questions, docs, answers = qa_set(ctx, tok, p.gr_queries, p.docs, p.doc_tokens)
    texts = [[doc_text(t, x) for t, x in d] for d in docs]
    valid = torch.ones(p.gr_queries, p.docs, dtype=torch.bool, device=ctx.device)
    no_autocast = torch.autocast(ctx.device.type, enabled=False)

    def loss_fn(scorer):  # GumbelLoss.__call__
        with no_autocast:
            caches = engine.prepare_many(questions, docs)
        scores = scorer(questions, texts)
        with no_autocast:
            return gumbel_lm_loss(engine, caches, answers, scores.float(), p.gr_k, 0.5, 1.0,
                                  True, None, valid, 1)

    step(loss_fn)
    reset_memory(ctx)
    started, seconds, norms = time.perf_counter(), [], []
    for _ in range(p.gr_steps):
        (_, norm), t = timed(ctx, lambda: step(loss_fn))
        seconds.append(t)
        norms.append(norm)
        if time.perf_counter() - started > ctx.part_seconds / 2:
            break
    key, mib = peak_memory_mib(ctx)
    return {f"{generator}_step_s": statistics.median(seconds), f"{generator}_{key}": mib,
            f"{generator}_generator_params": sum(x.numel() for x in model.parameters()),
            f"{generator}_grad_norm_finite": int(all(math.isfinite(n) and n > 0 for n in norms))}


def part_grerank(ctx: Context) -> dict:
    p = ctx.plan
    metrics = {}
    for generator in ("1b", "8b"):
        metrics.update(grerank_step(ctx, generator))
        reset_memory(ctx)
    config = {"n": p.docs, "k": p.gr_k, "queries_per_step": p.gr_queries,
              "doc_tokens": p.doc_tokens, "reranker": "XLM-R base" if p.reranker is XLMR_BASE
              else "tiny", "generators": "Llama-3.2-1B, Llama-3.1-8B" if p.generators["8b"]
              is LLAMA_8B else "tiny", "steps": p.gr_steps}
    return {"config": config, "metrics": metrics}


# ---------------------------------------------------------------------------- (d), (e)
class Skip(Exception):
    """A part that cannot run here; its message is the recorded reason."""


def require(*modules: str) -> None:
    """Import ``modules`` in order; the first that fails skips the part, naming it."""
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise Skip(f"{e.name or name} not importable") from None


def saved_generator(ctx: Context) -> str:
    """The 1B-shaped generator and its tokenizer saved once (the label job and vLLM load a
    directory)."""
    path = ctx.tmp / "generator-1b"
    if not (path / "config.json").exists():
        model, tok = llama(ctx.plan.generators["1b"], ctx)
        model.save_pretrained(path)
        tok.save_pretrained(path)
        del model
        reset_memory(ctx)
    return str(path)


def part_label(ctx: Context) -> dict:
    require("ray", "pydantic", "pyarrow", "raglign.pipeline.label")
    from raglign.config import validate
    from raglign.data.io import write_rows
    from raglign.data.schema import candidate, make_row
    from raglign.pipeline.label import (LabelConfig, label_in_process, load_models, model_needs,
                                        run_label)
    from raglign.signals import SIGNALS

    p = ctx.plan
    gen = saved_generator(ctx)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gen)
    questions, docs, answers = qa_set(ctx, tok, p.label_rows, p.docs, p.doc_tokens)
    rows = [make_row(f"q{i}", q, [a], [candidate(f"d{i}-{j}", t, x) for j, (t, x) in
                                       enumerate(d)])
            for i, (q, d, a) in enumerate(zip(questions, docs, answers))]
    write_rows(rows, ctx.tmp / "label-in")
    cuda = ctx.device.type == "cuda"
    cfg = validate(LabelConfig, {
        "job": "label", "input": str(ctx.tmp / "label-in"), "output": str(ctx.tmp / "label-out"),
        "signals": ["loo_logprob"], "context": "parallel", "batch_size": 8, "actors": 1,
        "generator": {"name": gen, "dtype": "bfloat16" if cuda else "float32",
                      "device": ctx.device.type},
        "cpus_per_actor": 1, "gpus_per_actor": 1 if cuda else 0, "eval": {"enabled": False},
        "ray": {"num_cpus": 2} if not cuda else {}})
    models, t_load = timed(ctx, lambda: load_models(cfg, model_needs([SIGNALS["loo_logprob"]],
                                                                     cfg)))
    labelled, t_plain = timed(ctx, lambda: label_in_process(cfg, rows, models))
    del models
    reset_memory(ctx)
    summary, t_ray = timed(ctx, lambda: run_label(cfg, progress=lambda s: None))
    if len(labelled) != len(rows) or summary["rows_out"] != len(rows):
        raise RuntimeError(f"labelled {len(labelled)} rows in the loop and "
                           f"{summary['rows_out']} through Ray of {len(rows)}")
    metrics = {"plain_rows_per_s": len(rows) / t_plain, "plain_load_s": t_load,
               "ray_rows_per_s": len(rows) / t_ray, "ray_s": t_ray,
               "ray_over_plain_incl_load": t_ray / (t_plain + t_load)}
    config = {"rows": len(rows), "docs": p.docs, "signal": "loo_logprob", "actors": 1,
              "gpus_per_actor": cfg.gpus_per_actor, "generator": "1B shape"
              if p.generators["1b"] is LLAMA_1B else "tiny",
              "ray_s": "end to end: Ray start, actor start, model load, labelling, writing"}
    return {"config": config, "metrics": metrics}


def part_vllm(ctx: Context) -> dict:
    require("vllm", "ray", "pydantic")
    import ray

    from raglign.models.generator_spec import VLLMConfig
    from raglign.models.vllm_backend import scoring_processor, scoring_token_ids, tokenizer_for
    from raglign.ray_session import ray_session

    p = ctx.plan
    gen = saved_generator(ctx)
    tok = tokenizer_for(gen)
    questions, docs, answers = qa_set(ctx, tok, p.vllm_rows, p.docs, p.doc_tokens)
    rows = [{"id": f"q{i}", "question": q, "answer": a,
             "candidates": [{"title": t, "text": x} for t, x in d]}
            for i, (q, d, a) in enumerate(zip(questions, docs, answers))]
    tokens = sum(len(scoring_token_ids(tok, r, "candidates")[0]) for r in rows)
    with ray_session():
        processor = scoring_processor(VLLMConfig(model=gen, dtype="bfloat16", max_model_len=8192))
        processor(ray.data.from_items(rows[:8])).take_all()  # engine start and warm-up
        out, seconds = timed(ctx, lambda: processor(ray.data.from_items(rows)).take_all())
    if len(out) != len(rows) or not all(math.isfinite(r["answer_logprob"]) for r in out):
        raise RuntimeError(f"vLLM scored {len(out)} of {len(rows)} rows, or a score is not finite")
    return {"config": {"rows": len(rows), "prompt_tokens": tokens, "model": "1B shape",
                       "note": "the processor is built twice: once to warm up"},
            "metrics": {"rows_per_s": len(rows) / seconds, "tokens_per_s": tokens / seconds,
                        "seconds": seconds}}


PARTS: dict[str, Callable[[Context], dict]] = {
    "engine": part_engine, "reranker": part_reranker, "grerank": part_grerank,
    "label": part_label, "vllm": part_vllm}
TITLES = {"engine": "(a) document engine, 8B shape", "reranker": "(b) reranker training, "
          "XLM-R base at 512", "grerank": "(c) G-Rerank step, n=20 k=5", "label": "(d) label: "
          "Ray Data 1 actor vs plain loop", "vllm": "(e) vLLM scoring processor"}


# ---------------------------------------------------------------------------- report
def machine(ctx: Context) -> dict:
    import transformers

    if ctx.device.type == "cuda":
        name = torch.cuda.get_device_name(ctx.device)
    else:
        name = platform.processor() or platform.machine()
        try:
            name = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                        if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
    return {"device": name, "device_type": ctx.device.type, "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "dtype": str(ctx.dtype).removeprefix("torch."),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def fmt(value: Any) -> str:
    """One table cell: integers as they are, other numbers to 4 significant digits."""
    if isinstance(value, bool) or isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table_rows(result: dict) -> list[tuple[str, str, str]]:
    """(part, metric, cell) for every number in ``result`` and every part's status."""
    rows = [("peak", "matmul_tflops", fmt(result["peak"]["tflops"]))]
    for name, part in result["parts"].items():
        if part["status"] != "ok":
            why = part.get("reason") or part.get("error", "")
            rows.append((name, part["status"], why.replace("|", "/").replace("\n", " ")))
            continue
        rows += [(name, k, fmt(v)) for k, v in part["metrics"].items()]
        rows.append((name, "seconds_total", fmt(part["seconds"])))
    return rows


def markdown(result: dict) -> str:
    m = result["machine"]
    head = (f"# GPU suite ({result['mode']})\n\n{m['device']}, torch {m['torch']}, "
            f"transformers {m['transformers']}, {m['dtype']}, {m['date']}; total "
            f"{result['seconds']:.0f} s.\n\n")
    lines = ["| part | metric | value |", "|---|---|---|"]
    lines += [f"| {p} | {k} | {v} |" for p, k, v in table_rows(result)]
    return head + "\n".join(lines) + "\n"


def run(tiny: bool, out: Path, parts: list[str], part_seconds: float | None,
        budget_seconds: float = 420.0) -> dict:
    cuda = torch.cuda.is_available() and not tiny
    ctx = Context(plan=TINY if tiny else FULL, device=torch.device("cuda" if cuda else "cpu"),
                  dtype=torch.bfloat16 if cuda else torch.float32)
    ctx.part_seconds = part_seconds or (30.0 if tiny else 90.0)
    started = time.perf_counter()
    print(f"[gpu_suite] {'tiny' if tiny else 'full'} on {ctx.device} ({ctx.dtype})", flush=True)
    result = {"suite": "gpu_suite", "mode": "tiny" if tiny else "full", "machine": machine(ctx),
              "peak": matmul_peak(ctx), "parts": {}}
    print(f"[gpu_suite] peak matmul {result['peak']['tflops']:.3g} TFLOP/s", flush=True)
    for name in parts:
        t0 = time.perf_counter()
        try:
            if t0 - started > budget_seconds:
                raise Skip(f"the suite passed its {budget_seconds:.0f} s budget before this part")
            part = {"status": "ok", **PARTS[name](ctx)}
        except Skip as e:
            part = {"status": "skipped", "reason": str(e)}
        except Exception as e:  # one failing part must not cost the others' numbers
            part = {"status": "error", "error": f"{type(e).__name__}: {e}",
                    "traceback": traceback.format_exc(limit=8)}
        part["seconds"] = time.perf_counter() - t0
        result["parts"][name] = part
        reset_memory(ctx)
        shown = {k: fmt(v) for k, v in part.get("metrics", {}).items()}
        print(f"[gpu_suite] {TITLES[name]}: {part['status']} in {part['seconds']:.1f} s "
              f"{part.get('reason') or part.get('error') or json.dumps(shown)}", flush=True)
    result["seconds"] = time.perf_counter() - started
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_suite.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "gpu_suite.md").write_text(markdown(result))
    print(f"[gpu_suite] done in {result['seconds']:.0f} s -> {out}/gpu_suite.json, .md",
          flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="directory for gpu_suite.json/.md")
    ap.add_argument("--tiny", action="store_true",
                    help="tiny configs on the CPU: the same code paths in under 2 minutes")
    ap.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))
    ap.add_argument("--part-seconds", type=float,
                    help="stop repeating a part's measurement after this long (default 90, "
                         "tiny 30)")
    ap.add_argument("--budget-seconds", type=float, default=420.0,
                    help="skip the parts that would start after this long (default 420)")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args.tiny, args.out, args.parts, args.part_seconds, args.budget_seconds)
    return 1 if any(p["status"] == "error" for p in result["parts"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
