"""Properties of G-Rerank's stochastic subset mask that a wrong implementation would break."""

import math

import pytest
import torch

from raglign.objectives.gumbel import (gumbel_noise, hard_topk_mask, max_mask_weight,
                                       stochastic_subset_mask)


def test_values_in_open_closed_unit_interval_and_at_most_k_mass():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 20, generator=g)
    m = stochastic_subset_mask(w, k=5, generator=g)
    assert m.shape == w.shape
    assert torch.all(m > 0) and torch.all(m <= 1)
    # the max of k distributions sums to between 1 and k per row
    s = m.sum(-1)
    assert torch.all(s >= 1 - 1e-5) and torch.all(s <= 5 + 1e-5)


def test_matches_explicit_algorithm_with_same_noise():
    w = torch.tensor([[0.3, -1.0, 2.0, 0.1]])
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    m = stochastic_subset_mask(w, k=2, tau=0.5, kappa=1.5, generator=g1)
    G = gumbel_noise((2, 1, 4), g2)
    expected = torch.maximum(torch.softmax((1.5 * w + G[0]) / 0.5, -1),
                             torch.softmax((1.5 * w + G[1]) / 0.5, -1))
    torch.testing.assert_close(m, expected)


def test_low_temperature_gives_k_hot_of_noisy_argmax():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    w = torch.randn(200, 10, generator=torch.Generator().manual_seed(1))
    m = stochastic_subset_mask(w, k=3, tau=1e-4, generator=g1)
    G = gumbel_noise((3, 200, 10), g2)
    argmaxes = (w.unsqueeze(0) + G).argmax(-1)  # [3, 200]
    hard = torch.zeros(200, 10)
    for j in range(3):
        hard.scatter_(1, argmaxes[j].unsqueeze(1), 1.0)
    torch.testing.assert_close(m, hard, atol=1e-4, rtol=0)
    # the draws are k independent picks: at most k documents are selected
    assert torch.all((m > 0.5).sum(-1) <= 3)


def test_noise_free_draws_are_identical_softmax():
    w = torch.tensor([1.0, 0.0, -1.0])
    m = stochastic_subset_mask(w, k=4, tau=0.5, noise=False)
    torch.testing.assert_close(m, torch.softmax(w / 0.5, -1))


def test_padding_gets_zero_and_gradients_reach_weights():
    w = torch.tensor([[0.5, 0.1, -0.2, 9.0]], requires_grad=True)
    valid = torch.tensor([[True, True, True, False]])
    m = stochastic_subset_mask(w, k=2, valid=valid, generator=torch.Generator().manual_seed(0))
    assert m[0, 3].item() == 0.0
    (m[0, 0] * 3 - m[0, 1]).backward()
    assert w.grad is not None and torch.all(torch.isfinite(w.grad)) and w.grad[0, :3].abs().sum() > 0


def test_hard_topk_and_max_weight():
    w = torch.tensor([[0.1, 3.0, -2.0, 1.0]])
    assert hard_topk_mask(w, 2).tolist() == [[0.0, 1.0, 0.0, 1.0]]
    assert math.isclose(max_mask_weight(torch.zeros(3, 20)).item(), 0.05, rel_tol=1e-6)


def test_invalid_arguments():
    with pytest.raises(ValueError):
        stochastic_subset_mask(torch.zeros(3), k=0)
    with pytest.raises(ValueError):
        stochastic_subset_mask(torch.zeros(3), k=1, tau=0)
