"""``objective: rrpo`` of ``raglign train``: RRPO's rollouts and rewards as a training loss.

The trainer owns data order, DDP, optimizer, schedule, checkpoints, resume and export; the rows
are canonical (:mod:`raglign.pipeline.lm_table`). This module holds the RL part, built once per
worker (:class:`RRPOLoss`):

* the **reader** (the reward model: a frozen generator) and the **reference reranker** (the
  initial reranker, rebuilt from ``model`` with the same seed, so it equals the trained model's
  starting point also after a resume);
* the **rollout**, the first time a micro-batch of a global batch is seen: the reranker's
  scores (with grad, through DDP), one episode per question sampled from its Plackett-Luce
  policy, the reference's greedy episode, the rewards of every prefix of both
  (:meth:`RRPOLoss.rewards`), reference-anchored advantages normalised over the micro-batch, and
  the episode's log-probabilities under the sampling policy, all stored (:class:`Rollout`);
* every **update** on it (that first pass included): the clipped surrogate + KL of the current
  scores against the stored rollout (:mod:`raglign.objectives.rrpo`).

With ``rrpo.overlap_rollouts`` the rollout starts earlier, in :meth:`RRPOLoss.before_updates`,
which the loop calls before a step's updates with the step's micro-batches and the next step's:
the episodes are sampled there from a no-grad forward and their rewards requested, and the
first update only waits for them; the next step's rewards are read during this step's updates.

PPO: the loop takes ``ppo_epochs x minibatches`` optimizer steps per global batch
(:meth:`RRPOLoss.update_plan`). The first pass's ratio is exactly 1 (the sampling policy is the
one being updated: with ``ppo_epochs: 1, minibatches: 1`` this is one policy-gradient step per
rollout); later passes see the updated policy, so the ratio moves and the clip binds. The
episodes use the worker's global torch RNG, which checkpoints save per rank, and checkpoints
fall between global batches, so a resumed run samples what an uninterrupted one would have.
Rewards are cached per (question, chosen set): a subset is read once per worker, however often
episodes revisit it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from raglign.training.loss import Loss
from raglign.training.reranker import build_reranker
from raglign.training.rrpo_rewards import (RewardReader, RewardRequest, RewardSource,
                                          reader_generator)
from raglign.training_config import TrainConfig

if TYPE_CHECKING:
    import torch

    from raglign.training.batches import Batch


@dataclass
class Rollout:
    """What the updates of one micro-batch reuse: ``[B, k]`` actions, their log-probabilities
    under the sampling policy and their advantages; ``[B, n]`` reference scores (the reference
    is frozen, so they are computed once)."""

    actions: torch.Tensor
    old_log_probs: torch.Tensor
    advantages: torch.Tensor
    ref_logits: torch.Tensor


class RRPOLoss(Loss):
    """Per-worker RRPO loss: ``loss = RRPOLoss(cfg, device, rewards)(model, batch)``.

    ``rewards`` answers the reward requests: the job's pool of reward actors
    (:class:`raglign.pipeline.reward_actors.RewardPool`), or None for a reader loaded here, in
    the worker, on its device (local mode, ``rrpo.reward_actors: 0``)."""

    def __init__(self, cfg: TrainConfig, device, rewards: RewardSource | None = None):
        o = self.options = cfg.rrpo
        self.temperature = cfg.score_temperature
        if rewards is None:
            if o.reward_actors:
                raise ValueError(f"rrpo.reward_actors is {o.reward_actors} but no reward actors "
                                 "were given to the loss")
            rewards = RewardReader(reader_generator(o, str(device)), o)
        self.source = rewards
        self.reference = build_reranker(cfg, device).eval().requires_grad_(False)
        self.device = device
        self._rollouts: dict[tuple[str, ...], Rollout] = {}
        self._pending: dict[tuple[str, ...], Callable[[], Rollout]] = {}  # sampled, reading
        self._window: dict[str, list[float]] = {}  # name -> [sum, count]

    # ------------------------------------------------------------------ rewards
    def rewards(self, batch: Batch, episodes: list[torch.Tensor]) -> list[torch.Tensor]:
        """``[B, k]`` rewards of each episode's prefixes: entry ``(i, t)`` is the reward of the
        first t + 1 chosen documents of row i, all requested from the reward source at once
        (each distinct subset once)."""
        return self.request_rewards(batch, episodes)()

    def request_rewards(self, batch: Batch, episodes: list[torch.Tensor]):
        """:meth:`rewards`, sent now; calling the result waits for them."""
        import torch

        cols = batch.columns
        keys = [[[(cols["id"][i], tuple(sorted(ep[i, :t + 1].tolist())))
                  for t in range(ep.shape[1])] for i in range(ep.shape[0])] for ep in episodes]
        row_of = {rid: i for i, rid in enumerate(cols["id"])}
        distinct = list(dict.fromkeys(key for ep in keys for row in ep for key in row))
        requests = []
        for rid, chosen in distinct:
            i = row_of[rid]
            choices = cols["choices"][i]
            requests.append(RewardRequest(
                (rid, chosen), cols["question"][i],
                tuple((cols["titles"][i][j], cols["texts"][i][j]) for j in chosen),
                cols["answer"][i], tuple(cols["answers"][i]), tuple(choices) if choices else None))
        answer = self.source.submit(requests)

        def collect() -> list[torch.Tensor]:
            values, reads = answer()
            self._add("reads", reads)
            got = dict(zip(distinct, values))
            return [torch.tensor([[got[key] for key in row] for row in ep], dtype=torch.float32,
                                 device=self.device) for ep in keys]

        return collect

    # ------------------------------------------------------------------ the loss
    def update_plan(self, micro_batches: int) -> list[list[int]]:
        """``ppo_epochs`` passes over the global batch, each ``minibatches`` optimizer steps of
        consecutive micro-batches; the previous global batch's rollouts are dropped."""
        o = self.options
        self._rollouts.clear()
        size = micro_batches // o.minibatches
        return [list(range(m * size, (m + 1) * size))
                for _ in range(o.ppo_epochs) for m in range(o.minibatches)]

    @property
    def looks_ahead(self) -> bool:
        return self.options.overlap_rollouts

    def before_updates(self, model, batches: list[Batch], upcoming: list[Batch] | None) -> None:
        """With ``overlap_rollouts``: sample the episodes of this step's micro-batches (unless
        the previous step did) and of ``upcoming``'s from the policy as it is now, and send
        their reward requests, this step's first (an actor answers in order). The updates then
        wait for this step's rewards only, while the actors read the next step's."""
        import torch

        if not self.looks_ahead:
            return
        scorer = getattr(model, "module", model)  # no DDP forward: nothing to all-reduce
        for batch in batches + (upcoming or []):
            key = tuple(batch.columns["id"])
            if key in self._pending:
                continue
            valid = batch.mask.to(self.device).bool()
            with torch.no_grad():
                logits = scorer(batch.queries, batch.docs).float() / self.temperature
            self._pending[key] = self.sample(batch, logits, valid)

    def sample(self, batch: Batch, logits: torch.Tensor, valid: torch.Tensor):
        """Sample one episode per question from ``logits`` (the policy now), take the
        reference's greedy episode, and send the rewards of both; calling the result waits for
        them and gives the :class:`Rollout`."""
        import torch

        from raglign.objectives.rrpo import (action_log_probs, greedy_episode,
                                             normalize_advantages, plackett_luce_sample,
                                             reference_anchored_advantages, step_log_policies)

        o = self.options
        with torch.no_grad():
            ref_logits = self.reference.forward_scores(batch.queries, batch.docs).float()
            ref_logits = ref_logits / self.temperature
            actions = plackett_luce_sample(logits, o.k, valid)
            old = action_log_probs(step_log_policies(logits.detach(), actions, valid), actions)
        ref_actions = greedy_episode(ref_logits, o.k, valid)
        collect = self.request_rewards(batch, [actions, ref_actions])

        def rollout() -> Rollout:
            rewards, ref_rewards = collect()
            adv = normalize_advantages(reference_anchored_advantages(rewards, ref_rewards,
                                                                     o.gamma, o.lam))
            self._add("reward", rewards[:, -1].mean().item())
            self._add("ref_reward", ref_rewards[:, -1].mean().item())
            return Rollout(actions, old, adv, ref_logits)

        return rollout

    def __call__(self, model, batch: Batch):
        import torch

        from raglign.objectives.rrpo import rrpo_loss

        o = self.options
        valid = batch.mask.to(self.device).bool()
        logits = model(batch.queries, batch.docs).float() / self.temperature  # [B, n], grad
        key = tuple(batch.columns["id"])
        if key not in self._rollouts:
            pending = self._pending.pop(key, None) or self.sample(batch, logits, valid)
            self._rollouts[key] = pending()
        r = self._rollouts[key]
        loss, parts = rrpo_loss(logits, r.ref_logits, r.actions, r.old_log_probs, r.advantages,
                                valid, o.clip_eps, o.kl_beta)
        for name in ("kl", "clip_fraction", "approx_kl"):
            self._add(name, parts[name])
        return loss

    def _add(self, name: str, value: float) -> None:
        total = self._window.setdefault(name, [0.0, 0])
        total[0] += value
        total[1] += 1

    def pop_means(self) -> dict[str, float]:
        """Means since the last call: per rollout, the sampled episode's final reward and the
        reference's, and ``reads``, the reader calls per rollout (falls as the reward cache
        fills); per update, the KL to the reference, the clip fraction and the approximate KL
        to the sampling policy (both 0 on a rollout's first update, where the ratio is 1,
        unless ``overlap_rollouts`` sampled it a step earlier or from another forward)."""
        window = {**self._window, **{k: [v, 1] for k, v in self.source.pop_stats().items()}}
        out = {f"rrpo_{k}": total / max(n, 1) for k, (total, n) in sorted(window.items())}
        self._window = {}
        return out

    @classmethod
    def describe(cls, cfg: TrainConfig) -> tuple[str, str]:
        r, lm = cfg.rrpo, cfg.rrpo.generator
        loss = (f"RRPO: PPO clipped surrogate (eps {r.clip_eps}) on episodes of {r.k} documents "
                f"sampled from the Plackett-Luce policy of the scores (temperature "
                f"{cfg.score_temperature}), reward `{r.reward}` from the frozen reader "
                f"`{lm.name}` ({lm.backend}, {lm.dtype}), advantages against the initial "
                f"reranker's greedy episode (gamma {r.gamma}, GAE lambda {r.lam}), KL weight "
                f"{r.kl_beta}; {r.ppo_epochs} PPO epochs x {r.minibatches} mini-batches per rollout batch"
                + ("; the next batch's episodes sampled and rewarded during this batch's "
                   "updates (one step off-policy)" if r.overlap_rollouts else ""))
        return f"gold answers over the first {r.n} candidates", loss
