"""transfer_utils.weightspace: interpolation, soups, BatchNorm re-estimation, the LP-FT diagnostics."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from transfer_utils import weightspace as ws
from transfer_utils.errors import TransferUtilsError


class Tiny(nn.Module):
    """A backbone (Linear, BatchNorm, ReLU) and a linear head named ``fc``, as a ResNet's."""

    def __init__(self, seed: int, classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU())
        self.fc = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))


def _trained_stats(model: Tiny, shift: float) -> Tiny:
    model.train()
    with torch.no_grad():
        for _ in range(5):
            model(torch.randn(16, 4) + shift)
    return model.eval()


def test_interpolate_endpoints_midpoint_and_integer_buffers() -> None:
    a, b = _trained_stats(Tiny(0), 0.0).state_dict(), _trained_stats(Tiny(1), 3.0).state_dict()
    b["body.1.num_batches_tracked"] = torch.tensor(99)
    for name in a:
        assert torch.equal(ws.interpolate(a, b, 0.0)[name], a[name]), name
    end = ws.interpolate(a, b, 1.0)
    mid = ws.interpolate(a, b, 0.5)
    for name in a:
        if a[name].is_floating_point():
            assert torch.allclose(end[name], b[name]), name
            assert torch.allclose(mid[name], (a[name] + b[name]) / 2), name
    # The step counter is not a weight: it is not averaged (and keeps its integer type).
    assert mid["body.1.num_batches_tracked"].dtype == torch.long
    # Running statistics are floats and *are* averaged, like the weights.
    assert torch.allclose(mid["body.1.running_mean"], (a["body.1.running_mean"] + b["body.1.running_mean"]) / 2)
    assert torch.allclose(ws.uniform_soup([a, b])["fc.weight"], mid["fc.weight"])


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_interpolate_refuses_extrapolation(alpha: float) -> None:
    a = Tiny(0).state_dict()
    with pytest.raises(TransferUtilsError, match="alpha must lie in"):
        ws.interpolate(a, a, alpha)


def test_mismatched_states_are_refused_with_a_remedy() -> None:
    a, other_head = Tiny(0).state_dict(), Tiny(1, classes=5).state_dict()
    with pytest.raises(TransferUtilsError, match="same number of classes"):
        ws.uniform_soup([a, other_head])
    missing = {k: v for k, v in a.items() if k != "fc.bias"}
    with pytest.raises(TransferUtilsError, match="same tensors"):
        ws.interpolate(a, missing, 0.5)
    with pytest.raises(TransferUtilsError, match="at least one"):
        ws.uniform_soup([])


def test_greedy_soup_ranks_by_score_and_leaves_out_what_hurts() -> None:
    good = [Tiny(0).state_dict(), Tiny(0).state_dict()]
    good[1]["fc.bias"] = good[1]["fc.bias"] + 0.1
    bad = Tiny(0).state_dict()
    bad["fc.weight"] = bad["fc.weight"] + 10.0
    target = good[0]["fc.weight"]

    def score(state: dict) -> float:  # held-out "accuracy": closeness of the head to the target
        return -float((state["fc.weight"] - target).abs().mean())

    soup, chosen, trace = ws.greedy_soup([bad, good[1], good[0]], score)
    assert chosen[0] in (1, 2) and 0 not in chosen and sorted(chosen) == [1, 2]
    assert len(trace) == 3 and trace[0] == max(score(s) for s in (bad, *good))
    assert torch.allclose(soup["fc.bias"], (good[0]["fc.bias"] + good[1]["fc.bias"]) / 2)


def test_recompute_batchnorm_measures_the_averaged_network() -> None:
    a, b = _trained_stats(Tiny(0), 0.0), _trained_stats(Tiny(1), 3.0)
    soup = ws.load_state(a, ws.uniform_soup([a.state_dict(), b.state_dict()]))
    x = torch.randn(64, 4) + 1.0
    with torch.no_grad():
        pre_bn = soup.body[0](x)                      # what the BatchNorm layer sees
    assert not torch.allclose(soup.body[1].running_mean, pre_bn.mean(0), atol=1e-3)  # averaged stats are off
    momentum = soup.body[1].momentum
    assert ws.recompute_batchnorm(soup, TensorDataset(x, torch.zeros(64, dtype=torch.long)), batch_size=16) == 1
    assert torch.allclose(soup.body[1].running_mean, pre_bn.mean(0), atol=1e-5)
    batch_vars = torch.stack([c.var(0, unbiased=True) for c in pre_bn.chunk(4)]).mean(0)
    assert torch.allclose(soup.body[1].running_var, batch_vars, atol=1e-5)
    assert soup.body[1].momentum == momentum and not soup.training
    with pytest.raises(TransferUtilsError, match="no BatchNorm"):
        ws.recompute_batchnorm(nn.Linear(4, 2), TensorDataset(x, x))


def test_ensemble_logits_is_the_mean_of_the_members() -> None:
    members = [Tiny(0).eval(), Tiny(1).eval(), Tiny(2).eval()]
    x, y = torch.randn(10, 4), torch.randint(0, 3, (10,))
    mean, labels = ws.ensemble_logits(members, TensorDataset(x, y), batch_size=4)
    with torch.no_grad():
        expected = torch.stack([m(x) for m in members]).mean(0)
    assert torch.allclose(mean, expected, atol=1e-6) and torch.equal(labels, y)


def test_a_zero_head_sends_no_gradient_to_the_backbone() -> None:
    model = Tiny(0)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    loss, norm = ws.backbone_gradient(model, x, y)
    assert norm > 0.0 and loss == pytest.approx(float(nn.functional.cross_entropy(model.eval()(x), y).detach()))
    with torch.no_grad():
        model.fc.weight.zero_()
    assert ws.backbone_gradient(model, x, y)[1] == 0.0
    assert all(p.grad is None for p in model.parameters())   # leaves no gradients behind


def test_feature_change_is_zero_for_the_same_weights_and_grows_with_a_step() -> None:
    model, x = Tiny(0).eval(), torch.randn(8, 4)
    assert ws.feature_change(model, copy.deepcopy(model), x) == 0.0
    moved = copy.deepcopy(model)
    with torch.no_grad():
        moved.body[0].weight.add_(0.5)
    assert ws.feature_change(moved, model, x) > 0.1


def test_blur_and_noise_is_seeded_and_checks_its_input() -> None:
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    assert torch.equal(ws.blur_and_noise(images, 0.0, 0.0), images)
    once, again = ws.blur_and_noise(images, seed=3), ws.blur_and_noise(images, seed=3)
    assert once.dtype == torch.uint8 and once.shape == images.shape and torch.equal(once, again)
    assert not torch.equal(once, images)
    with pytest.raises(TransferUtilsError, match="uint8"):
        ws.blur_and_noise(images.float())
    with pytest.raises(TransferUtilsError, match=">= 0"):
        ws.blur_and_noise(images, blur_sigma=-1.0)
