"""OldTaskProbe scores a backbone through its original head; BatchNorm statistics can be restored."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision

from transfer_utils import forgetting, models
from transfer_utils.errors import DataError


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


def test_probe_of_the_unchanged_model_is_perfect_agreement() -> None:
    net = _net()
    images = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        labels = net(images).argmax(-1)
    probe = forgetting.OldTaskProbe(net, images, labels)
    assert probe.original.accuracy == 1.0 and probe.original.agreement == 1.0
    assert probe.original.kl == pytest.approx(0.0, abs=1e-6)
    # A new head does not change what the probe measures: it reads the head's input.
    models.replace_head(net, 3)
    again = probe(net)
    assert again.agreement == 1.0 and again.kl == pytest.approx(0.0, abs=1e-6)


def test_changed_weights_show_as_forgetting_and_the_mode_is_restored() -> None:
    net = _net()
    images = torch.randn(8, 3, 32, 32)
    probe = forgetting.OldTaskProbe(net, images, torch.zeros(8, dtype=torch.long))
    with torch.no_grad():
        for p in net.layer4.parameters():
            p.add_(torch.randn_like(p))
    net.train()
    result = probe(net)
    assert result.kl > 1e-3
    assert net.training, "the probe must leave the model in the mode it found it"


def test_restoring_batchnorm_statistics_undoes_a_statistics_only_change() -> None:
    net = _net()
    pretrained = copy.deepcopy(net)
    images = torch.randn(6, 3, 32, 32)
    probe = forgetting.OldTaskProbe(net, images, torch.zeros(6, dtype=torch.long))
    net.train()
    with torch.no_grad():
        for _ in range(5):
            net(torch.randn(4, 3, 32, 32) * 3 + 2)  # new data: only the running statistics move
    assert probe(net).kl > 1e-3
    restored = forgetting.restore_batchnorm_statistics(net, pretrained)
    assert probe(restored).kl == pytest.approx(0.0, abs=1e-6)
    assert probe(net).kl > 1e-3, "the original model must not be modified"


def test_bad_probe_inputs_are_refused() -> None:
    net = _net()
    with pytest.raises(DataError, match="labels go up to"):
        forgetting.OldTaskProbe(net, torch.randn(2, 3, 32, 32), torch.tensor([0, 10]))
    with pytest.raises(DataError, match="need images"):
        forgetting.OldTaskProbe(net, torch.randn(3, 32, 32), torch.tensor([0, 1, 2]))
    with pytest.raises(DataError, match="no BatchNorm"):
        forgetting.restore_batchnorm_statistics(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
