"""Each objective against an explicit numpy computation: values, gradients, masking."""

import math

import numpy as np
import pytest
import torch

from raglign.objectives import (
    emdr,
    infonce,
    base_anchor,
    geometric_mix,
    kl_distill,
    replug_lsr,
    cosent,
    supervised,
)
from raglign.training.loss import SCORE_LOSSES as OBJECTIVES
from raglign.training.losses.score import LossParams

RNG = np.random.default_rng(0)


def _scores(b=3, n=5):
    return torch.tensor(RNG.normal(size=(b, n)) * 2, dtype=torch.float64, requires_grad=True)


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def test_infonce_matches_definition_and_gradient():
    s = _scores()
    tau = 0.5
    pos = torch.tensor([0, 2, 4])
    loss = infonce(s, tau, pos)
    x = s.detach().numpy()
    ref = np.mean([-math.log(math.exp(x[b, p] / tau) / sum(math.exp(v / tau) for v in x[b]))
                   for b, p in enumerate(pos.tolist())])
    assert loss.item() == pytest.approx(ref, rel=1e-12)
    loss.backward()
    expect = np.stack([(_softmax(x[b] / tau) - np.eye(5)[p]) / tau / 3 for b, p in enumerate(pos.tolist())])
    np.testing.assert_allclose(s.grad.numpy(), expect, rtol=1e-10)
    assert (s.grad.numpy()[np.arange(3), pos.numpy()] < 0).all()  # positives pushed up


def test_infonce_in_batch_negatives_reference_loop():
    b, n, tau = 3, 4, 0.1
    s = torch.tensor(RNG.normal(size=(b, b * n)), dtype=torch.float64)
    loss = infonce(s, tau, positive_index=1, in_batch_negatives=True)
    ref = 0.0
    for q in range(b):
        num = math.exp(s[q, q * n + 1].item() / tau)
        den = sum(math.exp(s[q, j].item() / tau) for j in range(b * n))
        ref -= math.log(num / den) / b
    assert loss.item() == pytest.approx(ref, rel=1e-12)
    # without in-batch negatives only the own group counts: strictly smaller loss
    own = torch.stack([s[q, q * n:(q + 1) * n] for q in range(b)])
    assert infonce(own, tau, 1).item() < loss.item()


def test_infonce_padding_is_exactly_ignored():
    s = _scores(2, 6)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    loss = infonce(s, 1.0, 0, mask=mask)
    ref = (infonce(s[:1, :4], 1.0, 0) + infonce(s[1:], 1.0, 0)) / 2
    assert loss.item() == pytest.approx(ref.item(), rel=1e-12)
    loss.backward()
    assert (s.grad[0, 4:] == 0).all()
    with pytest.raises(ValueError, match="positive document is masked"):
        infonce(s, 1.0, 4, mask=mask)


def test_kl_distill_reference_and_gradient():
    s = _scores()
    target = torch.tensor(np.stack([_softmax(RNG.normal(size=5)) for _ in range(3)]))
    target[0, 3] = 0.0  # zero target entries contribute 0 * log 0 = 0
    target[0] /= target[0].sum()
    t_r = 2.0
    loss = kl_distill(s, target, t_r)
    x, t = s.detach().numpy(), target.numpy()
    ref = np.mean([sum(t[b, k] * (math.log(t[b, k]) - math.log(_softmax(x[b] / t_r)[k]))
                       for k in range(5) if t[b, k] > 0) for b in range(3)])
    assert loss.item() == pytest.approx(ref, rel=1e-10)
    loss.backward()
    expect = np.stack([(_softmax(x[b] / t_r) - t[b]) / t_r / 3 for b in range(3)])
    np.testing.assert_allclose(s.grad.numpy(), expect, rtol=1e-9, atol=1e-15)
    # the minimum is reached when p_R equals the target: loss 0
    logits = torch.log(torch.tensor(t[1:2])) * t_r
    assert kl_distill(logits, target[1:2], t_r).item() == pytest.approx(0.0, abs=1e-12)


def test_base_anchor_is_the_kl_target_mix():
    """(1 - a) KL(t || p_R) + a KL(p_base || p_R) has the gradient of KL((1 - a) t + a p_base
    || p_R): the anchor is the target mix with the base's own distribution; zero at the base."""
    a, t_r = 0.4, 0.5
    s = _scores()
    base = torch.tensor(RNG.normal(size=(3, 5)))
    mask = torch.tensor([[1, 1, 1, 1, 0], [1] * 5, [1] * 5], dtype=torch.bool)
    target = torch.tensor(np.stack([_softmax(RNG.normal(size=5)) for _ in range(3)]))
    target[0, 4] = 0.0
    target[0] /= target[0].sum()
    ((1 - a) * kl_distill(s, target, t_r, mask) + a * base_anchor(s, base, t_r, mask)).backward()
    anchored = s.grad.clone()
    s.grad = None
    p_base = np.stack([_softmax(base[b].numpy()[: 4 if b == 0 else 5] / t_r).tolist()
                       + ([0.0] if b == 0 else []) for b in range(3)])
    mixed = (1 - a) * target + a * torch.tensor(p_base)
    kl_distill(s, mixed, t_r, mask).backward()
    np.testing.assert_allclose(anchored.numpy(), s.grad.numpy(), rtol=1e-9, atol=1e-15)
    assert anchored[0, 4].item() == 0.0  # padding: no gradient
    at_base = base.clone().requires_grad_(True)
    drift = base_anchor(at_base, base, t_r, mask)
    drift.backward()
    assert drift.item() == pytest.approx(0.0, abs=1e-12)
    assert at_base.grad.abs().max().item() < 1e-12


