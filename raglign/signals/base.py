"""What a labelling signal is: LLM requests for one query, then one number per candidate.

A signal never calls a generator directly. It *declares* the generations and scorings it needs
(:class:`Generate`, :class:`Score`) and later turns their results into values. That split is
what lets one signal run on every backend: the transformers actor executes the requests itself
(deduplicated, so ``answer_quality`` and ``dpa`` share one generation per document), while the
vLLM path turns them into rows of a Ray Dataset for a ``ray.data.llm`` processor. Signals that
need the parallel-prefill document engine (``attention``, and ``answer_logprob``/``loo_logprob``
in ``context: parallel``) use it in :meth:`Signal.compute`, since the engine's shared document
cache has no request/response form.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import pyarrow as pa

from raglign.errors import ConfigError
from raglign.metrics import normalize_answer

if TYPE_CHECKING:
    from raglign.pipeline.label import LabelConfig


Doc = tuple[str | None, str]


@dataclass(frozen=True)
class Generate:
    """Generate a continuation of one of the papers' prompts, described by its parts (not a
    rendered string) so that every backend renders it its own way from :mod:`raglign.prompts`.

    ``task``: ``qa`` (the QA prompt over ``docs``), ``rationale`` (RADIO's prompt with
    ``answer``) or ``judge`` (ARL2's relevance prompt: ``docs`` holds the one document).
    ``seed`` is per request (vLLM semantics): a sampled output must not depend on which other
    prompts share its batch.
    """

    task: str
    question: str
    docs: tuple[Doc, ...] = ()
    answer: str | None = None
    choices: tuple[str, ...] | None = None
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None


@dataclass(frozen=True)
class Score:
    """log p(answer | the QA prompt over ``docs``), summed over the answer's tokens."""

    question: str
    docs: tuple[Doc, ...]
    answer: str
    choices: tuple[str, ...] | None = None


Request = Generate | Score


@dataclass
class Item:
    """One query ready for labelling: its row, the gold answer alias used, its documents."""

    row: dict[str, Any]
    answer: str
    docs: list[Doc]

    @property
    def question(self) -> str:
        return self.row["question"]

    @property
    def choices(self) -> tuple[str, ...] | None:
        choices = self.row.get("choices")
        return tuple(choices) if choices else None

    @property
    def retrieval_scores(self) -> list[float]:
        """Retrieval scores, or ``-rank`` for all candidates when any score is missing (a
        rank is the only retrieval evidence every candidate list has)."""
        scores = [c.get("score") for c in self.row["candidates"]]
        if any(s is None for s in scores):
            return [-float(i) for i in range(len(scores))]
        return [float(s) for s in scores]


@dataclass
class Labels:
    """A signal's output for one query: one value per candidate (``None`` = not labelled),
    top-level columns it adds (the rationale text) and counters for the job summary."""

    values: list[float | None]
    columns: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)


class Models:
    """The models one worker holds, loaded once. ``engine_cache`` memoises the engine's document
    prefill per query so the three engine signals share it."""

    def __init__(self, tokenizer=None, generator=None, engine=None, encoder=None):
        self.tokenizer, self.generator, self.engine, self.encoder = tokenizer, generator, engine, encoder
        self._caches: dict[int, Any] = {}

    def engine_cache(self, item: Item):
        key = id(item)
        if key not in self._caches:
            choices = list(item.choices) if item.choices else None
            self._caches[key] = self.engine.prepare(item.question, item.docs, choices)
        return self._caches[key]

    def release(self) -> None:
        """Drop per-batch engine caches (they hold every document's key/value tensors)."""
        self._caches.clear()


class Signal:
    """One labelling signal. Subclasses set ``name`` (the candidate field it writes) and
    ``higher_is_better``, and implement :meth:`requests` and :meth:`compute`; ``columns`` names
    top-level columns it adds.

    ``higher_is_better`` is the one place a signal's ranking direction is written: every
    consumer that orders candidates by the field (evaluation, signal evaluation, mining, the
    G-Rerank report) reads it through :mod:`raglign.signals.ranking`. It has no default, so a
    new signal has to decide. A ``None`` value means "not labelled" and ranks after every
    labelled candidate in retrieval order, the same for all signals (see that module).
    """

    name: ClassVar[str]
    higher_is_better: ClassVar[bool]
    columns: ClassVar[dict[str, pa.DataType]] = {}
    summary: ClassVar[str] = ""

    def needs(self, cfg: LabelConfig) -> set[str]:
        """Models this signal needs under ``cfg``: a subset of {generator, engine, encoder}."""
        return {"generator"}

    def check(self, cfg: LabelConfig) -> None:
        """Raise :class:`ConfigError` when ``cfg`` cannot compute this signal."""

    def requests(self, item: Item, cfg: LabelConfig) -> list[Request]:
        return []

    def compute(self, item: Item, results: Mapping[Request, Any], models: Models,
                cfg: LabelConfig) -> Labels:
        raise NotImplementedError


def require_parallel(signal: Signal, cfg: LabelConfig) -> None:
    if cfg.backend != "transformers":
        raise ConfigError(f"signal {signal.name!r} needs the parallel-prefill engine, which runs "
                          f"on backend 'transformers' only (got backend {cfg.backend!r})")


class LikelihoodSignal(Signal):
    """An answer likelihood under some documents: read from the document engine with
    ``context: parallel``, or scored as ordinary concatenated prompts by any generator backend."""

    def needs(self, cfg: LabelConfig) -> set[str]:
        return {"engine"} if cfg.context == "parallel" else {"generator"}

    def check(self, cfg: LabelConfig) -> None:
        if cfg.context == "parallel":
            require_parallel(self, cfg)


def row_seed(seed: int, row_id: str) -> int:
    """A per-row sampling seed derived from the job seed, so a row's sampled output is the same
    whichever rows share its batch, and a resumed job reproduces it."""
    digest = hashlib.sha256(f"{seed}:{row_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def pick_answer(answers: list[str], candidates: list[Mapping[str, Any]], policy: str) -> str:
    """The gold alias the likelihood signals condition on.

    ``first``: the dataset's first alias. ``best``: the alias that the most candidate documents
    contain (SQuAD-normalised substring match; ties go to the earlier alias), i.e. the surface
    form the retrieved evidence actually states — scoring an alias no document uses measures
    the LLM's prior rather than the documents. Falls back to the first alias.
    """
    answers = [a for a in answers if a and a.strip()]
    if policy == "first" or len(answers) == 1:
        return answers[0]
    texts = [normalize_answer(f"{c.get('title') or ''} {c.get('text') or ''}") for c in candidates]
    best, best_hits = answers[0], -1
    for a in answers:
        na = normalize_answer(a)
        hits = sum(1 for t in texts if na and f" {na} " in f" {t} ")
        if hits > best_hits:
            best, best_hits = a, hits
    return best
