"""RRPO's rewards: the frozen reader's score of a question given a chosen subset of documents.

A reward request carries everything the reader needs (question, the chosen documents in
candidate order, gold answers, options), so it can be answered anywhere: by a
:class:`RewardReader` inside the Train worker (local mode, or ``rrpo.reward_actors: 0``) or by
one of the Ray reward actors that hold a :class:`RewardReader` each
(:mod:`raglign.pipeline.reward_actors`). Both answer through :class:`RewardSource`, so the loss
(:mod:`raglign.training.losses.rrpo`) does not know which.

The reader caches by :attr:`RewardRequest.key`, (row id, sorted chosen indices): the prompt lists
the chosen documents in candidate order, so a set defines one prompt and the cache is exact.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from raglign.metrics import choice_accuracy, exact_match, f1_score
from raglign.prompts import parallel_prompt
from raglign.training_config import RRPOOptions

if TYPE_CHECKING:
    from raglign.models.generator import Generator

RewardKey = tuple[str, tuple[int, ...]]


@dataclass(frozen=True)
class RewardRequest:
    """One (question, chosen subset) to score. ``answer`` is the alias the logprob reward
    scores; ``answers`` (every alias) and ``choices`` are what F1 / EM compare with."""

    key: RewardKey
    question: str
    documents: tuple[tuple[str | None, str], ...]
    answer: str
    answers: tuple[str, ...]
    choices: tuple[str, ...] | None


def answer_reward(kind: str, prediction: str, answers: list[str],
                  choices: list[str] | None) -> float:
    """F1 or EM of the reader's answer against every gold alias; with options, whether the
    answer names the gold option (F1 and EM alike)."""
    if choices:
        return choice_accuracy(prediction, answers[0], len(choices), choices)
    return (f1_score if kind == "f1" else exact_match)(prediction, answers)


def reader_generator(options: RRPOOptions, device: str) -> Generator:
    """The frozen reader of ``options``: the one place that builds it, for the in-worker reader
    and the reward actors alike. ``device`` places a transformers reader. A vLLM or HTTP
    reader runs its ``ray.data.llm`` processor's stages in the calling process, built once
    (:mod:`raglign.models.processor_generator`, ``in_process``): a vLLM engine loads once on
    the actor's GPUs and serves every rollout, an HTTP reader keeps its client."""
    from raglign.models.generator_spec import build_generator

    spec = options.generator
    if spec.backend == "transformers":
        return build_generator(spec.model_copy(update={"device": device}))
    return build_generator(spec, in_process=True)


Answer = Callable[[], tuple[list[float], int]]


class RewardSource(ABC):
    """Answers reward requests, in order."""

    @abstractmethod
    def rewards(self, requests: list[RewardRequest]) -> tuple[list[float], int]:
        """The reward of each request, and how many of them the reader actually computed
        (the rest came from a cache); blocks until they are all in."""

    def submit(self, requests: list[RewardRequest]) -> Answer:
        """Start reading ``requests``; calling the result blocks until :meth:`rewards`' answer
        is in. A source whose reader runs elsewhere (the reward actors) returns at once, so
        the caller can work meanwhile; by default the answer is computed here and now."""
        answer = self.rewards(requests)
        return lambda: answer

    def pop_stats(self) -> dict[str, float]:
        """Window statistics since the last call (reward actors: idle fractions); none here."""
        return {}


class RewardReader(RewardSource):
    """A frozen reader and its reward cache. ``reads`` counts the subsets it has computed and
    ``busy_s`` the seconds spent computing them, since it was built."""

    def __init__(self, generator: Generator, options: RRPOOptions):
        self.generator = generator
        self.options = options
        self.cache: dict[RewardKey, float] = {}
        self.reads = 0
        self.busy_s = 0.0

    def rewards(self, requests: list[RewardRequest]) -> tuple[list[float], int]:
        todo = list({r.key: r for r in requests if r.key not in self.cache}.values())
        if todo:
            start = time.perf_counter()
            self.cache.update(zip((r.key for r in todo), self.read(todo)))
            self.busy_s += time.perf_counter() - start
            self.reads += len(todo)
        return [self.cache[r.key] for r in requests], len(todo)

    def read(self, requests: list[RewardRequest]) -> list[float]:
        """The reader's reward of each request, all in one ``score`` or ``generate`` call
        (length-sorted micro-batches sharing the prompt's prefix), with autocast off: the loss
        may run under the trainer's bf16 autocast, the reader keeps its own dtype."""
        import contextlib

        import torch

        o = self.options
        tok = getattr(self.generator, "tokenizer", None)
        prompts = [parallel_prompt(tok, r.question, list(r.documents),
                                   list(r.choices) if r.choices else None) for r in requests]
        device = getattr(self.generator, "device", None)
        with (torch.autocast(device.type, enabled=False) if device is not None
              else contextlib.nullcontext()):
            if o.reward == "logprob":
                return [s.logprob for s in self.generator.score(prompts,
                                                                [r.answer for r in requests])]
            answers = self.generator.generate(prompts, max_new_tokens=o.max_new_tokens)
        return [answer_reward(o.reward, a, list(r.answers), list(r.choices) if r.choices
                              else None) for a, r in zip(answers, requests)]
