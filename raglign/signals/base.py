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

from raglign.signals.items import Doc, Item

if TYPE_CHECKING:
    from raglign.signals.settings import SignalSettings

BACKENDS = ("transformers", "vllm", "http")
CONTEXTS = ("parallel", "concat")
# The one backend that holds the parallel-prefill document engine: vLLM and OpenAI-compatible
# servers expose neither attention weights nor masked attention over a shared prefill.
ENGINE_BACKEND = "transformers"


@dataclass(frozen=True)
class Generate:
    """Generate a continuation of one of the papers' prompts, described by its parts (not a
    rendered string) so that every backend renders it in the form it sends, all from
    :func:`raglign.prompts.render_task` / :func:`~raglign.prompts.task_messages`.

    ``task`` (:data:`raglign.prompts.TASKS`): ``qa`` (the QA prompt over ``docs``),
    ``rationale`` (RADIO's prompt with ``answer``) or ``judge`` (ARL2's relevance prompt:
    ``docs`` holds the one document).
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

    @property
    def sampling(self) -> dict[str, Any]:
        """The request's sampling settings as the fields of
        :class:`~raglign.models.generator.GenerationParams`, the one form every backend builds
        its own from (in process, vLLM, OpenAI API). A greedy request carries no seed: it would
        change no output, only split the transformers backend's generation groups."""
        return {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature,
                "top_p": self.top_p, "seed": self.seed if self.temperature > 0 else None}


@dataclass(frozen=True)
class Score:
    """log p(answer | the QA prompt over ``docs``), summed over the answer's tokens."""

    # Scored prompts are QA prompts (a class constant, so it stays out of the request's key).
    task: ClassVar[str] = "qa"

    question: str
    docs: tuple[Doc, ...]
    answer: str
    choices: tuple[str, ...] | None = None


Request = Generate | Score


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
    top-level columns it adds. Its options are a block of
    :class:`~raglign.signals.settings.SignalSettings`, defined in the signal's own module.

    ``higher_is_better`` is the one place a signal's ranking direction is written: every
    consumer that orders candidates by the field (evaluation, signal evaluation, mining, the
    G-Rerank report) reads it through :mod:`raglign.signals.ranking`. It has no default, so a
    new signal has to decide. A ``None`` value means "not labelled" and ranks after every
    labelled candidate in retrieval order, the same for all signals (see that module).

    Where a signal can run is declared here too, and checked by the job's config through
    :meth:`unsupported`: ``contexts`` it can be computed in, and :meth:`engine_use`, what it
    reads from the parallel-prefill document engine, which only the transformers backend has.
    """

    name: ClassVar[str]
    higher_is_better: ClassVar[bool]
    columns: ClassVar[dict[str, pa.DataType]] = {}
    summary: ClassVar[str] = ""
    contexts: ClassVar[tuple[str, ...]] = CONTEXTS

    def engine_use(self, context: str) -> str | None:
        """What the signal reads from the document engine in ``context``, worded to follow
        "it" in an error message; None when it needs no engine there (it then runs on every
        backend, through the requests it declares)."""
        return None

    def backends(self, context: str) -> tuple[str, ...]:
        """The backends that can compute this signal in ``context``."""
        return (ENGINE_BACKEND,) if self.engine_use(context) else BACKENDS

    def unsupported(self, backend: str, context: str) -> str | None:
        """Why this signal cannot run on ``backend`` in ``context``; None when it can."""
        if backend not in self.backends(context):
            return (f"signal {self.name!r} cannot run on backend {backend!r}: it "
                    f"{self.engine_use(context)}, and vLLM and OpenAI-compatible servers expose "
                    "neither attention internals nor masked attention; use backend: transformers "
                    "for it")
        if context not in self.contexts:
            return (f"signal {self.name!r} exists in context: {' or '.join(self.contexts)} only "
                    f"(got {context}); set context: {self.contexts[0]}")
        return None

    def needs(self, cfg: SignalSettings) -> set[str]:
        """Models this signal needs under ``cfg``: a subset of {generator, engine, encoder}."""
        return {"engine"} if self.engine_use(cfg.context) else {"generator"}

    def requests(self, item: Item, cfg: SignalSettings) -> list[Request]:
        return []

    def compute(self, item: Item, results: Mapping[Request, Any], models: Models,
                cfg: SignalSettings) -> Labels:
        raise NotImplementedError


class LikelihoodSignal(Signal):
    """An answer likelihood under some documents: read from the document engine with
    ``context: parallel``, or scored as ordinary concatenated prompts by any generator backend."""

    def engine_use(self, context: str) -> str | None:
        if context != "parallel":
            return None
        return ("scores in context: parallel with masked attention over a shared prefill "
                "(set context: concat to score ordinary prompts through the backend)")


def row_seed(seed: int, row_id: str) -> int:
    """A per-row sampling seed derived from the job seed, so a row's sampled output is the same
    whichever rows share its batch, and a resumed job reproduces it."""
    digest = hashlib.sha256(f"{seed}:{row_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF
