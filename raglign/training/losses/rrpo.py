"""``objective: rrpo`` of ``raglign train``: RRPO's rollouts and rewards as a training loss.

The trainer owns data order, DDP, optimizer, schedule, checkpoints, resume and export; the rows
are canonical (:mod:`raglign.pipeline.lm_table`). This module holds the RL part, built once per
worker (:class:`RRPOLoss`):

* the **reader** (the reward model: a frozen generator) and the **reference reranker** (the
  initial reranker, rebuilt from ``model`` with the same seed, so it equals the trained model's
  starting point also after a resume);
* per micro-batch: the reranker's scores (with grad, through DDP), one episode per question
  sampled from its Plackett-Luce policy, the reference's greedy episode, the rewards of every
  prefix of both (:meth:`RRPOLoss.rewards`), reference-anchored advantages and the clipped
  surrogate + KL (:mod:`raglign.objectives.rrpo`).

One optimizer step per rollout: the policy that sampled an episode is the one being updated, so
the ratio is 1 at the update and the clip does not bind; the gradient is the policy gradient with
the reference-anchored advantage, plus the KL pull towards the reference. The episodes use the
worker's global torch RNG, which checkpoints save per rank, so a resumed run samples what an
uninterrupted one would have. Rewards are cached per (question, chosen set): a subset is read
once per worker, however often episodes revisit it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from raglign.metrics import choice_accuracy, exact_match, f1_score
from raglign.prompts import parallel_prompt
from raglign.training.loss import Loss
from raglign.training.reranker import build_reranker
from raglign.training_config import TrainConfig

if TYPE_CHECKING:
    import torch

    from raglign.training.batches import Batch


def answer_reward(kind: str, prediction: str, answers: list[str],
                  choices: list[str] | None) -> float:
    """F1 or EM of the reader's answer against every gold alias; with options, whether the
    answer names the gold option (F1 and EM alike)."""
    if choices:
        return choice_accuracy(prediction, answers[0], len(choices), choices)
    return (f1_score if kind == "f1" else exact_match)(prediction, answers)


class RRPOLoss(Loss):
    """Per-worker RRPO loss: ``loss = RRPOLoss(cfg, device)(model, batch)``."""

    def __init__(self, cfg: TrainConfig, device):
        from raglign.models.generator_spec import build_generator

        o = self.options = cfg.rrpo
        self.temperature = cfg.score_temperature
        # Frozen (the generator wraps the model with gradients off).
        self.reader = build_generator(o.generator.model_copy(update={"device": str(device)}))
        self.reference = build_reranker(cfg, device).eval().requires_grad_(False)
        self.device = device
        self.cache: dict[tuple[str, frozenset[int]], float] = {}
        self._window: dict[str, float] = {}
        self._count = 0

    # ------------------------------------------------------------------ rewards
    def rewards(self, batch: Batch, episodes: list[torch.Tensor]) -> list[torch.Tensor]:
        """``[B, k]`` rewards of each episode's prefixes: entry ``(i, t)`` is the reward of the
        first t + 1 chosen documents of row i. Subsets not yet cached are read in one batch."""
        import torch

        cols = batch.columns
        keys = [[[(cols["id"][i], frozenset(ep[i, :t + 1].tolist())) for t in range(ep.shape[1])]
                 for i in range(ep.shape[0])] for ep in episodes]
        todo = list(dict.fromkeys(key for ep in keys for row in ep for key in row
                                  if key not in self.cache))
        self._add("reads", len(todo))
        if todo:
            self.cache.update(zip(todo, self._read(batch, todo)))
        return [torch.tensor([[self.cache[key] for key in row] for row in ep],
                             dtype=torch.float32, device=self.device) for ep in keys]

    def _read(self, batch: Batch, keys: list[tuple[str, frozenset[int]]]) -> list[float]:
        """The reader's reward for each (row id, chosen set), all in one ``score`` or
        ``generate`` call (length-sorted micro-batches sharing the prompt's prefix). The prompt
        is the ordinary QA prompt with the chosen documents in candidate order, so a set
        defines one prompt (and the cache key is exact)."""
        import torch

        cols, o = batch.columns, self.options
        row_of = {rid: i for i, rid in enumerate(cols["id"])}
        tok = self.reader.tokenizer
        rows = [row_of[rid] for rid, _ in keys]
        prompts = [parallel_prompt(tok, cols["question"][i],
                                   [(cols["titles"][i][j], cols["texts"][i][j]) for j in sorted(s)],
                                   cols["choices"][i]) for i, (_, s) in zip(rows, keys)]
        with torch.autocast(self.reader.device.type, enabled=False):
            if o.reward == "logprob":
                return [r.logprob for r in self.reader.score(prompts, [cols["answer"][i]
                                                                       for i in rows])]
            answers = self.reader.generate(prompts, max_new_tokens=o.max_new_tokens)
        return [answer_reward(o.reward, a, cols["answers"][i], cols["choices"][i])
                for a, i in zip(answers, rows)]

    # ------------------------------------------------------------------ the loss
    def __call__(self, model, batch: Batch):
        import torch

        from raglign.objectives.rrpo import (greedy_episode, normalize_advantages,
                                             plackett_luce_sample,
                                             reference_anchored_advantages, rrpo_loss)

        o = self.options
        valid = batch.mask.to(self.device).bool()
        logits = model(batch.queries, batch.docs).float() / self.temperature  # [B, n], grad
        with torch.no_grad():
            ref_logits = self.reference.forward_scores(batch.queries, batch.docs).float()
            ref_logits = ref_logits / self.temperature
        actions = plackett_luce_sample(logits, o.k, valid)
        ref_actions = greedy_episode(ref_logits, o.k, valid)
        rewards, ref_rewards = self.rewards(batch, [actions, ref_actions])
        adv = normalize_advantages(reference_anchored_advantages(rewards, ref_rewards, o.gamma,
                                                                 o.lam))
        # One update per rollout: the sampling policy is the one being updated.
        loss, parts = rrpo_loss(logits, ref_logits, actions, None, adv, valid, o.clip_eps,
                                o.kl_beta)
        self._add("reward", rewards[:, -1].mean().item())
        self._add("ref_reward", ref_rewards[:, -1].mean().item())
        # The surrogate's value (ratio 1, normalised advantages) and the clip fraction are 0 by
        # construction here; the KL is what the loss value tracks.
        self._add("kl", parts["kl"])
        self._count += 1
        return loss

    def _add(self, name: str, value: float) -> None:
        self._window[name] = self._window.get(name, 0.0) + value

    def pop_means(self) -> dict[str, float]:
        """Means over the micro-batches since the last call: the sampled episode's final reward
        and the reference's, the KL to the reference; ``reads`` is the reader calls per
        micro-batch (falls as the reward cache fills)."""
        n = max(self._count, 1)
        out = {f"rrpo_{k}": v / n for k, v in sorted(self._window.items())}
        self._window, self._count = {}, 0
        return out

    @classmethod
    def describe(cls, cfg: TrainConfig) -> tuple[str, str]:
        r, lm = cfg.rrpo, cfg.rrpo.generator
        loss = (f"RRPO: PPO clipped surrogate (eps {r.clip_eps}) on episodes of {r.k} documents "
                f"sampled from the Plackett-Luce policy of the scores (temperature "
                f"{cfg.score_temperature}), reward `{r.reward}` from the frozen reader "
                f"`{lm.name}` ({lm.dtype}), advantages against the initial reranker's greedy "
                f"episode (gamma {r.gamma}, GAE lambda {r.lam}), KL weight {r.kl_beta}")
        return f"gold answers over the first {r.n} candidates", loss
