"""Warm-up + cosine, and gradual unfreezing that survives a resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from transfer_utils import models, schedules, train
from transfer_utils.errors import ConfigError


def _lrs(sched: torch.optim.lr_scheduler.LRScheduler, steps: int) -> list[float]:
    """The learning rate each of ``steps`` optimizer steps uses, stepping as the Trainer does."""
    opt = sched.optimizer
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def _sgd() -> torch.optim.Optimizer:
    return torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)


@pytest.mark.parametrize(("ours", "warmup", "name", "kwargs"), [
    (lambda o, w: schedules.warmup_linear(o, w, 20), 4, "linear", None),
    (lambda o, w: schedules.warmup_linear(o, w, 20), 0, "linear", None),
    (lambda o, w: schedules.warmup_cosine(o, w, 20), 4, "cosine", None),
    (lambda o, w: schedules.warmup_cosine(o, w, 20, min_factor=0.1), 4, "cosine_with_min_lr", {"min_lr_rate": 0.1}),
    (lambda o, w: schedules.warmup_constant(o, w), 4, "constant_with_warmup", None),
    (lambda o, w: schedules.warmup_constant(o, w), 0, "constant_with_warmup", None),
])
def test_schedules_equal_transformers_at_every_step(ours, warmup, name, kwargs) -> None:
    """The Trainer builds its schedule with get_scheduler: same optimizer, same steps, same rate
    at every step (the first update of a warm-up uses 0, not 1/warmup)."""
    from transformers import get_scheduler

    reference = get_scheduler(name, _sgd(), num_warmup_steps=warmup, num_training_steps=20,
                              scheduler_specific_kwargs=kwargs)
    assert _lrs(ours(_sgd(), warmup), 22) == _lrs(reference, 22)


def test_warmup_cosine_shape() -> None:
    lrs = _lrs(schedules.warmup_cosine(_sgd(), warmup_steps=4, total_steps=20, min_factor=0.1), 20)
    assert lrs[:5] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))
    assert lrs[-1] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * 15 / 16)).item()))
    with pytest.raises(ConfigError):
        schedules.warmup_cosine(_sgd(), warmup_steps=5, total_steps=5)


class Tiny(nn.Module):
    """A stand-in ResNet: the stage names models.stages() knows."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)
        self.layer1, self.layer2 = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.layer3, self.layer4 = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn1(self.conv1(x))
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = torch.relu(layer(x))
        return self.fc(x.mean((2, 3)))


def _trainable(model: nn.Module) -> list[str]:
    return [name for name, mods in models.stages(model).items()
            if all(p.requires_grad for m in mods for p in m.parameters())]


def test_gradual_unfreezer_is_a_function_of_the_epoch() -> None:
    model = Tiny()
    unfreeze = schedules.GradualUnfreezer(model, every=2)
    assert _trainable(model) == ["head"]
    unfreeze(3)
    assert _trainable(model) == ["layer4", "head"]
    unfreeze(9)
    assert _trainable(model) == ["layer1", "layer2", "layer3", "layer4", "head"]
    unfreeze(100)
    assert len(_trainable(model)) == 6
    unfreeze(0)
    assert _trainable(model) == ["head"]


def _run(tmp: Path, interrupt: bool) -> nn.Module:
    torch.manual_seed(0)
    model = Tiny()
    unfreeze = schedules.GradualUnfreezer(model, every=1)
    opt = torch.optim.AdamW(models.param_groups(model, {}, default_lr=1e-2, include_frozen=True))
    data = TensorDataset(torch.randn(16, 3, 8, 8), torch.randint(0, 2, (16,)))
    loader = DataLoader(data, batch_size=8, shuffle=True)

    def stop(record: train.EpochRecord) -> None:
        if interrupt and record.epoch == 2:
            raise KeyboardInterrupt

    try:
        train.fit(model, loader, epochs=4, optimizer=opt, on_epoch_start=unfreeze, on_epoch_end=stop,
                  checkpoint_dir=tmp, progress=False)
    except KeyboardInterrupt:
        return _run(tmp, interrupt=False)
    return model


def test_unfreezing_schedule_resumes_exactly(tmp_path: Path) -> None:
    straight = _run(tmp_path / "a", interrupt=False)
    resumed = _run(tmp_path / "b", interrupt=True)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_frozen_stages_in_the_optimizer_do_not_move() -> None:
    torch.manual_seed(0)
    model = Tiny()
    schedules.GradualUnfreezer(model, every=10)
    before = model.layer1.weight.detach().clone()
    head_before = model.fc.weight.detach().clone()
    opt = torch.optim.AdamW(models.param_groups(model, {}, default_lr=1e-2, include_frozen=True), weight_decay=0.1)
    loader = DataLoader(TensorDataset(torch.randn(8, 3, 8, 8), torch.randint(0, 2, (8,))), batch_size=4)
    train.fit(model, loader, epochs=2, optimizer=opt, progress=False)
    assert torch.equal(model.layer1.weight, before)
    assert not torch.equal(model.fc.weight, head_before)