def test_geometric_mix_is_the_normalised_weighted_product():
    """target^(1-w) x softmax(base/T)^w renormalised over the real documents (numpy reference);
    w = 0 is the target, w = 1 the base; a document the target rules out stays out, padding
    gets 0; and the product ranks a document both favour above the peaks of each."""
    w, t = 0.3, 0.5
    base = torch.tensor(RNG.normal(size=(2, 5)))
    mask = torch.tensor([[1, 1, 1, 1, 0], [1] * 5], dtype=torch.bool)
    target = torch.tensor(np.stack([_softmax(RNG.normal(size=5)) for _ in range(2)]))
    target[0, 4], target[1, 2] = 0.7, 0.0  # padding's value is ignored; a real 0 stays 0
    target[1] /= target[1].sum()
    got = geometric_mix(target, base, w, t, mask).numpy()
    for b, n in ((0, 4), (1, 5)):
        p_base = _softmax(base[b, :n].numpy() / t)
        want = target[b, :n].numpy() ** (1 - w) * p_base ** w
        np.testing.assert_allclose(got[b, :n], want / want.sum(), rtol=1e-12)
    assert got[0, 4] == 0.0 and got[1, 2] == 0.0
    np.testing.assert_allclose(geometric_mix(target, base, 0.0, t, mask).numpy()[1],
                               target[1].numpy(), rtol=1e-12)
    np.testing.assert_allclose(geometric_mix(target, base, 1.0, t, mask).numpy()[1],
                               _softmax(base[1].numpy() / t), rtol=1e-12)
    # the teacher is sure of doc 0 and rules out doc 1, the base the reverse, both give doc 2
    # a solid second: the product puts doc 2 first, which no arithmetic mix of the two does
    teacher = torch.tensor([[0.699, 0.001, 0.3]])
    base_p = torch.tensor([[0.001, 0.699, 0.3]])
    product = geometric_mix(teacher, base_p.log(), 0.5)
    assert product.argmax().item() == 2
    for a in np.linspace(0, 1, 11):
        assert ((1 - a) * teacher + a * base_p).argmax().item() != 2
    with pytest.raises(ValueError, match="weight must be in"):
        geometric_mix(teacher, base_p, 1.5)


def test_replug_is_kl_of_reranker_to_lm_with_reference_gradient():
    s = _scores()
    lm = torch.tensor(RNG.normal(size=(3, 5)) * 3 - 10)
    beta, t_r = 0.5, 1.5
    loss = replug_lsr(s, lm, beta, t_r)
    x, l = s.detach().numpy(), lm.numpy()
    per = []
    grads = []
    for b in range(3):
        p, q = _softmax(x[b] / t_r), _softmax(l[b] / beta)
        kl = float(np.sum(p * (np.log(p) - np.log(q))))
        per.append(kl)
        grads.append(p * (np.log(p) - np.log(q) - kl) / t_r / 3)
    assert loss.item() == pytest.approx(np.mean(per), rel=1e-10)
    # direction matters: KL(p_R || Q) differs from KL(Q || p_R)
    assert abs(loss.item() - kl_distill(s, torch.softmax(lm / beta, 1), t_r).item()) > 1e-3
    loss.backward()
    np.testing.assert_allclose(s.grad.numpy(), np.stack(grads), rtol=1e-8, atol=1e-14)


def test_emdr_sequence_level_reference_and_posterior_gradient():
    s = _scores()
    lm = torch.tensor(RNG.normal(size=(3, 5)) * 5 - 60)  # p(a|q,d) ~ e-60: must not underflow
    loss = emdr(s, lm)
    x, l = s.detach().numpy(), lm.numpy()
    ref, grads = [], []
    for b in range(3):
        prior = _softmax(x[b])
        joint = np.exp(l[b] - l[b].max()) * prior
        ref.append(-(math.log(joint.sum()) + l[b].max()))
        grads.append((prior - joint / joint.sum()) / 3)
    assert loss.item() == pytest.approx(np.mean(ref), rel=1e-12)
    loss.backward()
    np.testing.assert_allclose(s.grad.numpy(), np.stack(grads), rtol=1e-8, atol=1e-14)
    # the document that explains the answer best gets the most negative gradient (pushed up)
    assert (s.grad.numpy()[np.arange(3), l.argmax(1)] < 0).all()


