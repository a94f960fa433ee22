"""Rerankers: cross-encoders and bi-encoders behind one trainable ``nn.Module`` interface.

Every training objective in raglign (InfoNCE, the KL distillations, EMDR, Gumbel masks, RRPO)
needs the same thing from a reranker: a ``[B, n]`` tensor of scores with gradients, one row per
query and one column per candidate. :meth:`Reranker.forward_scores` is that; inference
(:meth:`Reranker.score`, :meth:`Reranker.rank`) and saving are shared on top of it.

* :class:`CrossEncoderReranker` — ``AutoModelForSequenceClassification`` with one label; the
  score is the raw logit of the (query, document) pair. Saved as a plain transformers
  directory, which ``sentence_transformers.CrossEncoder(path)`` loads as is (its ``predict``
  applies a sigmoid by default, a monotone map of our logit; pass ``activation_fn=Identity()`` to
  get the logit itself).
* :class:`BiEncoderReranker` — one shared :class:`~raglign.models.encoders.Encoder` tower for
  queries and documents; the score is the cosine or dot product of the embeddings. Cosine
  scores lie in [-1, 1]: losses that need sharper logits apply their own temperature.
  Saved as a sentence-transformers directory (``SentenceTransformer(path)``).

Documents are strings; build them from a title and a passage with :func:`doc_text` so that
training, retrieval and evaluation all show the model the same text.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from raglign.errors import ConfigError
from raglign.models.encoders import (
    DEFAULT_MAX_LENGTH,
    Encoder,
    load_encoder,
    model_max_length,
    read_layout,
    resolve_device,
    resolve_dtype,
)
from raglign.batching import ENCODER_TOKEN_BUDGET, forward_length_sorted, token_budget
from raglign.models.registry import resolve_model

logger = logging.getLogger(__name__)

KINDS = ("cross", "bi")
SIMILARITIES = ("cosine", "dot")


def doc_text(title: str | None, text: str) -> str:
    """The string a reranker or encoder sees for a document: ``"title\\ntext"``.

    The title goes on its own first line (the layout of the Wikipedia passages the retrieval
    corpora ship in); an empty or missing title gives the text alone, never a leading newline.
    """
    title = (title or "").strip()
    return f"{title}\n{text}" if title else text


def _check_groups(queries: list[str], docs: list[list[str]]) -> int:
    """The common group size n; unequal groups are an error (callers pad to a fixed n)."""
    if len(queries) != len(docs):
        raise ValueError(f"{len(queries)} queries but {len(docs)} candidate lists")
    if not queries:
        raise ValueError("forward_scores needs at least one query")
    n = len(docs[0])
    for i, group in enumerate(docs):
        if len(group) != n:
            raise ValueError(f"query {i} has {len(group)} candidates, query 0 has {n}; "
                             "forward_scores needs equal-size groups (pad or subsample first)")
    if n == 0:
        raise ValueError("forward_scores needs at least one candidate per query")
    return n


class Reranker(torch.nn.Module):
    """Base class: ``forward_scores`` (with grad) plus shared inference and ranking."""

    kind: str
    max_length: int

    def forward_scores(self, queries: list[str], docs: list[list[str]]) -> torch.Tensor:
        """``[B, n]`` float32 scores with gradients; ``docs[i]`` are query ``i``'s n candidates.

        All groups must have the same size n (a ``ValueError`` says which differs): training
        groups are fixed-size by construction, and a ragged batch would need padding values that
        silently change a softmax or KL loss.
        """
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @contextlib.contextmanager
    def _inference(self):
        """Eval mode (no dropout) for the duration, restoring the caller's train/eval mode."""
        was_training = self.training
        self.eval()
        try:
            yield
        finally:
            self.train(was_training)

    @torch.no_grad()
    def score(self, query: str, documents: list[str], batch_size: int = 32) -> list[float]:
        """One score per document (higher = more relevant), in eval mode, ``batch_size`` at once."""
        documents = list(documents)
        scores: list[float] = []
        with self._inference():
            for start in range(0, len(documents), batch_size):
                chunk = documents[start:start + batch_size]
                scores.extend(self.forward_scores([query], [chunk])[0].tolist())
        return scores

    def rank(self, query: str, documents: list[str], batch_size: int = 32) -> list[int]:
        """Indices of ``documents`` from most to least relevant (ties keep input order)."""
        scores = self.score(query, documents, batch_size=batch_size)
        return sorted(range(len(scores)), key=lambda i: -scores[i])

    def save(self, path: str | os.PathLike, model_card: str | None = None) -> None:
        raise NotImplementedError


