from __future__ import annotations

import pytest
import torch
from torch import nn

from transfer_utils import gradcheck, regularization
from transfer_utils.errors import ConfigError


def test_a_correct_derivation_passes() -> None:
    x = torch.randn(6, dtype=torch.float64)
    result = gradcheck.check_gradient(lambda v: (v ** 3).sum(), x, analytic=3 * x ** 2)
    assert result.ok and result.max_abs_error < 1e-7
    result.assert_ok()


def test_a_wrong_derivation_fails() -> None:
    x = torch.randn(6, dtype=torch.float64) + 2.0
    result = gradcheck.check_gradient(lambda v: (v ** 3).sum(), x, analytic=2 * x)
    assert not result.ok
    with pytest.raises(AssertionError, match="gradients disagree"):
        result.assert_ok()


def test_finite_differences_match_autograd_for_softmax_cross_entropy() -> None:
    z = torch.randn(2, 5, dtype=torch.float64)
    y = torch.tensor([1, 3])
    f = lambda v: nn.functional.cross_entropy(v, y)  # noqa: E731
    p = torch.softmax(z, 1)
    onehot = nn.functional.one_hot(y, 5).double()
    gradcheck.check_gradient(f, z, analytic=(p - onehot) / 2).assert_ok()


def test_inputs_must_be_float64_and_outputs_scalar() -> None:
    with pytest.raises(ConfigError, match="float64"):
        gradcheck.numerical_gradient(lambda v: v.sum(), torch.ones(3))
    with pytest.raises(ConfigError, match="scalar"):
        gradcheck.autograd_gradient(lambda v: v * 2, torch.ones(3, dtype=torch.float64))


def test_l2_sp_gradient_pulls_towards_the_start() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    start = regularization.snapshot(model)
    assert regularization.l2_sp_penalty(model, start, alpha=1.0).item() == 0.0
    with torch.no_grad():
        model[0].weight.add_(0.5)
    penalty = regularization.l2_sp_penalty(model, start, alpha=2.0)
    penalty.backward()
    assert torch.allclose(model[0].weight.grad, 2.0 * (model[0].weight - start["0.weight"]))
    assert torch.allclose(penalty, torch.tensor(0.5 * 2.0 * 0.25 * 12))
    model[1].requires_grad_(False)
    other = {k: v for k, v in start.items() if not k.startswith("0.")}
    assert regularization.l2_sp_penalty(model, other, alpha=0.0, beta=1.0).item() == pytest.approx(
        0.5 * (model[0].weight.pow(2).sum() + model[0].bias.pow(2).sum()).item())