def test_emdr_token_level_is_atlas_per_token_marginal():
    b, n, t = 2, 3, 4
    s = _scores(b, n)
    lm = torch.tensor(-np.abs(RNG.normal(size=(b, n, t))))
    tok = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    loss = emdr(s, lm, token_mask=tok)
    x, l = s.detach().numpy(), lm.numpy()
    ref = 0.0
    for i in range(b):
        prior = _softmax(x[i])
        valid = [j for j in range(t) if tok[i, j]]
        ref -= sum(math.log(sum(math.exp(l[i, k, j]) * prior[k] for k in range(n))) for j in valid) / len(valid) / b
    assert loss.item() == pytest.approx(ref, rel=1e-12)


def test_supervised_bce_reference_with_graded_labels_and_padding():
    s = _scores(2, 4)
    labels = torch.tensor([[1.0, 0.0, 0.5, 0.0], [0.0, 1.0, 1.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    loss = supervised(s, labels, 2.0, mask)
    x, y = s.detach().numpy() / 2.0, labels.numpy()
    sig = 1 / (1 + np.exp(-x))
    pairs = [-(y[i, j] * math.log(sig[i, j]) + (1 - y[i, j]) * math.log(1 - sig[i, j]))
             for i in range(2) for j in range(4) if mask[i, j]]
    assert loss.item() == pytest.approx(np.mean(pairs), rel=1e-12)
    loss.backward()
    expect = (sig - y) / 2.0 / 7 * mask.numpy()
    np.testing.assert_allclose(s.grad.numpy(), expect, rtol=1e-9, atol=1e-15)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        supervised(s, labels * 2)


def test_cosent_reference_with_graded_labels_padding_and_flat_groups():
    s = _scores(3, 4)
    labels = torch.tensor([[1.0, 0.0, 0.5, 0.0], [0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]],
                          dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1]], dtype=torch.bool)
    loss = cosent(s, labels, 0.05, mask)
    x, y = s.detach().numpy(), labels.numpy()
    terms = [[(x[b, j] - x[b, i]) / 0.05 for i in range(4) for j in range(4)
              if mask[b, i] and mask[b, j] and y[b, i] > y[b, j]] for b in range(3)]
    assert [len(t) for t in terms] == [3, 4, 0]  # 1>0.5, 1>0, 0.5>0 (padding out); 2 x 2; none
    ref = np.mean([math.log(1 + sum(math.exp(t) for t in group)) for group in terms])
    assert loss.item() == pytest.approx(ref, rel=1e-12)
    # A mean over groups: the loss of two halves averages to the loss of the whole.
    halves = [cosent(s[a:b], labels[a:b], 0.05, mask[a:b]).item() for a, b in ((0, 1), (1, 3))]
    assert (halves[0] + 2 * halves[1]) / 3 == pytest.approx(loss.item(), rel=1e-12)
    torch.autograd.gradcheck(lambda z: cosent(z, labels, 0.5, mask), (s.detach().clone().requires_grad_(),))
    # Shift-invariant per group (a cosine has no bias), and only the order of labels matters.
    shifted = s.detach() + torch.tensor([[3.0], [-1.0], [0.2]], dtype=torch.float64)
    assert cosent(shifted, labels, 0.05, mask).item() == pytest.approx(loss.item(), rel=1e-10)
    assert cosent(s, labels ** 2, 0.05, mask).item() == pytest.approx(loss.item(), rel=1e-12)
    # The table uses it for bi-encoders, BCE for cross-encoders.
    assert OBJECTIVES["supervised"].loss(s, labels, mask, LossParams(0.05, kind="bi")).item() == \
        pytest.approx(loss.item(), rel=1e-12)
    assert OBJECTIVES["supervised"].loss(s, labels, mask, LossParams(0.05)).item() == \
        pytest.approx(supervised(s, labels, 0.05, mask).item(), rel=1e-12)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        cosent(s, labels * 2)


def test_table_dispatch_and_shape_errors():
    assert set(OBJECTIVES) == {"infonce", "supervised", "kl", "replug", "emdr"}
    s = _scores(2, 3)
    labels = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    mask = torch.ones(2, 3, dtype=torch.bool)
    got = OBJECTIVES["infonce"].loss(s, labels, mask, LossParams(temperature=0.5))
    assert got.item() == pytest.approx(infonce(s, 0.5, torch.tensor([1, 0])).item())
    wide = torch.tensor(RNG.normal(size=(2, 6)))
    got = OBJECTIVES["infonce"].loss(wide, labels, mask, LossParams(in_batch_negatives=True))
    assert got.item() == pytest.approx(infonce(wide, 1.0, torch.tensor([1, 0]), True).item())
    with pytest.raises(ValueError, match="does not match"):
        kl_distill(s, torch.ones(2, 4) / 4)
    with pytest.raises(ValueError, match="at least one real document"):
        emdr(s, torch.zeros(2, 3), mask=torch.zeros(2, 3, dtype=torch.bool))
