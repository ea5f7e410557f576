"""Learning-rate schedules and unfreezing schedules for fine-tuning.

* :func:`warmup_cosine` — linear warm-up, then cosine decay to zero (per optimizer step).
* :func:`warmup_linear` — linear warm-up, then linear decay to zero (BERT's schedule).
* :class:`GradualUnfreezer` — ULMFiT's gradual unfreezing: start with only the head trainable
  and unfreeze one more stage, from the top down, every ``every`` epochs.

Example::

    groups = models.param_groups(model, lrs, include_frozen=True)
    opt = torch.optim.AdamW(groups)
    sched = warmup_cosine(opt, warmup_steps=50, total_steps=len(loader) * epochs)
    fit(model, loader, optimizer=opt, scheduler=sched, scheduler_interval="step",
        on_epoch_start=GradualUnfreezer(model, every=1), epochs=epochs)
"""

from __future__ import annotations

import math

import torch
from torch import nn

from . import models
from .errors import ConfigError


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                  min_factor: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Multiply every group's learning rate by a factor rising linearly from 1/warmup_steps to 1
    over ``warmup_steps`` steps, then falling along a cosine to ``min_factor`` at ``total_steps``."""
    if not 0 <= warmup_steps < total_steps:
        raise ConfigError(f"need 0 <= warmup_steps < total_steps, got {warmup_steps} and {total_steps}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def warmup_linear(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_steps`` steps, then a straight line down to zero at
    ``total_steps``: the schedule of BERT (Devlin et al. 2019) and the ``Trainer``'s default."""
    if not 0 <= warmup_steps < total_steps:
        raise ConfigError(f"need 0 <= warmup_steps < total_steps, got {warmup_steps} and {total_steps}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class GradualUnfreezer:
    """Unfreeze one more stage, from the head towards the input, every ``every`` epochs.

    Stateless: calling it with a 0-based epoch index sets which stages train in that epoch
    (the head, plus ``epoch // every`` more), so a resumed run unfreezes exactly as an
    uninterrupted one. Pass it as ``fit(on_epoch_start=...)`` and build the optimizer with
    ``param_groups(..., include_frozen=True)`` so that later stages are already in it.
    """

    def __init__(self, model: nn.Module, every: int = 1) -> None:
        if every < 1:
            raise ConfigError(f"every must be >= 1, got {every}")
        self.model = model
        self.every = every
        self.order = list(models.stages(model))[::-1]  # head first
        self(0)

    def trainable_stages(self, epoch: int) -> list[str]:
        """Names of the stages that train in ``epoch`` (0-based)."""
        return self.order[: min(len(self.order), 1 + epoch // self.every)]

    def __call__(self, epoch: int) -> None:
        trainable = set(self.trainable_stages(epoch))
        for name, modules in models.stages(self.model).items():
            for module in modules:
                module.requires_grad_(name in trainable)
