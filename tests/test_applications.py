"""Chapter 7's helpers: gradient reversal and DANN, AdaBN, the distillation loss, prototypes, fusion."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from transfer_utils import adaptation, distill, fewshot
from transfer_utils.errors import ConfigError, DataError


def test_gradient_reversal_is_identity_forward_and_negated_backward() -> None:
    x = torch.randn(4, 3, requires_grad=True)
    y = adaptation.grad_reverse(x, 0.7)
    assert torch.equal(y, x)
    w = torch.randn(4, 3)
    (y * w).sum().backward()
    assert torch.allclose(x.grad, -0.7 * w)


def test_ganin_schedule_rises_from_zero_towards_one() -> None:
    values = [adaptation.ganin_lambda(p) for p in np.linspace(0, 1, 11)]
    assert values[0] == 0.0 and 0.99 < values[-1] < 1.0
    assert all(b > a for a, b in zip(values, values[1:]))


def _two_domains(seed: int) -> tuple[torch.Tensor, ...]:
    """Two Gaussian classes (separated along dimension 0); the target domain is the source moved
    by (1.2, 1.5, 0, 0): a classifier fit to the source puts many target negatives on the wrong side."""
    g = torch.Generator().manual_seed(seed)
    n, d = 400, 4
    ys = torch.randint(0, 2, (n,), generator=g)
    xs = torch.randn(n, d, generator=g) * 0.5
    xs[:, 0] += 2.0 * ys - 1.0
    yt = torch.randint(0, 2, (n,), generator=g)
    xt = torch.randn(n, d, generator=g) * 0.5
    xt[:, 0] += 2.0 * yt - 1.0
    xt[:, 0] += 1.2
    xt[:, 1] += 1.5
    return xs, ys, xt, yt


def test_dann_recovers_target_accuracy_that_source_only_loses() -> None:
    gains = []
    for seed in range(4):
        xs, ys, xt, yt = _two_domains(seed)
        acc = {}
        for adversarial in (False, True):
            torch.manual_seed(seed)
            model = adaptation.DANN(4, 2, hidden=32, dropout=0.0)
            history = adaptation.train_dann(model, xs, ys, xt, epochs=40, adversarial=adversarial, seed=seed)
            with torch.no_grad():
                acc[adversarial] = float((model(xt).argmax(1) == yt).float().mean())
                assert float((model(xs).argmax(1) == ys).float().mean()) > 0.9  # the labels are still learned
        assert history[-1]["domain_loss"] > 0.5, "the discriminator must be kept from winning"
        assert acc[True] >= acc[False] - 0.01
        gains.append(acc[True] - acc[False])
    assert sum(gains) / len(gains) > 0.05, gains


def test_rotated_moons_turns_the_points_about_their_centre_and_keeps_the_labels() -> None:
    xs, ys = adaptation.rotated_moons(200, 0, seed=3)
    xr, yr = adaptation.rotated_moons(200, 90, seed=3)
    assert xs.shape == (200, 2) and xs.dtype == torch.float32 and ys.dtype == torch.long
    assert torch.equal(ys, yr) and set(ys.tolist()) == {0, 1}
    centre = torch.tensor([0.5, 0.25])
    # a quarter turn: (dx, dy) -> (-dy, dx) about the centre; lengths unchanged
    assert torch.allclose(xr - centre, torch.stack([-(xs - centre)[:, 1], (xs - centre)[:, 0]], 1), atol=1e-5)
    assert not torch.allclose(adaptation.rotated_moons(200, 0, seed=4)[0], xs)
    with pytest.raises(ConfigError, match="at least 2"):
        adaptation.rotated_moons(1)


def test_dann_refuses_bad_input() -> None:
    model = adaptation.DANN(4, 2)
    with pytest.raises(ConfigError, match="labels"):
        adaptation.train_dann(model, torch.randn(5, 4), torch.zeros(4, dtype=torch.long), torch.randn(3, 4))
    with pytest.raises(ConfigError, match="target"):
        adaptation.train_dann(model, torch.randn(5, 4), torch.zeros(5, dtype=torch.long), torch.randn(0, 4))


def test_adabn_sets_running_statistics_to_the_target_data_and_keeps_weights() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5))
    weights = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "num_batches" not in k}
    target = torch.randn(64, 3, 8, 8) * 2.0 + 5.0
    batches = [(target[i:i + 16], torch.zeros(16)) for i in range(0, 64, 16)]
    n = adaptation.adapt_batchnorm(net, batches)
    assert n == 1 and not net.training
    with torch.no_grad():
        conv_out = net[0](target)
    bn = net[1]
    assert torch.allclose(bn.running_mean, conv_out.mean(dim=(0, 2, 3)), atol=1e-4)
    # cumulative average over equal batches of the per-batch unbiased variances
    per_batch = torch.stack([net[0](b).detach().var(dim=(0, 2, 3), unbiased=True) for b, _ in batches]).mean(0)
    assert torch.allclose(bn.running_var, per_batch, atol=1e-3)
    assert bn.momentum == 0.1, "the layer's momentum must be restored"
    for k, v in weights.items():
        assert torch.equal(net.state_dict()[k], v), f"{k} changed: AdaBN must not touch weights"
    with pytest.raises(ConfigError, match="no BatchNorm"):
        adaptation.adapt_batchnorm(nn.Linear(2, 2), [torch.randn(2, 2)])
    with pytest.raises(ConfigError, match="no target images"):
        adaptation.adapt_batchnorm(net, [])


def test_distillation_loss_gradient_matches_the_formula() -> None:
    torch.manual_seed(0)
    s = torch.randn(6, 5, requires_grad=True)
    t = torch.randn(6, 5)
    y = torch.randint(0, 5, (6,))
    T, alpha = 3.0, 0.7
    distill.distillation_loss(s, t, y, T, alpha).backward()
    soft = (F.softmax(s / T, 1) - F.softmax(t / T, 1)) * T / len(s)
    hard = (F.softmax(s, 1) - F.one_hot(y, 5)) / len(s)
    assert torch.allclose(s.grad, alpha * soft + (1 - alpha) * hard, atol=1e-6)
    # equal logits, pure distillation: zero loss
    assert distill.distillation_loss(t, t, None, 2.0).abs() < 1e-6


def test_distillation_loss_refuses_bad_settings() -> None:
    s, t = torch.randn(2, 3), torch.randn(2, 3)
    with pytest.raises(ConfigError, match="temperature"):
        distill.distillation_loss(s, t, None, temperature=0)
    with pytest.raises(ConfigError, match="alpha"):
        distill.distillation_loss(s, t, None, alpha=1.5)
    with pytest.raises(ConfigError, match="same classes"):
        distill.distillation_loss(s, torch.randn(2, 4), None)


def test_student_is_small_and_classifies() -> None:
    net = distill.small_cnn(17, width=24)
    assert net(torch.randn(2, 3, 56, 56)).shape == (2, 17)
    assert sum(p.numel() for p in net.parameters()) < 150_000


def test_prototypes_classify_separated_clusters_and_refuse_missing_classes() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 16, generator=g) * 5
    labels = torch.arange(3).repeat_interleave(5)
    emb = centres[labels] + torch.randn(15, 16, generator=g) * 0.3
    protos = fewshot.class_prototypes(emb, labels, 3)
    assert protos.shape == (3, 16)
    query = centres + torch.randn(3, 16, generator=g) * 0.3
    assert fewshot.nearest_prototype(query, protos).argmax(1).tolist() == [0, 1, 2]
    with pytest.raises(ConfigError, match=r"classes \[2\]"):
        fewshot.class_prototypes(emb[:10], labels[:10], 3)


def test_support_sets_have_the_right_shots_and_vary() -> None:
    labels = [0] * 10 + [1] * 10
    episodes = fewshot.sample_support(labels, 3, episodes=4, seed=1)
    for s in episodes:
        assert len(s) == 6 and len(set(s)) == 6
        assert sorted(labels[i] for i in s) == [0, 0, 0, 1, 1, 1]
    assert len({tuple(s) for s in episodes}) > 1
    with pytest.raises(ConfigError, match="fewer than"):
        fewshot.sample_support(labels, 11, 1)


def test_average_probabilities() -> None:
    a = np.array([[0.9, 0.1], [0.2, 0.8]])
    b = np.array([[0.3, 0.7], [0.4, 0.6]])
    assert np.allclose(fewshot.average_probabilities([a, b]), (a + b) / 2)
    assert np.allclose(fewshot.average_probabilities([a, b], [3, 1]), 0.75 * a + 0.25 * b)
    with pytest.raises(ConfigError, match="shapes"):
        fewshot.average_probabilities([a, b[:1]])
    with pytest.raises(ConfigError, match="weight"):
        fewshot.average_probabilities([a, b], [0, 0])
    with pytest.raises(ConfigError, match="nothing to fuse"):
        fewshot.average_probabilities([])


def test_adabn_that_fails_leaves_the_statistics_as_they_were() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    net.train()(torch.randn(8, 3, 8, 8) + 3.0)  # statistics worth keeping
    before = {k: v.clone() for k, v in net[1].state_dict().items()}
    with pytest.raises(ConfigError, match="no target images"):
        adaptation.adapt_batchnorm(net, [])
    with pytest.raises(DataError, match="the model rejects batch 1"):  # was torch's raw RuntimeError
        adaptation.adapt_batchnorm(net, [torch.randn(4, 3, 8, 8), torch.randn(4, 5, 8, 8)])  # 5 channels: rejected
    for k, v in before.items():
        assert torch.equal(net[1].state_dict()[k], v), f"{k} was lost"
    assert net[1].momentum == 0.1 and not net.training


def test_distillation_and_prototypes_check_their_labels() -> None:
    # Were: IndexError from F.cross_entropy, a dtype RuntimeError, or 0.7 silently read as class 0.
    from transfer_utils.errors import DataError

    s, t = torch.randn(3, 2), torch.randn(3, 2)
    with pytest.raises(DataError, match=r"labels\[2\] is 2.*\[0, 2\)"):
        distill.distillation_loss(s, t, torch.tensor([0, 1, 2]), alpha=0.5)
    with pytest.raises(DataError, match=r"labels\[2\] is 0.7"):
        distill.distillation_loss(s, t, torch.tensor([0.0, 1.0, 0.7]), alpha=0.5)
    assert torch.allclose(distill.distillation_loss(s, t, torch.tensor([0.0, 1.0, 1.0]), alpha=0.5),
                          distill.distillation_loss(s, t, torch.tensor([0, 1, 1]), alpha=0.5))
    emb = torch.randn(4, 5)
    with pytest.raises(DataError, match=r"labels\[2\] is 0.7"):
        fewshot.class_prototypes(emb, [0, 1, 0.7, 1], num_classes=2)
    with pytest.raises(DataError, match=r"labels\[2\] is 2"):
        fewshot.class_prototypes(emb, torch.tensor([0, 1, 2, 1]), num_classes=2)
    with pytest.raises(DataError, match=r"labels\[2\] is None"):
        fewshot.sample_support([0, 1, None, 1], shots=1, episodes=1)
    with pytest.raises(DataError, match=r"source_y\[0\] is 0.5"):
        adaptation.train_dann(adaptation.DANN(5, 2), emb, torch.tensor([0.5, 1.0, 0.0, 1.0]), emb, epochs=1)