class CrossEncoderReranker(Reranker):
    """(query, document) → one logit, from a sequence-classification head with ``num_labels=1``."""

    kind = "cross"

    def __init__(self, model, tokenizer, max_length: int = DEFAULT_MAX_LENGTH,
                 token_budget: int | None = None):
        super().__init__()
        if model.config.num_labels != 1:
            raise ConfigError(f"a cross-encoder reranker needs num_labels=1, the model has "
                              f"{model.config.num_labels}")
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.token_budget = token_budget  # None: batching.ENCODER_TOKEN_BUDGET's

    def token_lengths(self, firsts: list[str], seconds: list[str]) -> list[int]:
        """Tokens per (query, document) pair after truncation, as the forward encodes them."""
        return [len(x) for x in self.tokenizer(firsts, seconds, truncation="longest_first",
                                               max_length=self.max_length)["input_ids"]]

    def forward_scores(self, queries: list[str], docs: list[list[str]]) -> torch.Tensor:
        n = _check_groups(queries, docs)
        firsts = [q for q in queries for _ in range(n)]
        seconds = [d for group in docs for d in group]
        # "longest_first" truncation, as sentence-transformers' CrossEncoder does, so scores
        # match it exactly for any length. Pairs run length-sorted under the token budget (see
        # Encoder.embed: a pair's logit does not depend on its batch-mates).
        lengths = self.token_lengths(firsts, seconds)

        def forward(idx: list[int]) -> torch.Tensor:
            enc = self.tokenizer([firsts[i] for i in idx], [seconds[i] for i in idx],
                                 padding=True, truncation="longest_first",
                                 max_length=self.max_length, return_tensors="pt").to(self.device)
            return self.model(**enc).logits.float()

        budget = token_budget(self.device, self.token_budget, ENCODER_TOKEN_BUDGET)
        logits = forward_length_sorted(lengths, budget, forward)
        return logits.view(len(queries), n)

    def save(self, path: str | os.PathLike, model_card: str | None = None) -> None:
        """A transformers directory that ``CrossEncoder(path)`` and ``AutoModelFor…`` load."""
        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(root)
        # The saved model_max_length is what CrossEncoder reads as max_seq_length. Set only for
        # the write: the tokenizer object may be shared with other models (a test's fixture).
        before, self.tokenizer.model_max_length = self.tokenizer.model_max_length, self.max_length
        try:
            self.tokenizer.save_pretrained(root)
        finally:
            self.tokenizer.model_max_length = before
        if model_card is not None:
            (root / "README.md").write_text(model_card)


