"""RRPO's reader as a pool of Ray actors, apart from the Train workers.

Why actors: a reader in every Train worker means one copy of the LLM and one reward cache per
worker, on the worker's own device. The pool holds ``rrpo.reward_actors`` readers with their own
CPUs / GPUs (``reward_actor_cpus`` / ``reward_actor_gpus``), started by the job's driver
(:func:`start_reward_actors`) and handed to every worker, which wraps them in a
:class:`RewardPool` and passes it to the loss.

Routing: a request goes to the actor that a stable hash (BLAKE2b, not Python's per-process
``hash``) of its key, (row id, sorted chosen indices), names. Every worker sends a given subset
to the same actor, and an actor runs one call at a time, so each subset is read once in the
whole job (:class:`raglign.training.rrpo_rewards.RewardReader` caches it). A worker sends one
call per actor per rollout, all at once, and blocks until every reward is in — at once, or,
with ``rrpo.overlap_rollouts``, after the current step's updates, which run meanwhile.

Failures: an actor that dies (killed, out of memory, its node lost) is restarted by Ray up to
``reward_actor_restarts`` times, and calls in flight are retried on the replacement; the
replacement loads the reader again and starts with an empty cache, which only costs
recomputation (rewards are deterministic). Each answer carries the actor's start time and its
busy seconds so far, from which the workers report, per logging window, the fraction of time the
actors sat idle, the fraction the worker spent waiting for rewards, and restarts seen.
"""

from __future__ import annotations

import hashlib
import time

import ray

from raglign.training.rrpo_rewards import (Answer, RewardKey, RewardReader, RewardRequest,
                                          RewardSource, reader_generator)
from raglign.training_config import RRPOOptions


def route(key: RewardKey, actors: int) -> int:
    """The actor index of ``key``: the same in every process and every run."""
    digest = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % actors


class RewardActor:
    """One reader and its cache, behind a Ray actor (:func:`start_reward_actors`)."""

    def __init__(self, options: dict, device: str):
        o = RRPOOptions.model_validate(options)
        self.reader = RewardReader(reader_generator(o, device), o)
        self.started = time.time()

    def rewards(self, requests: list[RewardRequest]) -> tuple[list[float], int, tuple]:
        """Rewards and fresh reads as :meth:`RewardReader.rewards`, and the actor's state:
        (start time, now, busy seconds since start, subsets read since start)."""
        values, reads = self.reader.rewards(requests)
        return values, reads, (self.started, time.time(), self.reader.busy_s, self.reader.reads)

    def state(self) -> tuple:
        """(start time, now, busy seconds since start, subsets read since start)."""
        return self.started, time.time(), self.reader.busy_s, self.reader.reads


def start_reward_actors(options: RRPOOptions) -> list:
    """``options.reward_actors`` reward actors, each reserving ``reward_actor_cpus`` CPUs and
    ``reward_actor_gpus`` GPUs (a transformers reader on CUDA when > 0; a vLLM reader's engine,
    kept in the actor, on all of them; none for an HTTP server); they load their readers in
    the background."""
    device = "cuda" if options.reward_actor_gpus > 0 else "cpu"
    cls = ray.remote(RewardActor)
    actors = []
    for _ in range(options.reward_actors):
        opts = {"num_cpus": options.reward_actor_cpus, "num_gpus": options.reward_actor_gpus,
                "max_restarts": options.reward_actor_restarts, "max_task_retries": -1,
                "runtime_env": {"env_vars": {"TOKENIZERS_PARALLELISM": "false"}}}
        actors.append(cls.options(**opts).remote(options.model_dump(mode="json"), device))
    return actors


def stop_reward_actors(actors: list) -> None:
    """Kill the pool (for good: no restart)."""
    for actor in actors:
        ray.kill(actor, no_restart=True)


class RewardPool(RewardSource):
    """A Train worker's client of the reward actors (:class:`RewardSource`)."""

    def __init__(self, actors: list):
        if not actors:
            raise ValueError("a reward pool needs at least one actor")
        self.actors = actors
        self._last: dict[int, tuple] = {}  # actor -> its last state seen
        self._busy = self._wall = 0.0  # the actors' busy and elapsed seconds in the window
        self._restarts = 0
        self._wait = 0.0
        self._since = time.perf_counter()

    def rewards(self, requests: list[RewardRequest]) -> tuple[list[float], int]:
        return self.submit(requests)()

    def submit(self, requests: list[RewardRequest]) -> Answer:
        """One call per actor, sent now; the answer waits for them (the wait is the worker's
        idle time). An actor runs its calls in the order a worker sent them."""
        groups: dict[int, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(route(r.key, len(self.actors)), []).append(i)
        refs = {a: self.actors[a].rewards.remote([requests[i] for i in idx])
                for a, idx in groups.items()}

        def answer() -> tuple[list[float], int]:
            start = time.perf_counter()
            answers = dict(zip(refs, ray.get(list(refs.values()))))
            self._wait += time.perf_counter() - start
            values: list[float] = [0.0] * len(requests)
            reads = 0
            for a, (got, fresh, state) in answers.items():
                for i, v in zip(groups[a], got):
                    values[i] = v
                reads += fresh
                self._observe(a, state)
            return values, reads

        return answer

    def _observe(self, actor: int, state: tuple) -> None:
        """Add the actor's busy and elapsed seconds since the last answer seen from it (since
        its start, if it was restarted in between)."""
        started, now, busy, _ = state
        last = self._last.get(actor)
        if last is not None and last[0] == started:
            self._busy += busy - last[2]
            self._wall += now - last[1]
        else:
            self._restarts += last is not None
            self._busy += busy
            self._wall += now - started
        self._last[actor] = state

    def pop_stats(self) -> dict[str, float]:
        """Since the last call: ``worker_idle``, the fraction of this worker's time spent
        waiting for rewards; ``actor_idle``, the fraction of the actors' time (as seen by this
        worker's answers) not spent reading; ``actor_restarts``, replacements seen."""
        now = time.perf_counter()
        out = {"worker_idle": self._wait / max(now - self._since, 1e-9),
               "actor_idle": 1.0 - self._busy / self._wall if self._wall > 0 else 0.0,
               "actor_restarts": float(self._restarts)}
        self._busy = self._wall = self._wait = 0.0
        self._restarts = 0
        self._since = now
        return out
