"""The document engine: parallel prefill once, then answer likelihoods under any document mask.

Every LLM signal in raglign is a likelihood of the gold answer under some choice of documents
(one document, all but one, a soft G-Rerank mask, a chosen subset) or the answer's attention on
the documents. With parallel prefill, one set of document keys/values serves all of them:

1. ``prefix | doc_1 … doc_n | suffix`` come from :func:`raglign.prompts.parallel_prompt`, and
   every piece (and the answer) is tokenised separately with
   :func:`raglign.prompts.encode_piece`, exactly as the generator backends score the
   concatenated prompt.
2. The prefix is encoded once, at positions ``0 … P-1``. Each document is encoded as a
   continuation of the prefix at positions ``P … P+L_i-1`` -- all documents start at the same
   position, none sees another -- and its keys/values (rotary already applied) are cached without
   grad and concatenated along the sequence axis.
3. The suffix + answer run after the documents, attending to the prefix, to every visible
   document key with ``log(mask_i)`` added to its logit, and causally to themselves. Where they
   start depends on the kind of mask (:meth:`DocumentEngine.suffix_starts`):

   * a **hard** mask (every value 0 or 1) starts the answer right after the longest *visible*
     document, ``P + max_{i visible} L_i``: one document alone is then token for token its own
     concatenated prompt, and a subset (leave-one-out, an RRPO state, a hard top-k) reads what a
     fresh parallel prefill of that subset reads;
   * a **soft** mask (G-Rerank's relaxed top-k, any value strictly between 0 and 1, or a mask that
     requires grad) hides no document, so it starts at ``P + max_i L_i`` over *all* candidates:
     one position per query, which does not jump with the mask values gradients are taken for.

Many masks are evaluated in ONE forward row: the m suffix passes are packed side by side with a
block-diagonal mask, each block with its own position ids, so the document cache is read once
instead of being copied into m batch rows.

Public API (all log-probabilities are natural-log, summed over answer tokens unless ``per_token``)::

    engine = DocumentEngine(model, tokenizer, prefill_batch_size=8, prefill_token_budget=None,
                            max_pack_tokens=1024, eps=1e-12)
    cache = engine.prepare(question, documents, choices=None, suffix_start=None) -> DocCache
    caches = engine.prepare_many(questions, documents_per_question, choices=None) -> list[DocCache]
    engine.answer_logprob(cache, answer, mask=None, per_token=False) -> Tensor [] or [A]
    engine.masked_logprobs(cache, answer, masks, per_token=False) -> Tensor [m] or [m, A]
    engine.single_document(cache, answer) -> Tensor [n]           # log p(a | q, d_i)
    engine.leave_one_out(cache, answer, k=None) -> Tensor [k]     # log p(a | top-k minus d_i)
    engine.subset_logprob(cache, answer, keep) -> Tensor []       # log p(a | q, {d_j : j in keep})
    engine.attention_mass(cache, answer, mask=None, per_layer=False) -> Tensor [n] # sums to 1
    engine.concat_logprob(question, documents, answer, keep=None, choices=None,
                          per_token=False) -> Tensor []           # the exact reference
    engine.suffix_starts(cache, masks) -> Tensor [m]              # the answer's first position

``documents`` are ``(title, text)`` pairs in retrieval order; masks are floats in [0, 1] over the
documents (1 = visible, 0 = removed exactly, in between = G-Rerank's soft mask). A mask that
requires grad gets gradients; the model itself is frozen (every method treats the LLM as fixed),
so no gradient is ever accumulated in it.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

from raglign.batching import length_batches
from raglign.errors import ConfigError, DataError
from raglign.kv_cache import cache_kwarg
from raglign.masks import (DEFAULT_EPS, additive_mask, keep_mask, leave_one_out_masks, log_mask,
                           sliding_window)
from raglign.prompts import ParallelPrompt, answer_continuation, encode_piece, parallel_prompt

Document = tuple[str | None, str]

#: Padded tokens per prefill forward by device type. On a CPU a single ~200-token document
#: already gives the matmuls enough rows, so batching buys nothing and padding costs: one
#: document per forward measured 1.05x the concatenated path's CPU time, 1024-token batches
#: 1.11x (docs/benchmarks.md, "Engine vs concatenated scoring"). A GPU needs large batches.
PREFILL_TOKEN_BUDGET = {"cpu": 1, "cuda": 16384}


@dataclass
class DocCache:
    """The prefilled prompt of one query: token pieces plus the per-layer keys/values of the
    prefix followed by every document (``[1, kv_heads, P + D, head_dim]`` each).

    ``key_doc[j]`` is the document of key j (-1 for the prefix) and ``key_pos[j]`` its position.
    ``suffix_start`` is where a soft mask's suffix starts (after the longest candidate);
    ``pinned`` means it was given to :meth:`DocumentEngine.prepare` and holds for hard masks too.
    The cache holds no autograd graph and is reusable for any number of answers and masks.
    """

    prompt: ParallelPrompt
    prefix_ids: list[int]
    doc_ids: list[list[int]]
    suffix_ids: list[int]
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    key_doc: torch.Tensor
    key_pos: torch.Tensor
    suffix_start: int
    pinned: bool = False

    @property
    def num_docs(self) -> int:
        return len(self.doc_ids)

    @property
    def doc_lens(self) -> list[int]:
        return [len(d) for d in self.doc_ids]

    @property
    def num_keys(self) -> int:
        return int(self.key_doc.numel())

    def nbytes(self) -> int:
        """Memory held by the cached keys and values."""
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))


class DocumentEngine:
    """Parallel-prefill document cache and masked answer likelihood for a decoder-only HF model.

    Verified on Llama-family (SmolLM2), Qwen2-family and Gemma-3 text models (see docs/engine.md).
    Documents are prefilled in length-sorted batches of at most ``prefill_batch_size`` rows and
    ``prefill_token_budget`` padded tokens (None: :data:`PREFILL_TOKEN_BUDGET` for the device,
    one document per forward on a CPU): a fixed batch of 8 HotpotQA paragraphs padded to 1.6x
    their tokens and made the engine slower than scoring each document's own prompt.
    ``max_pack_tokens`` bounds how many suffix tokens share one packed row (the attention mask
    is ``pack × (cache + pack)``); ``eps`` clamps soft masks before the log.
    """

    def __init__(self, model: Any, tokenizer: Any, *, prefill_batch_size: int = 8,
                 prefill_token_budget: int | None = None, max_pack_tokens: int = 1024,
                 eps: float = DEFAULT_EPS):
        if min(prefill_batch_size, max_pack_tokens, prefill_token_budget or 1) < 1:
            raise ConfigError("prefill_batch_size, prefill_token_budget and max_pack_tokens "
                              "must be >= 1")
        self.model = model.eval()
        # The LLM is frozen in every method raglign implements; freezing it here means a loss on
        # a soft mask back-propagates into the mask only, without computing parameter grads.
        self.model.requires_grad_(False)
        self.tokenizer = tokenizer
        self.prefill_batch_size = prefill_batch_size
        self.prefill_token_budget = (prefill_token_budget if prefill_token_budget is not None
                                     else PREFILL_TOKEN_BUDGET.get(self.device.type, 16384))
        self.max_pack_tokens = max_pack_tokens
        self.eps = eps
        # Models with sliding-window layers take a dict of masks keyed by layer type.
        self._window = sliding_window(model)
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    # ------------------------------------------------------------------ tokens and prefill
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def answer_ids(self, answer: str) -> list[int]:
        """The answer's tokens as a continuation of the prompt (shared with the backends)."""
        ids = encode_piece(self.tokenizer, answer_continuation(self.tokenizer, answer))
        if not ids:
            raise DataError("document engine", None, "answer", f"answer {answer!r} has no tokens")
        return ids

    def prepare(self, question: str, documents: Sequence[Document],
                choices: list[str] | None = None, suffix_start: int | None = None) -> DocCache:
        """Prefill one query's documents. ``suffix_start`` pins the answer's start position for
        every mask, hard or soft (by default hard masks start after their longest visible
        document and soft ones after the longest of all); pass a full candidate list's
        ``suffix_start`` when prefilling a subset that must match a soft mask on the full list."""
        return self.prepare_many([question], [documents], None if choices is None else [choices],
                                 suffix_start=suffix_start)[0]

    @torch.no_grad()
    def prepare_many(self, questions: Sequence[str], documents: Sequence[Sequence[Document]],
                     choices: Sequence[list[str] | None] | None = None,
                     suffix_start: int | None = None) -> list[DocCache]:
        """Prefill several queries at once: the prefix (the system text, usually identical for
        all queries) is encoded once per distinct prefix, and documents of all queries are
        encoded together in length-sorted batches under ``prefill_batch_size`` rows and
        ``prefill_token_budget`` padded tokens."""
        if len(questions) != len(documents):
            raise DataError("document engine", None, "documents",
                            f"{len(questions)} questions but {len(documents)} document lists")
        choices = list(choices) if choices is not None else [None] * len(questions)
        prompts = [parallel_prompt(self.tokenizer, q, list(docs), c)
                   for q, docs, c in zip(questions, documents, choices)]
        prefixes = [encode_piece(self.tokenizer, p.prefix, first=True) for p in prompts]
        doc_ids = [[encode_piece(self.tokenizer, d) for d in p.docs] for p in prompts]
        prefix_kv = {key: self._encode_prefix(list(key)) for key in {tuple(p) for p in prefixes}}

        # (query, doc) pairs grouped by prefix, sorted by length so batches pad little.
        doc_kv: dict[tuple[int, int], list[tuple[torch.Tensor, torch.Tensor]]] = {}
        for key, kv in prefix_kv.items():
            pairs = [(qi, di) for qi, p in enumerate(prefixes) if tuple(p) == key
                     for di in range(len(doc_ids[qi]))]
            lengths = [len(doc_ids[qi][di]) for qi, di in pairs]
            for batch in length_batches(lengths, self.prefill_batch_size,
                                        self.prefill_token_budget):
                chunk = [pairs[i] for i in batch]
                encoded = self._encode_documents(kv, [doc_ids[qi][di] for qi, di in chunk])
                doc_kv.update(zip(chunk, encoded))

        caches = []
        for qi, prompt in enumerate(prompts):
            P, lens = len(prefixes[qi]), [len(d) for d in doc_ids[qi]]
            start = P + max(lens, default=0) if suffix_start is None else suffix_start
            if start < P + max(lens, default=0):
                raise ValueError(f"suffix_start={start} would overlap the documents "
                                 f"(prefix {P} + longest document {max(lens, default=0)})")
            pk = prefix_kv[tuple(prefixes[qi])]
            layers = [[pk[layer]] + [doc_kv[qi, di][layer] for di in range(len(lens))]
                      for layer in range(len(pk))]
            key_doc = torch.tensor([-1] * P + [i for i, L in enumerate(lens) for _ in range(L)],
                                   device=self.device)
            key_pos = torch.cat([torch.arange(P)] + [torch.arange(P, P + L) for L in lens])
            caches.append(DocCache(
                prompt=prompt, prefix_ids=prefixes[qi], doc_ids=doc_ids[qi],
                suffix_ids=encode_piece(self.tokenizer, prompt.suffix),
                keys=[torch.cat([k for k, _ in kv], dim=2) for kv in layers],
                values=[torch.cat([v for _, v in kv], dim=2) for kv in layers],
                key_doc=key_doc, key_pos=key_pos.to(self.device), suffix_start=start,
                pinned=suffix_start is not None))
        return caches

    def _encode_prefix(self, ids: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-layer (key, value) ``[1, kv_heads, P, head_dim]`` of the prefix."""
        P = len(ids)
        pos = torch.arange(P, device=self.device)
        causal = torch.ones(P, P, dtype=torch.bool, device=self.device).tril()
        cache = DynamicCache()
        self._forward(torch.tensor([ids], device=self.device), pos[None], cache, causal[None],
                      pos[None], pos[None])
        return [(layer.keys, layer.values) for layer in cache.layers]

    def _encode_documents(self, prefix: list[tuple[torch.Tensor, torch.Tensor]],
                          docs: list[list[int]]) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
        """Encode documents as independent continuations of the prefix, all starting at position
        P, in one right-padded batch. Padding sits after every real token, so causal attention
        keeps it invisible to them; its outputs are discarded."""
        b, P, T = len(docs), prefix[0][0].shape[2], max(len(d) for d in docs)
        ids = torch.full((b, T), self._pad_id, dtype=torch.long, device=self.device)
        for row, d in enumerate(docs):
            ids[row, :len(d)] = torch.tensor(d, device=self.device)
        q_pos = torch.arange(P, P + T, device=self.device)
        k_pos = torch.arange(P + T, device=self.device)
        allowed = torch.ones(T, P + T, dtype=torch.bool, device=self.device)
        allowed[:, P:] = torch.ones(T, T, dtype=torch.bool, device=self.device).tril()
        cache = DynamicCache(ddp_cache_data=[(k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1))
                                             for k, v in prefix])
        self._forward(ids, q_pos.expand(b, T), cache, allowed[None], q_pos[None], k_pos[None])
        return [[(layer.keys[row:row + 1, :, P:P + len(d)].clone(),
                  layer.values[row:row + 1, :, P:P + len(d)].clone()) for layer in cache.layers]
                for row, d in enumerate(docs)]

    def _forward(self, ids: torch.Tensor, position_ids: torch.Tensor, cache: DynamicCache,
                 allowed: torch.Tensor,
                 q_pos: torch.Tensor, k_pos: torch.Tensor, bias: torch.Tensor | None = None,
                 logits_index: torch.Tensor | None = None, output_attentions: bool = False):
        """One forward with an explicit attention pattern over ``cache`` (filled in place). The
        callers build a fresh ``DynamicCache`` without a config every time: the forward appends
        to it, and a config would make sliding layers truncate the cache so that pieces no
        longer line up."""
        dtype = self.dtype
        mask = additive_mask(allowed, dtype, bias)
        if self._window is not None:
            mask = {"full_attention": mask,
                    "sliding_attention": additive_mask(allowed, dtype, bias, q_pos, k_pos,
                                                       self._window)}
        kwargs = {"output_attentions": True} if output_attentions else {}
        with _bias_grad_kernel(bias, ids.device):
            return self.model(input_ids=ids, position_ids=position_ids, attention_mask=mask,
                              **cache_kwarg(self.model, cache), use_cache=True,
                              logits_to_keep=1 if logits_index is None else logits_index,
                              **kwargs)

    # ------------------------------------------------------------------ masked likelihoods
    def masked_logprobs(self, cache: DocCache, answer: str, masks: torch.Tensor,
                        per_token: bool = False) -> torch.Tensor:
        """log p(answer | prompt) under each document mask of ``masks`` ``[m, n]``.

        The m suffix passes share one packed row (up to ``max_pack_tokens``) with a
        block-diagonal mask; the cache is never re-prefilled. Returns ``[m]`` token sums, or
        ``[m, A]`` per-token log-probabilities. Differentiable wrt ``masks``.
        """
        masks = self._check_masks(cache, masks)
        answer_ids = self.answer_ids(answer)
        seq = cache.suffix_ids + answer_ids
        per_pack = max(1, self.max_pack_tokens // len(seq))
        out = [self._score_pack(cache, seq, len(answer_ids), masks[i:i + per_pack])
               for i in range(0, masks.shape[0], per_pack)]
        tokens = torch.cat(out) if out else torch.zeros(0, len(answer_ids), device=self.device)
        return tokens if per_token else tokens.sum(-1)

    def answer_logprob(self, cache: DocCache, answer: str, mask: torch.Tensor | None = None,
                       per_token: bool = False) -> torch.Tensor:
        """log p(answer | prompt) under one mask ``[n]`` (all documents visible by default):
        a 0-d token sum, or the ``[A]`` per-token values (``.mean()`` for the per-token mean)."""
        if mask is None:
            mask = torch.ones(cache.num_docs, device=self.device)
        return self.masked_logprobs(cache, answer, mask.unsqueeze(0), per_token)[0]

    def single_document(self, cache: DocCache, answer: str) -> torch.Tensor:
        """``[n]``: log p(a | q, d_i), each document alone (PDist, REPLUG, EMDR)."""
        return self.masked_logprobs(cache, answer, torch.eye(cache.num_docs, device=self.device))

    def leave_one_out(self, cache: DocCache, answer: str, k: int | None = None) -> torch.Tensor:
        """``[k]``: log p(a | top-k without d_i) for i < k, the top-k being the first k
        documents (retrieval order); the rest are hidden (LOOP)."""
        return self.masked_logprobs(cache, answer,
                                    leave_one_out_masks(cache.num_docs, k).to(self.device))

    def subset_logprob(self, cache: DocCache, answer: str, keep: Sequence[int]) -> torch.Tensor:
        """log p(a | q, chosen documents ``keep``) through the cache (RRPO's log-p reward)."""
        return self.answer_logprob(cache, answer, keep_mask(cache.num_docs, keep).to(self.device))

    def suffix_starts(self, cache: DocCache, masks: torch.Tensor) -> torch.Tensor:
        """``[m]``: the position of the first suffix token under each mask of ``masks [m, n]``.

        A hard mask (every value exactly 0 or 1, and not requiring grad) starts the suffix right
        after its longest visible document -- where a prompt holding just those documents puts
        it -- so single-document scores equal the concatenated one-document prompt. A soft mask
        hides nothing and keeps the query's one fixed position, after the longest candidate
        (``cache.suffix_start``); so does every mask of a cache prefilled with a pinned
        ``suffix_start``. Measured in docs/engine.md ("Position-id rule").
        """
        masks = self._check_masks(cache, masks)
        fixed = torch.full((masks.shape[0],), cache.suffix_start, device=self.device)
        if cache.pinned or cache.num_docs == 0 or masks.requires_grad:
            return fixed
        hard = ((masks == 0) | (masks == 1)).all(-1)
        lens = torch.tensor(cache.doc_lens, device=self.device)
        natural = len(cache.prefix_ids) + torch.where(masks > 0, lens, 0).amax(-1)
        return torch.where(hard, natural, fixed)

    def _check_masks(self, cache: DocCache, masks: torch.Tensor) -> torch.Tensor:
        masks = torch.as_tensor(masks, device=self.device)
        if masks.dim() != 2 or masks.shape[1] != cache.num_docs:
            raise ValueError(f"masks must have shape [m, {cache.num_docs}] for this cache, "
                             f"got {tuple(masks.shape)}")
        return masks

    def _pack(self, cache: DocCache, seq: list[int], masks: torch.Tensor, **forward_kwargs):
        """Run len(masks) copies of ``seq`` in one row; block j sees the cache under mask j."""
        g, S, K0 = masks.shape[0], len(seq), cache.num_keys
        dev = self.device
        visible, logm = log_mask(masks, self.eps)
        is_doc = cache.key_doc >= 0
        doc_of_key = cache.key_doc.clamp_min(0)
        if cache.num_docs:
            ctx_allowed = ~is_doc | visible[:, doc_of_key]  # [g, K0]
            ctx_bias = torch.where(is_doc, logm[:, doc_of_key], 0.0)
        else:
            ctx_allowed = torch.ones(g, K0, dtype=torch.bool, device=dev)
            ctx_bias = torch.zeros(g, K0, dtype=logm.dtype, device=dev)
        block = torch.arange(g, device=dev).repeat_interleave(S)
        idx = torch.arange(g * S, device=dev)
        self_allowed = (block[:, None] == block[None, :]) & (idx[None, :] <= idx[:, None])
        allowed = torch.cat([ctx_allowed.repeat_interleave(S, 0), self_allowed], dim=1)
        bias = torch.cat([ctx_bias.repeat_interleave(S, 0),
                          torch.zeros(g * S, g * S, dtype=logm.dtype, device=dev)], dim=1)
        pos = (self.suffix_starts(cache, masks).repeat_interleave(S)
               + torch.arange(S, device=dev).repeat(g))
        ids = torch.tensor(seq, device=dev).repeat(g)
        past = DynamicCache(ddp_cache_data=list(zip(cache.keys, cache.values)))
        return self._forward(ids[None], pos[None], past, allowed[None], pos[None],
                             torch.cat([cache.key_pos, pos])[None], bias=bias[None],
                             **forward_kwargs)

    def _score_pack(self, cache: DocCache, seq: list[int], A: int,
                    masks: torch.Tensor) -> torch.Tensor:
        """``[g, A]`` per-token log-probabilities of the answer (the last A tokens of ``seq``)."""
        g, S = masks.shape[0], len(seq)
        # Logits at the last suffix token and all answer tokens but the last predict the answer.
        offsets = torch.arange(S - A - 1, S - 1, device=self.device)
        index = (torch.arange(g, device=self.device)[:, None] * S + offsets).reshape(-1)
        logits = _upcast(self._pack(cache, seq, masks, logits_index=index).logits[0])
        target = torch.tensor(seq[S - A:], device=self.device).repeat(g)
        lp = torch.log_softmax(logits, -1).gather(-1, target[:, None])[:, 0]
        return lp.view(g, A)

    # ------------------------------------------------------------------ attention mass (ADist)
    @torch.no_grad()
    def attention_mass(self, cache: DocCache, answer: str, mask: torch.Tensor | None = None,
                       per_layer: bool = False) -> torch.Tensor:
        """``[n]``: the answer's attention on each document, ADist-style.

        For every layer, head and answer-predicting query (the last suffix token and the answer
        tokens but the last -- the same positions whose logits score the answer), the attention
        probabilities on a document's keys are weighted by the keys' value norms (α·||v||) and
        summed per document; the result is averaged over layers, heads and queries and normalised
        to sum to 1. Probabilities come from the eager attention kernel (``output_attentions``),
        so the model is switched to eager attention for this one suffix pass. ``per_layer``
        returns ``[num_layers, n]`` instead, each layer normalised on its own.
        """
        if cache.num_docs == 0:
            raise DataError("document engine", None, "documents", "attention mass needs documents")
        mask = torch.ones(cache.num_docs, device=self.device) if mask is None else mask
        masks = self._check_masks(cache, mask.unsqueeze(0))
        answer_ids = self.answer_ids(answer)
        seq, A = cache.suffix_ids + answer_ids, len(answer_ids)
        S, K0 = len(seq), cache.num_keys
        rows = torch.arange(S - A - 1, S - 1, device=self.device)
        is_doc = cache.key_doc >= 0
        doc_of_key = cache.key_doc[is_doc]
        with _eager_attention(self.model):
            attentions = self._pack(cache, seq, masks, output_attentions=True).attentions
        layers = []
        for probs, values in zip(attentions, cache.values):
            heads = probs.shape[1]
            vnorm = values[0].float().norm(dim=-1)  # [kv_heads, K0]
            vnorm = vnorm.repeat_interleave(heads // vnorm.shape[0], 0)[:, is_doc]  # [H, D]
            weighted = probs[0][:, rows, :K0][:, :, is_doc].float() * vnorm[:, None, :]
            per_doc = torch.zeros(heads, A, cache.num_docs, device=self.device)
            per_doc.index_add_(2, doc_of_key, weighted)
            layers.append(per_doc.mean(dim=(0, 1)))
        layers = torch.stack(layers)
        if per_layer:
            return layers / layers.sum(-1, keepdim=True)
        mass = layers.mean(0)
        return mass / mass.sum()

    # ------------------------------------------------------------------ the exact reference
    @torch.no_grad()
    def concat_logprob(self, question: str, documents: Sequence[Document], answer: str,
                       keep: Sequence[int] | None = None, choices: list[str] | None = None,
                       per_token: bool = False) -> torch.Tensor:
        """log p(answer | ordinary prompt with the documents ``keep`` written in order), run as
        one plain forward with the model's own causal (and sliding-window) masks: the reference
        the engine is tested against, and the score a generator backend computes."""
        prompt = parallel_prompt(self.tokenizer, question, list(documents), choices)
        kept = range(len(prompt.docs)) if keep is None else keep
        context = encode_piece(self.tokenizer, prompt.prefix, first=True)
        for i in kept:
            context += encode_piece(self.tokenizer, prompt.docs[i])
        context += encode_piece(self.tokenizer, prompt.suffix)
        answer_ids = self.answer_ids(answer)
        ids = torch.tensor([context + answer_ids], device=self.device)
        index = torch.arange(len(context) - 1, ids.shape[1] - 1, device=self.device)
        logits = _upcast(self.model(input_ids=ids, logits_to_keep=index).logits[0])
        lp = torch.log_softmax(logits, -1).gather(
            -1, torch.tensor(answer_ids, device=self.device)[:, None])[:, 0]
        return lp if per_token else lp.sum()


def _upcast(logits: torch.Tensor) -> torch.Tensor:
    """Log-softmax in at least float32 (bf16 logits lose ~0.1 nats), float64 kept for checks."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def _bias_grad_kernel(bias: torch.Tensor | None, device: torch.device):
    """SDPA pinned to its reference (math) kernel while a CUDA forward's attention bias carries
    a gradient: G-Rerank's soft document mask. CUDA's memory-efficient backward refuses a
    gradient into the bias ("LSE is not correctly aligned (strideH)", seen with torch 2.11 on
    an H200 in benchmarks/gpu_suite.py's G-Rerank step) and flash attention takes no bias at
    all. The math kernel computes the same values with more memory; every pass without a
    differentiable bias (all the scoring readers) keeps the fast kernels, and CPU is untouched.
    """
    if bias is None or not bias.requires_grad or device.type != "cuda":
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


@contextmanager
def _eager_attention(model: Any):
    """Temporarily run ``model`` with eager attention (the only kernel that returns attention
    probabilities); not safe while another thread uses the same model object."""
    previous = model.config._attn_implementation
    if previous == "eager":
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(previous)