class BiEncoderReranker(Reranker):
    """Query and documents embedded by one shared :class:`Encoder`; score = cosine or dot."""

    kind = "bi"

    def __init__(self, encoder: Encoder, similarity: str = "cosine"):
        super().__init__()
        if similarity not in SIMILARITIES:
            raise ConfigError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
        self.encoder = encoder
        self.similarity = similarity

    @property
    def max_length(self) -> int:
        return self.encoder.max_length

    def forward_scores(self, queries: list[str], docs: list[list[str]]) -> torch.Tensor:
        n = _check_groups(queries, docs)
        q = self.encoder.embed(list(queries))
        d = self.encoder.embed([t for group in docs for t in group]).view(len(queries), n, -1)
        if self.similarity == "cosine":
            q, d = F.normalize(q, dim=-1), F.normalize(d, dim=-1)
        return torch.einsum("bh,bnh->bn", q, d)

    @torch.no_grad()
    def score(self, query: str, documents: list[str], batch_size: int = 32) -> list[float]:
        """As the base method, but the query is embedded once rather than once per batch."""
        with self._inference():
            q = self.encoder.embed([query])
            if self.similarity == "cosine":
                q = F.normalize(q, dim=-1)
            scores: list[float] = []
            for start in range(0, len(documents), batch_size):
                d = self.encoder.embed(list(documents[start:start + batch_size]))
                if self.similarity == "cosine":
                    d = F.normalize(d, dim=-1)
                scores.extend((d @ q[0]).tolist())
        return scores

    def save(self, path: str | os.PathLike, model_card: str | None = None) -> None:
        """A sentence-transformers directory that ``SentenceTransformer(path)`` loads."""
        self.encoder.save(path, similarity=self.similarity, model_card=model_card)


def _load_cross(path: str, max_length: int | None, dtype: torch.dtype) -> CrossEncoderReranker:
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    src = str(read_layout(path).transformer_dir) if Path(path).is_dir() else path
    config = AutoConfig.from_pretrained(src)
    archs = getattr(config, "architectures", None) or []
    has_head = any(a.endswith("ForSequenceClassification") for a in archs)
    if has_head and config.num_labels != 1:
        raise ConfigError(f"{path}: a sequence classifier with {config.num_labels} labels is not a "
                          "reranker (needs num_labels=1)")
    if not has_head:
        logger.warning("%s has no sequence-classification head: the cross-encoder's score head "
                       "starts RANDOM (train it before its scores mean anything)", path)
    tokenizer = AutoTokenizer.from_pretrained(src)
    model = AutoModelForSequenceClassification.from_pretrained(src, num_labels=1, dtype=dtype)
    return CrossEncoderReranker(model, tokenizer,
                                model_max_length(config, tokenizer, None, max_length))


def load_reranker(name_or_path: str, kind: str = "cross", max_length: int | None = None,
                  device=None, dtype=None, **kw) -> Reranker:
    """A reranker from a packaged short name (``minilm-l6``), a local directory or a hub id.

    ``kind="cross"``: a checkpoint with a one-label classification head loads as is; a bare
    encoder (or a sentence-transformers directory) gets a new, randomly initialised head (a
    warning says so). ``kind="bi"``: the encoder with the directory's pooling and normalisation
    (mean + normalise for plain checkpoints); ``similarity`` defaults to the directory's
    ``similarity_fn_name`` or cosine. Extra keywords for ``bi``: ``similarity``, ``pooling``,
    ``normalize``. ``max_length=None`` keeps the model's own limit (sentence-transformers'
    ``max_seq_length``, else the tokenizer's, else 512); ``dtype="bfloat16"`` halves memory on
    GPUs (scores are returned in float32 either way).
    """
    if kind not in KINDS:
        raise ConfigError(f"reranker kind must be one of {KINDS}, got {kind!r}")
    path = resolve_model(name_or_path)
    if kind == "cross":
        if kw:
            raise ConfigError(f"unexpected options for a cross-encoder: {', '.join(kw)}")
        reranker: Reranker = _load_cross(path, max_length, resolve_dtype(dtype))
    else:
        similarity = kw.pop("similarity", None)
        unknown = set(kw) - {"pooling", "normalize"}
        if unknown:
            raise ConfigError(f"unexpected options for a bi-encoder: {', '.join(sorted(unknown))}")
        encoder = load_encoder(path, max_length=max_length, dtype=dtype, device="cpu", **kw)
        if similarity is None and Path(path).is_dir():
            similarity = read_layout(path).similarity
        reranker = BiEncoderReranker(encoder, similarity or "cosine")
    return reranker.to(resolve_device(device)).eval()
