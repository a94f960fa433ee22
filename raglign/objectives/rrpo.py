"""RRPO: reranking as a sequential decision process, optimised with a PPO-style objective.

(../shared/design/methods.md, "RRPO".) An episode picks k documents one at a time from the
retrieved list; the policy is Plackett-Luce over the reranker's scores,
π(d | s_t) = softmax(w / T) over the documents not yet chosen, so an episode is a sample without
replacement. Sampling uses the Gumbel-top-k trick: the order of ``w / T + Gumbel noise`` is
distributed exactly as sequential Plackett-Luce draws, in one vectorised step.

After step t the reward r_t is the reader's quality given the chosen d_1..d_t. The baseline is
*reference-anchored and deterministic*: V(s_t) is the return the frozen initial reranker earns
by greedily taking its own top documents from step t on, V(s_t) = Σ_{l≥t} γ^{l-t} r^ref_l with
r^ref_l the reward of the reference's top-l. Then the TD error is
δ_t = r_t + γ V(s_{t+1}) - V(s_t) = r_t - r^ref_t (the return-to-go terms cancel), i.e. "how much
better than the reference at this step", and generalised advantage estimation sums
Â_t = Σ_l (γλ)^l δ_{t+l}. No critic is trained. Advantages are normalised over the micro-batch
(the window).

The objective is PPO's clipped surrogate plus a KL penalty towards the reference policy,
``-(1/k) Σ_t min(ρ_t Â_t, clip(ρ_t, 1±ε) Â_t) + β KL(π_θ || π_ref)``, with the KL taken exactly
over the remaining candidates at every visited state (the distributions are small). The ratio
ρ_t = π_θ(a_t | s_t) / π_old(a_t | s_t) compares the policy being updated with the one that
sampled the episode (whose log-probabilities the rollout stores): several updates per rollout
(PPO epochs) move ρ away from 1, and the clip then removes the gradient of every step whose
ratio left [1 - ε, 1 + ε] in the direction its advantage favours. These are pure functions of
score tensors; the rollouts and rewards live in :mod:`raglign.training.losses.rrpo`.
"""

from __future__ import annotations

import torch

from raglign.objectives.gumbel import gumbel_noise


def _masked(logits: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    return logits if valid is None else logits.masked_fill(~valid, float("-inf"))


def plackett_luce_sample(logits: torch.Tensor, k: int, valid: torch.Tensor | None = None,
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """``[B, k]`` document indices, in the order chosen, drawn without replacement from the
    Plackett-Luce policy of ``logits`` ``[B, n]`` (Gumbel-top-k). Every row needs at least k
    valid documents."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if valid is not None and int(valid.sum(-1).min()) < k:
        raise ValueError(f"every row needs at least k={k} valid documents")
    noisy = logits.detach() + gumbel_noise(logits.shape, generator, logits.device, logits.dtype)
    return _masked(noisy, valid).topk(k, dim=-1).indices


def greedy_episode(logits: torch.Tensor, k: int, valid: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, k]``: the policy's deterministic episode, its top k in score order."""
    return _masked(logits.detach(), valid).topk(k, dim=-1).indices


def step_log_policies(logits: torch.Tensor, actions: torch.Tensor,
                      valid: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, k, n]``: log π(· | s_t) for every step t of the episodes ``actions`` — a log-softmax
    over the documents still available before step t (chosen and padded ones get -inf)."""
    B, n = logits.shape
    k = actions.shape[1]
    available = torch.ones(B, n, dtype=torch.bool, device=logits.device)
    if valid is not None:
        available = available & valid
    steps = []
    for t in range(k):
        steps.append(torch.log_softmax(logits.masked_fill(~available, float("-inf")), dim=-1))
        available = available.scatter(1, actions[:, t:t + 1], False)
    return torch.stack(steps, dim=1)


def action_log_probs(log_policies: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """``[B, k]``: log π(a_t | s_t), picked from :func:`step_log_policies`."""
    return log_policies.gather(-1, actions.unsqueeze(-1)).squeeze(-1)


def reference_anchored_advantages(rewards: torch.Tensor, ref_rewards: torch.Tensor,
                                  gamma: float = 1.0, lam: float = 0.95) -> torch.Tensor:
    """``[B, k]`` GAE advantages of the per-step rewards against the deterministic baseline
    V(s_t) = Σ_{l≥t} γ^{l-t} r^ref_l (the reference's greedy return-to-go; V(s_{k+1}) = 0),
    whose TD errors are δ_t = r_t - r^ref_t (module docstring), so V is never built."""
    B, k = rewards.shape
    deltas = rewards - ref_rewards
    adv = torch.zeros_like(rewards)
    running = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(k)):
        running = deltas[:, t] + gamma * lam * running
        adv[:, t] = running
    return adv


def normalize_advantages(adv: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Zero mean, unit standard deviation over the window (all of ``adv``). A window of
    identical advantages (for instance every episode equal to the reference's) carries no
    preference and becomes all zeros."""
    centred = adv - adv.mean()
    if adv.numel() < 2:
        return centred
    return centred / (adv.std() + eps)


def rrpo_loss(logits: torch.Tensor, ref_logits: torch.Tensor, actions: torch.Tensor,
              old_log_probs: torch.Tensor | None, advantages: torch.Tensor,
              valid: torch.Tensor | None = None, clip_eps: float = 0.2,
              kl_beta: float = 0.01) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO clipped surrogate over the k steps of each episode plus β·KL(π_θ || π_ref).

    ``logits`` (with grad) and ``ref_logits`` are ``[B, n]`` scores / temperature;
    ``old_log_probs`` ``[B, k]`` the log-probabilities of ``actions`` under the policy that
    sampled them; None when that is the policy being updated (ratio 1). Returns the loss and
    its parts: surrogate, KL to the reference, ``clip_fraction`` (steps whose ratio lies
    outside [1 - ε, 1 + ε]) and ``approx_kl``, the k3 estimate of KL(π_old || π_θ) from the
    sampled steps, E[(ρ - 1) - log ρ] (unbiased and never negative; Schulman's estimator, the
    usual PPO early-warning of a too large update).
    """
    log_pol = step_log_policies(logits, actions, valid)
    with torch.no_grad():
        ref_log_pol = step_log_policies(ref_logits, actions, valid)
    new_log_probs = action_log_probs(log_pol, actions)
    if old_log_probs is None:
        old_log_probs = new_log_probs.detach()
    ratio = torch.exp(new_log_probs - old_log_probs)
    clipped = ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)
    surrogate = torch.minimum(ratio * advantages, clipped * advantages).mean()
    # Unavailable documents have log π = -inf under both policies: their difference is set to
    # 0 (not NaN) so that neither the value nor the gradient sees -inf - -inf.
    diff = torch.where(torch.isfinite(log_pol), log_pol - ref_log_pol, 0.0)
    kl = (log_pol.exp() * diff).sum(-1).mean()
    log_ratio = (new_log_probs - old_log_probs).detach()
    parts = {"surrogate": surrogate.item(), "kl": kl.item(),
             "clip_fraction": (ratio.detach() != clipped.detach()).float().mean().item(),
             "approx_kl": (log_ratio.exp() - 1 - log_ratio).mean().item()}
    return -surrogate + kl_beta * kl, parts
