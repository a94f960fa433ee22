"""RRPO: the Plackett-Luce policy, reference-anchored advantages and the clipped objective checked
against closed forms; the trainer's rollouts and rewards against the reader computed directly;
``raglign train`` with ``objective: rrpo`` end to end on Ray Train.

The reranker is conftest's tiny random BERT and the reader conftest's tiny Llama (SmolLM2's
architecture and tokenizer) saved to a directory, loaded by the same path as a real model.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch

from raglign.config import load_job, validate
from raglign.data.io import write_rows
from raglign.errors import ConfigError, DataError
from raglign.objectives.rrpo import (action_log_probs, greedy_episode, normalize_advantages,
                                     plackett_luce_sample, reference_anchored_advantages,
                                     rrpo_loss, step_log_policies)
from raglign.training_config import TrainConfig
from test_train_gumbel import _rows, canonical_dir  # noqa: F401 (fixture)


def pl_probability(logits: list[float], order: tuple[int, ...]) -> float:
    """Plackett-Luce probability of choosing ``order`` first, by the textbook product."""
    left, p = list(range(len(logits))), 1.0
    for a in order:
        p *= math.exp(logits[a]) / sum(math.exp(logits[j]) for j in left)
        left.remove(a)
    return p


def test_gumbel_top_k_samples_plackett_luce_and_skips_padding():
    logits = torch.tensor([[1.0, 0.0, -0.5, 0.3]])
    valid = torch.tensor([[True, True, True, False]])
    gen = torch.Generator().manual_seed(0)
    N = 20000
    actions = plackett_luce_sample(logits.expand(N, -1), 2, valid.expand(N, -1), gen)
    assert not (actions == 3).any()
    counts: dict[tuple[int, int], int] = {}
    for a, b in actions.tolist():
        counts[(a, b)] = counts.get((a, b), 0) + 1
    for order in itertools.permutations(range(3), 2):
        expected = pl_probability([1.0, 0.0, -0.5], order)
        assert counts.get(order, 0) / N == pytest.approx(expected, abs=0.012), order
    with pytest.raises(ValueError, match="at least k=3"):
        plackett_luce_sample(logits, 3, torch.tensor([[True, True, False, False]]))


def test_step_policies_give_the_plackett_luce_log_probability_and_its_gradient():
    logits = torch.tensor([[0.2, -1.0, 0.7, 0.1, 0.0]], dtype=torch.float64, requires_grad=True)
    valid = torch.tensor([[True, True, True, True, False]])
    actions = torch.tensor([[2, 0, 3]])
    log_pol = step_log_policies(logits, actions, valid)
    assert torch.isinf(log_pol[0, 1, 2]) and torch.isinf(log_pol[0, 2, 0])  # chosen: gone
    assert torch.isinf(log_pol[0, :, 4]).all()  # padding: never available
    total = action_log_probs(log_pol, actions).sum()
    assert total.item() == pytest.approx(math.log(pl_probability(logits[0, :4].tolist(),
                                                                 (2, 0, 3))), abs=1e-12)
    assert torch.autograd.gradcheck(
        lambda x: action_log_probs(step_log_policies(x, actions, valid), actions), (logits,))
    assert greedy_episode(logits, 3, valid).tolist() == [[2, 0, 3]]


def test_advantages_are_gae_of_the_reward_minus_the_reference_reward():
    r = torch.tensor([[0.2, 0.5, 1.0], [0.0, 0.0, 0.3]])
    ref = torch.tensor([[0.1, 0.6, 0.6], [0.0, 0.0, 0.3]])
    gamma, lam = 0.9, 0.8
    adv = reference_anchored_advantages(r, ref, gamma, lam)
    delta = r - ref  # V(s_t) = reference's greedy return-to-go: the TD error telescopes to this
    for b in range(2):
        for t in range(3):
            want = sum((gamma * lam) ** (l - t) * delta[b, l].item() for l in range(t, 3))
            assert adv[b, t].item() == pytest.approx(want, abs=1e-6)
    mc = reference_anchored_advantages(r, ref, 1.0, 1.0)  # Monte Carlo: return-to-go difference
    assert mc[0].tolist() == pytest.approx([0.4, 0.3, 0.4], abs=1e-6)
    # An episode that matches the reference carries no preference.
    assert reference_anchored_advantages(ref, ref).abs().max() == 0
    norm = normalize_advantages(adv)
    assert norm.mean().item() == pytest.approx(0, abs=1e-6)
    assert norm.std().item() == pytest.approx(1, abs=1e-5)
    assert normalize_advantages(torch.full((2, 3), 0.7)).abs().max() == 0


def test_rrpo_loss_is_the_clipped_surrogate_plus_exact_kl():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    ref = torch.randn(2, 5, dtype=torch.float64)
    valid = torch.tensor([[True] * 5, [True, True, True, True, False]])
    actions = torch.tensor([[1, 4], [3, 0]])
    adv = torch.tensor([[1.0, -0.5], [0.3, 2.0]], dtype=torch.float64)
    new = action_log_probs(step_log_policies(logits, actions, valid), actions).detach()
    # Old log-probs: ratio 1.5 on step (0, 0) with a positive advantage (clipped at 1.2) and
    # ratio 0.5 on (1, 1) with a positive advantage (not clipped: min keeps the smaller).
    old = new.clone()
    old[0, 0] -= math.log(1.5)
    old[1, 1] -= math.log(0.5)
    loss, parts = rrpo_loss(logits, ref, actions, old, adv, valid, clip_eps=0.2, kl_beta=0.1)

    ratio = torch.exp(new - old)
    surrogate = torch.minimum(ratio * adv, ratio.clamp(0.8, 1.2) * adv).mean()
    kl = 0.0
    for b, t in itertools.product(range(2), range(2)):
        left = [j for j in range(5) if valid[b, j] and j not in actions[b, :t].tolist()]
        p = torch.softmax(logits.detach()[b, left], -1)
        q = torch.softmax(ref[b, left], -1)
        kl += float((p * (p / q).log()).sum()) / 4
    assert loss.item() == pytest.approx(-surrogate.item() + 0.1 * kl, abs=1e-10)
    assert parts["kl"] == pytest.approx(kl, abs=1e-10)
    # PPO's usual statistic: ratios outside [1 - eps, 1 + eps], whichever term min keeps.
    assert parts["clip_fraction"] == pytest.approx(2 / 4)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad[1, 4] == 0  # padding: no gradient
    # The clipped step contributes no surrogate gradient: moving its log-prob changes nothing.
    g = torch.zeros_like(logits, requires_grad=True)
    only = torch.zeros(2, 2, dtype=torch.float64)
    only[0, 0] = 1.0
    clipped_loss, _ = rrpo_loss(logits.detach() + g, ref, actions, old, adv * only, valid,
                                clip_eps=0.2, kl_beta=0.0)
    clipped_loss.backward()
    assert g.grad.abs().max() == 0


def test_policy_gradient_learns_a_bandit():
    """Reward 1 when document 0 is among the k = 2 chosen, reference = uniform policy: the
    policy's probability of choosing document 0 must rise."""
    torch.manual_seed(0)
    logits = torch.zeros(1, 4, requires_grad=True)
    opt = torch.optim.SGD([logits], lr=0.5)
    for _ in range(40):
        x = logits.expand(64, -1)
        actions = plackett_luce_sample(x, 2)
        ref_actions = greedy_episode(torch.tensor([[0.0, 0.0, 0.0, 1.0]]).expand(64, -1), 2)
        reward = lambda a: (a == 0).cumsum(1).clamp(max=1).float()  # noqa: E731
        adv = normalize_advantages(reference_anchored_advantages(reward(actions),
                                                                 reward(ref_actions)))
        old = action_log_probs(step_log_policies(x.detach(), actions), actions)
        loss, _ = rrpo_loss(x, torch.zeros(64, 4), actions, old, adv, kl_beta=0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.softmax(logits.detach(), -1)[0, 0] > 0.6


def _plackett_luce_grad(logits: torch.Tensor, actions: torch.Tensor, b: int, t: int):
    """d log π(a_t | s_t) / d logits[b] by hand: one-hot(a_t) - softmax over the documents
    still available (0 on the chosen ones)."""
    left = [j for j in range(logits.shape[1]) if j not in actions[b, :t].tolist()]
    g = torch.zeros(logits.shape[1], dtype=logits.dtype)
    g[left] = -torch.softmax(logits[b, left], -1)
    g[actions[b, t]] += 1
    return g


def test_ppo_epochs_make_the_clip_bind_and_clipped_steps_get_no_gradient():
    """Several updates on one rollout: after the first, ratios leave [1 - eps, 1 + eps]; the
    gradient equals the hand-written policy gradient over the steps the clip does not bind."""
    torch.manual_seed(1)
    B, n, k, eps = 8, 5, 2, 0.2
    logits = torch.randn(B, n, dtype=torch.float64).requires_grad_()
    actions = plackett_luce_sample(logits, k)
    old = action_log_probs(step_log_policies(logits.detach(), actions), actions)
    adv = normalize_advantages(torch.randn(B, k, dtype=torch.float64))
    opt = torch.optim.SGD([logits], lr=3.0)
    fractions = []
    for _ in range(3):  # ppo_epochs = 3, one mini-batch
        loss, parts = rrpo_loss(logits, logits.detach(), actions, old, adv, clip_eps=eps,
                                kl_beta=0.0)
        fractions.append(parts["clip_fraction"])
        opt.zero_grad()
        loss.backward()
        if len(fractions) == 2:  # the second epoch: the clip binds; check its gradient
            w = logits.detach()
            ratio = torch.exp(action_log_probs(step_log_policies(w, actions), actions) - old)
            binds = ((adv > 0) & (ratio > 1 + eps)) | ((adv < 0) & (ratio < 1 - eps))
            assert binds.any() and not binds.all()
            want = torch.zeros_like(w)
            for b, t in itertools.product(range(B), range(k)):
                if not binds[b, t]:
                    want[b] -= adv[b, t] * ratio[b, t] * _plackett_luce_grad(w, actions, b, t)
            assert torch.allclose(logits.grad, want / (B * k), atol=1e-12)
            # Alone, the bound steps give exactly zero gradient.
            x = w.clone().requires_grad_()
            bound_only, _ = rrpo_loss(x, w, actions, old, adv * binds, clip_eps=eps, kl_beta=0.0)
            bound_only.backward()
            assert x.grad.abs().max() == 0
        opt.step()
    assert fractions[0] == 0 and fractions[1] > 0 and fractions[2] > 0
    # k3 estimate of KL(old || new): zero at the rollout's policy, positive after updates.
    _, parts = rrpo_loss(logits, logits.detach(), actions, old, adv, kl_beta=0.0)
    ratio = torch.exp(action_log_probs(step_log_policies(logits.detach(), actions), actions)
                      - old)
    assert parts["approx_kl"] == pytest.approx(float((ratio - 1 - ratio.log()).mean()))
    assert parts["approx_kl"] > 0


# --------------------------------------------------------------------------- the trainer's loss

def _cfg(data, model, generator, output, **kw) -> TrainConfig:
    base = {"data": data, "output": str(output), "model": str(model), "objective": "rrpo",
            "rrpo": {"generator": {"name": generator, "dtype": "float32"}, "n": 3, "k": 2,
                     "reward": "logprob", "reward_actors": 0},
            "lr": 1e-2, "batch_size": 2, "epochs": 1, "max_length": 48, "num_workers": 1,
            "log_every": 1, "checkpoint_every": 2, "warmup_ratio": 0.0}
    return TrainConfig(**(base | kw))


def test_rrpo_config_defaults_and_errors(tmp_path):
    r = TrainConfig(data="d", output="o", objective="rrpo").rrpo
    assert (r.k, r.n, r.reward, r.gamma, r.lam, r.clip_eps) == (3, 20, "f1", 1.0, 0.95, 0.2)
    assert (r.ppo_epochs, r.minibatches, r.reward_actors) == (4, 1, 1)
    local = TrainConfig(data="d", output="o", objective="rrpo", num_workers=0)
    assert local.rrpo.reward_actors == 0  # no Ray in local mode: the reader is in the process
    assert TrainConfig(data="d", output="o").rrpo is None
    recipe = load_job(Path(__file__).resolve().parents[1] / "jobs" / "train_rrpo_hotpotqa.yaml")
    assert isinstance(recipe, TrainConfig) and recipe.objective == "rrpo"
    assert (recipe.rrpo.k, recipe.rrpo.reward, recipe.score_temperature,
            recipe.rrpo.overlap_rollouts, r.overlap_rollouts) == (3, "f1", 1.0, True, False)
    for bad, match in [({"rrpo": {"k": 3}}, "applies to objective 'rrpo' only"),
                       ({"objective": "rrpo", "rrpo": {"reward": "bleu"}}, "rrpo.reward"),
                       ({"objective": "rrpo", "rrpo": {"clip_eps": 0}}, "rrpo.clip_eps"),
                       ({"objective": "rrpo", "num_workers": 0, "rrpo": {"reward_actors": 2}},
                        "set rrpo.reward_actors: 0"),
                       ({"objective": "rrpo", "grad_accumulation": 3, "batch_size": 6,
                         "rrpo": {"minibatches": 2}}, r"minibatches \(2\) must divide"),
                       ({"objective": "rrpo", "rrpo": {"reward_actors": 0,
                                                       "overlap_rollouts": True}},
                        "overlap_rollouts .* set rrpo.reward_actors >= 1")]:
        with pytest.raises(ConfigError, match=match):
            validate(TrainConfig, {"job": "train", "data": "d", "output": "o", **bad}, "t.yaml")


def test_workers_and_reward_actors_must_fit_a_fixed_ray(monkeypatch):
    from raglign.pipeline.train import _check_fits

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cfg = TrainConfig(data="d", output="o", objective="rrpo", num_workers=2)
    with pytest.raises(ConfigError, match=r"needs 3 CPUs \(2 for 2 Train workers \+ 1 RRPO reward "
                                          r"actors x 1\) but this Ray has 2"):
        _check_fits(cfg, {"CPU": 2.0})
    _check_fits(cfg.model_copy(update={"num_workers": 1}), {"CPU": 2.0})
    gpu = cfg.rrpo.model_copy(update={"reward_actor_gpus": 0.5, "reward_actors": 2})
    with pytest.raises(ConfigError, match="needs 1 GPUs"):
        _check_fits(cfg.model_copy(update={"num_workers": 1, "rrpo": gpu}), {"CPU": 4.0})


def test_rows_with_fewer_than_k_candidates_are_errors(tmp_path, tiny_bert_dir):
    from raglign.pipeline.train import train

    rows = _rows()
    rows[3]["candidates"] = rows[3]["candidates"][:1]
    data = write_rows(rows, tmp_path / "short")[0]
    cfg = _cfg(str(data), tiny_bert_dir, "g", tmp_path / "out", num_workers=0)
    with pytest.raises(DataError, match=r"record q3, field 'candidates'.*needs at least 2"):
        train(cfg)


@pytest.fixture(scope="module")
def loss_parts(canonical_dir, tiny_bert_dir, tiny_dir, tmp_path_factory):
    from raglign.pipeline.lm_table import load_lm_table
    from raglign.training.batches import make_batch
    from raglign.training.losses.rrpo import RRPOLoss
    from raglign.training.reranker import build_reranker
    from raglign.training.reranker import scorer_class as _scorer_class

    cfg = _cfg(canonical_dir, tiny_bert_dir, tiny_dir, tmp_path_factory.mktemp("o"))
    table, _ = load_lm_table(canonical_dir, cfg.rrpo, "rrpo", min_candidates=2)
    return cfg, make_batch(table, [0, 1, 2]), RRPOLoss(cfg, torch.device("cpu")), build_reranker(cfg)


def test_logprob_rewards_are_the_readers_likelihoods_and_are_cached(loss_parts):
    """Each prefix's reward is log p(answer | ordinary prompt with those documents in candidate
    order), the document engine's exact (concatenated) reference."""
    from raglign.engine import DocumentEngine

    cfg, batch, loss_fn, _ = loss_parts
    engine = DocumentEngine(loss_fn.source.generator.model, loss_fn.source.generator.tokenizer)
    loss_fn.source.cache.clear()
    episodes = [torch.tensor([[2, 0], [1, 2], [0, 1]]), torch.tensor([[0, 1], [1, 2], [0, 2]])]
    got = loss_fn.rewards(batch, episodes)
    cols = batch.columns
    for ep, rew in zip(episodes, got):
        for i in range(3):
            docs = list(zip(cols["titles"][i], cols["texts"][i]))
            for t in range(2):
                keep = sorted(ep[i, :t + 1].tolist())
                want = engine.concat_logprob(cols["question"][i], docs, cols["answer"][i],
                                             keep=keep)
                assert rew[i, t].item() == pytest.approx(want.item(), abs=1e-4)
    # 6 + 6 prefixes, of which row 1's {1} and {1, 2} and row 2's {0} repeat.
    assert loss_fn.pop_means()["rrpo_reads"] == 9
    again = loss_fn.rewards(batch, episodes)
    assert all(torch.equal(a, b) for a, b in zip(again, got))
    assert loss_fn.pop_means()["rrpo_reads"] == 0


def test_f1_rewards_score_the_readers_greedy_answer(loss_parts):
    from raglign.metrics import f1_score
    from raglign.prompts import parallel_prompt
    from raglign.training.losses.rrpo import RRPOLoss
    from raglign.training.rrpo_rewards import RewardReader

    cfg, batch, logprob_loss, _ = loss_parts
    f1_cfg = cfg.model_copy(update={"rrpo": cfg.rrpo.model_copy(update={"reward": "f1"})})
    reader = logprob_loss.source.generator  # the same weights, loaded once
    loss_fn = RRPOLoss(f1_cfg, torch.device("cpu"), rewards=RewardReader(reader, f1_cfg.rrpo))
    episode = torch.tensor([[1, 0], [0, 2], [2, 1]])
    got, = loss_fn.rewards(batch, [episode])
    cols = batch.columns
    for i in range(3):
        for t in range(2):
            docs = [(cols["titles"][i][j], cols["texts"][i][j])
                    for j in sorted(episode[i, :t + 1].tolist())]
            answer = reader.generate([parallel_prompt(reader.tokenizer, cols["question"][i],
                                                      docs)], max_new_tokens=32)[0]
            assert got[i, t].item() == pytest.approx(f1_score(answer, cols["answers"][i]))


def test_loss_trains_the_reranker_only_and_reports_means(loss_parts):
    from raglign.training.reranker import scorer_class as _scorer_class

    cfg, batch, loss_fn, reranker = loss_parts
    reranker.eval()
    model = _scorer_class()(reranker, False)
    torch.manual_seed(3)
    loss = loss_fn(model, batch)
    loss.backward()
    grads = [p.grad for p in reranker.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0
    assert all(torch.isfinite(g).all() for g in grads)
    assert all(p.grad is None for p in loss_fn.reference.parameters())
    assert all(p.grad is None for p in loss_fn.source.generator.model.parameters())
    # The reference is the initial reranker: before any step, KL to it is zero.
    means = loss_fn.pop_means()
    assert means["rrpo_kl"] == pytest.approx(0.0, abs=1e-6)
    assert set(means) == {"rrpo_reward", "rrpo_ref_reward", "rrpo_kl", "rrpo_reads",
                          "rrpo_clip_fraction", "rrpo_approx_kl"}
    # A rollout's first update: the ratio is 1, so the loss is the KL term alone in value (the
    # normalised advantages average to 0) while its gradient is the policy gradient.
    assert loss.item() == pytest.approx(cfg.rrpo.kl_beta * means["rrpo_kl"], abs=1e-6)
    assert means["rrpo_clip_fraction"] == 0 and means["rrpo_approx_kl"] == 0


def test_one_ppo_epoch_is_the_single_policy_gradient_step(loss_parts):
    """ppo_epochs 1: the loss and its gradient are those of sampling from the scores being
    updated, ratio 1 (the objective before PPO epochs existed), computed here step by step."""
    import copy

    from raglign.training.reranker import scorer_class as _scorer_class

    cfg, batch, loss_fn, reranker = loss_parts
    one = copy.copy(loss_fn)
    one.options = cfg.rrpo.model_copy(update={"ppo_epochs": 1})
    assert one.update_plan(1) == [[0]]
    reranker = copy.deepcopy(reranker).train()  # dropout on: the RNG streams must match too
    model = _scorer_class()(reranker, False)
    o, T = cfg.rrpo, cfg.score_temperature
    valid = batch.mask.bool()

    torch.manual_seed(5)
    got = one(model, batch)
    got.backward()
    got_grads = [p.grad.clone() for p in reranker.parameters() if p.grad is not None]
    reranker.zero_grad(set_to_none=True)

    torch.manual_seed(5)
    logits = model(batch.queries, batch.docs).float() / T
    ref_logits = one.reference.forward_scores(batch.queries, batch.docs).float() / T
    actions = plackett_luce_sample(logits, o.k, valid)
    rewards, ref_rewards = one.rewards(batch, [actions, greedy_episode(ref_logits, o.k, valid)])
    adv = normalize_advantages(reference_anchored_advantages(rewards, ref_rewards, o.gamma, o.lam))
    want, _ = rrpo_loss(logits, ref_logits, actions, None, adv, valid, o.clip_eps, o.kl_beta)
    want.backward()
    want_grads = [p.grad for p in reranker.parameters() if p.grad is not None]
    assert torch.equal(got, want)
    assert len(got_grads) == len(want_grads)
    assert all(torch.equal(a, b) for a, b in zip(got_grads, want_grads))


def test_ppo_epochs_reuse_the_rollout_and_the_clip_binds(loss_parts):
    """ppo_epochs 4: one rollout (rewards read once), four updates of the stored episodes; the
    later updates see ratios away from 1."""
    import copy

    from raglign.training.reranker import scorer_class as _scorer_class

    cfg, batch, shared, reranker = loss_parts
    loss_fn = copy.copy(shared)  # the same reader and reference; its own rollouts and window
    loss_fn.options = cfg.rrpo.model_copy(update={"clip_eps": 0.01})
    loss_fn.source.cache.clear()
    loss_fn._rollouts, loss_fn._window = {}, {}
    reranker = copy.deepcopy(reranker).eval()
    model = _scorer_class()(reranker, False)
    opt = torch.optim.Adam(reranker.parameters(), lr=0.2)  # steps of ~lr whatever the scale
    plan = loss_fn.update_plan(2)
    assert plan == [[0, 1]] * 4
    torch.manual_seed(0)
    clip = []
    for _ in plan:
        loss = loss_fn(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
        clip.append(loss_fn.pop_means())
    assert clip[0]["rrpo_reads"] > 0 and all("rrpo_reads" not in m for m in clip[1:])
    assert clip[0]["rrpo_clip_fraction"] == 0
    assert max(m["rrpo_clip_fraction"] for m in clip[1:]) > 0
    assert all(m["rrpo_approx_kl"] > 0 for m in clip[1:])
    assert len(loss_fn._rollouts) == 1
    loss_fn.update_plan(2)  # the next global batch: the rollout is forgotten
    assert not loss_fn._rollouts


# --------------------------------------------------------------------------- reward actors

@pytest.fixture
def reward_pool(ray_local, loss_parts):
    """Two reward actors holding the same tiny reader as ``loss_parts``'s in-worker one (per
    test: their CPUs go back before the Ray Train test needs them)."""
    from raglign.pipeline.reward_actors import start_reward_actors, stop_reward_actors

    cfg = loss_parts[0]
    options = cfg.rrpo.model_copy(update={"reward_actors": 2, "reward_actor_cpus": 0.5})
    actors = start_reward_actors(options)
    yield cfg.model_copy(update={"rrpo": options}), actors
    stop_reward_actors(actors)


def test_reward_actors_give_the_in_worker_readers_rewards(loss_parts, reward_pool):
    import ray

    from raglign.pipeline.reward_actors import RewardPool
    from raglign.training.losses.rrpo import RRPOLoss

    _, batch, local, _ = loss_parts
    cfg, actors = reward_pool
    remote = RRPOLoss(cfg, torch.device("cpu"), rewards=RewardPool(actors))
    episodes = [torch.tensor([[2, 0], [1, 2], [0, 1]]), torch.tensor([[0, 1], [1, 2], [0, 2]])]
    local.source.cache.clear()
    want = local.rewards(batch, episodes)
    got = remote.rewards(batch, episodes)
    # The actors batch only their share of the subsets, so padding differs: float32 rounding.
    assert all(torch.allclose(g, w, atol=1e-5, rtol=0) for g, w in zip(got, want))
    reads = [ray.get(a.state.remote())[3] for a in actors]
    assert sum(reads) == 9 and min(reads) > 0  # 9 distinct subsets, both actors used
    stats = remote.source.pop_stats()
    assert 0 < stats["worker_idle"] <= 1 and 0 <= stats["actor_idle"] < 1
    assert stats["actor_restarts"] == 0


def test_a_subset_two_workers_ask_for_is_read_once(loss_parts, reward_pool):
    """Two concurrent clients (as two Train workers) send overlapping subsets; routing sends
    each subset to one actor, whose cache answers the second request."""
    import ray

    from raglign.pipeline.reward_actors import RewardPool, route
    from raglign.training.rrpo_rewards import RewardRequest

    cfg, actors = reward_pool
    before = [ray.get(a.state.remote())[3] for a in actors]

    def request(i: int, chosen: tuple[int, ...]) -> RewardRequest:
        return RewardRequest((f"two-{i}", chosen), f"question {i}?",
                             tuple((f"t{j}", f"text {j} of {i}") for j in chosen), "yes",
                             ("yes",), None)

    first = [request(i, c) for i in range(4) for c in [(0,), (0, 1)]]
    second = [request(i, c) for i in range(2, 6) for c in [(0, 1), (2,)]]

    @ray.remote(num_cpus=0)
    def worker(requests):
        return RewardPool(actors).rewards(requests)

    (v1, r1), (v2, r2) = ray.get([worker.remote(first), worker.remote(second)])
    distinct = {r.key for r in first + second}
    after = [ray.get(a.state.remote())[3] for a in actors]
    assert sum(after) - sum(before) == len(distinct) == 14 and r1 + r2 == 14
    for a in range(2):  # each actor read exactly the subsets routed to it
        assert after[a] - before[a] == sum(route(k, 2) == a for k in distinct)
    shared = {r.key: v for r, v in zip(first, v1)}
    assert all(shared[r.key] == v for r, v in zip(second, v2) if r.key in shared)


def test_overlapped_rollouts_read_the_next_batch_during_the_updates(loss_parts, reward_pool):
    """``overlap_rollouts``: before step 1's updates the episodes of step 2 are sampled from the
    policy as it is then and their rewards sent; the actors read them without the worker asking
    again, the updates of step 1 wait for step 1's rewards only, and step 2's first update sees
    the ratio to the (older) policy that sampled it. Rewards equal the in-worker reader's."""
    import copy
    import time

    import ray

    from raglign.pipeline.lm_table import load_lm_table
    from raglign.pipeline.reward_actors import RewardPool
    from raglign.training.batches import make_batch
    from raglign.training.losses.rrpo import RRPOLoss
    from raglign.training.reranker import scorer_class as _scorer_class

    _, _, local, reranker = loss_parts
    cfg, actors = reward_pool
    cfg = cfg.model_copy(update={"rrpo": cfg.rrpo.model_copy(update={"overlap_rollouts": True})})
    table, _ = load_lm_table(cfg.data, cfg.rrpo, "rrpo", min_candidates=2)
    first, second = make_batch(table, [0, 1]), make_batch(table, [2, 3])
    loss_fn = RRPOLoss(cfg, torch.device("cpu"), rewards=RewardPool(actors))
    assert loss_fn.looks_ahead
    reranker = copy.deepcopy(reranker).eval()  # no dropout: the policy is a function of θ
    model = _scorer_class()(reranker, False)
    with torch.no_grad():
        theta0 = model(second.queries, second.docs).float() / cfg.score_temperature
    reads_before = sum(ray.get(a.state.remote())[3] for a in actors)

    torch.manual_seed(0)
    loss_fn.update_plan(1)
    loss_fn.before_updates(model, [first], [second])
    assert len(loss_fn._pending) == 2 and not loss_fn._rollouts
    opt = torch.optim.Adam(reranker.parameters(), lr=0.2)
    for update in loss_fn.update_plan(1):
        loss_fn(model, first).backward()
        opt.step()
        opt.zero_grad()
    assert list(loss_fn._pending) == [tuple(second.columns["id"])]
    # Step 2's subsets are read by the actors meanwhile: 4 episodes x 2 prefixes, at most.
    deadline = time.monotonic() + 60
    while sum(ray.get(a.state.remote())[3] for a in actors) - reads_before < 9:
        assert time.monotonic() < deadline, "the next batch's rewards were not read ahead"
        time.sleep(0.05)
    read_ahead = sum(ray.get(a.state.remote())[3] for a in actors)
    loss_fn.pop_means()

    loss_fn.update_plan(1)
    loss_fn.before_updates(model, [second], None)  # already sampled: nothing new is sent
    loss = loss_fn(model, second)
    means = loss_fn.pop_means()
    assert sum(ray.get(a.state.remote())[3] for a in actors) == read_ahead
    assert means["rrpo_approx_kl"] > 0  # the first update on it is off-policy by one step
    r = loss_fn._rollouts[tuple(second.columns["id"])]
    valid = second.mask.bool()
    want_old = action_log_probs(step_log_policies(theta0, r.actions, valid), r.actions)
    assert torch.allclose(r.old_log_probs, want_old, atol=1e-6)
    local.source.cache.clear()
    ref_actions = greedy_episode(r.ref_logits, cfg.rrpo.k, valid)
    rewards, ref_rewards = local.rewards(second, [r.actions, ref_actions])
    adv = normalize_advantages(reference_anchored_advantages(rewards, ref_rewards,
                                                             cfg.rrpo.gamma, cfg.rrpo.lam))
    assert torch.allclose(r.advantages, adv, atol=1e-4)
    assert torch.isfinite(loss)


def test_overlapped_rollouts_resume_as_an_uninterrupted_run(tmp_path, ray_local, canonical_dir,
                                                           tiny_bert_dir, tiny_dir):
    """The look-ahead stops at checkpoints: 2 steps, then a resume to 4, give the weights of 4
    steps in one run (the next step's episodes would otherwise come from a policy the resumed
    run never had)."""
    from raglign.models.rerankers import load_reranker
    from raglign.pipeline.train import train

    def run(out: Path, *max_steps: int):
        cfg = _cfg(canonical_dir, tiny_bert_dir, tiny_dir, out, checkpoint_every=2,
                   rrpo={"generator": {"name": tiny_dir, "dtype": "float32"}, "n": 3, "k": 2,
                         "reward": "logprob", "reward_actors": 1, "reward_actor_cpus": 0.5,
                         "overlap_rollouts": True})
        for m in max_steps:
            result = train(cfg.model_copy(update={"max_steps": m}))
        return load_reranker(str(result.model_dir), kind="cross", max_length=48).state_dict()

    whole = run(tmp_path / "whole", 4)
    resumed = run(tmp_path / "resumed", 2, 4)
    assert all(torch.allclose(whole[k], resumed[k], atol=1e-6) for k in whole)
    lines = [json.loads(x) for x in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in lines] == [1, 2, 3, 4]
    assert lines[1]["rrpo_approx_kl"] > 0 or lines[3]["rrpo_approx_kl"] > 0


def test_ray_train_rrpo_trains_resumes_and_exports(tmp_path, ray_local, canonical_dir,
                                                   tiny_bert_dir, tiny_dir, monkeypatch):
    """On Ray Train with a reward actor, which is killed during the first run: Ray replaces
    it, the worker's call is retried, training finishes and reports the restart."""
    import threading
    import time

    import ray

    from raglign.models.rerankers import load_reranker
    from raglign.pipeline import reward_actors
    from raglign.pipeline.train import build_reranker, train

    started = []

    start = reward_actors.start_reward_actors

    def start_and_keep(options):  # the handles, for the test to kill one
        started.extend(start(options))
        return list(started)

    monkeypatch.setattr(reward_actors, "start_reward_actors", start_and_keep)

    def kill_after_first_read():
        while not started or ray.get(started[0].state.remote())[3] == 0:
            time.sleep(0.05)
        ray.kill(started[0], no_restart=False)

    cfg = _cfg(canonical_dir, tiny_bert_dir, tiny_dir, tmp_path / "out")
    cfg = cfg.model_copy(update={"rrpo": cfg.rrpo.model_copy(
        update={"reward_actors": 1, "reward_actor_cpus": 0.5})})
    initial = {k: v.clone() for k, v in build_reranker(cfg).state_dict().items()}
    killer = threading.Thread(target=kill_after_first_read, daemon=True)
    killer.start()
    first = train(cfg.model_copy(update={"max_steps": 2}))
    killer.join(timeout=5)
    assert (first.step, first.total_steps) == (2, 4) and not killer.is_alive()
    early = (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
    assert sum(json.loads(line)["rrpo_actor_restarts"] for line in early) >= 1
    started.clear()
    second = train(cfg)
    lines = (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
    assert second.step == 4 and lines[:2] == early
    history = [json.loads(line) for line in lines]
    assert [h["step"] for h in history] == [1, 2, 3, 4]
    assert all(h["rrpo_reward"] < 0 and h["rrpo_ref_reward"] < 0 for h in history)  # log-probs
    assert all(0 < h["rrpo_reads"] <= 2 * 2 * 2 for h in history)  # per rollout, fresh rows
    assert all(0 <= h["rrpo_worker_idle"] <= 1 and 0 <= h["rrpo_actor_idle"] <= 1
               for h in history)
    assert all(h["rrpo_clip_fraction"] >= 0 and h["rrpo_approx_kl"] >= 0 for h in history)
    after = load_reranker(str(second.model_dir), kind="cross", max_length=48).state_dict()
    assert sum(not torch.equal(initial[k], after[k]) for k in initial) > len(initial) // 2
    card = (second.model_dir / "README.md").read_text()
    assert "objective: rrpo" in card and "RRPO: PPO clipped surrogate" in card
    assert "4 PPO epochs x 1 mini-batches" in card


def test_loss_curve_draws_rrpos_window_means(tmp_path, monkeypatch):
    """An RRPO run's loss_curve.png gets a panel per scale of its window means, each line the
    reported values; a run without them keeps loss and learning rate only."""
    import matplotlib.figure

    from raglign.training.loss_curve import plot_loss_curve

    figures = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda fig, *a, **k: figures.append(fig))
    history = [{"step": s, "loss": 1.0 / s, "lr": 1e-5, "rrpo_reward": -3.0 + s,
                "rrpo_ref_reward": -3.5, "rrpo_kl": 0.01 * s, "rrpo_approx_kl": 1e-4 * (s - 1),
                "rrpo_clip_fraction": 0.1 * s, "rrpo_worker_idle": 0.2,
                "rrpo_actor_idle": 0.3} for s in (1, 2, 3)]
    plot_loss_curve(history, tmp_path / "c.png", "rrpo")
    plot_loss_curve([{k: h[k] for k in ("step", "loss", "lr")} for h in history],
                    tmp_path / "d.png", "plain")
    rrpo, plain = figures
    assert [ax.get_ylabel() for ax in rrpo.axes] == ["loss", "reward", "KL", "fraction",
                                                     "learning rate"]
    assert [ax.get_ylabel() for ax in plain.axes] == ["loss", "learning rate"]
    drawn = {line.get_label(): list(line.get_ydata()) for ax in rrpo.axes[1:4]
             for line in ax.get_lines()}
    assert drawn["sampled episode's\nfinal reward"] == [-2.0, -1.0, 0.0]
    assert drawn["clip fraction"] == pytest.approx([0.1, 0.2, 0.3])
    assert drawn["approx. KL to the\nsampling policy (k3)"] == pytest.approx([0, 1e-4, 2e-4])
    assert len(drawn) == 7
