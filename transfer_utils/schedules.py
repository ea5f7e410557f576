"""Learning-rate schedules and unfreezing schedules for fine-tuning.

* :func:`warmup_cosine` — linear warm-up, then cosine decay to zero (per optimizer step).
* :func:`warmup_linear` — linear warm-up, then linear decay to zero (BERT's schedule).
* :func:`warmup_constant` — linear warm-up, then a constant rate.
* :class:`GradualUnfreezer` — ULMFiT's gradual unfreezing: start with only the head trainable
  and unfreeze one more stage, from the top down, every ``every`` epochs.

The three schedules are ``transformers.get_scheduler``'s, not re-implementations: the factor at
step ``s`` of a warm-up over ``w`` steps is ``s / w`` (0 for the first update), exactly as in the
Hugging Face ``Trainer``.

Example::

    groups = models.param_groups(model, lrs, include_frozen=True, weight_decay=1e-2)
    opt = torch.optim.AdamW(groups)
    sched = warmup_cosine(opt, warmup_steps=50, total_steps=len(loader) * epochs)
    fit(model, loader, optimizer=opt, scheduler=sched, scheduler_interval="step",
        on_epoch_start=GradualUnfreezer(model, every=1), epochs=epochs)
"""

from __future__ import annotations

import torch
from torch import nn

from . import models
from .errors import ConfigError


def _check(warmup_steps: int, total_steps: int) -> None:
    if not 0 <= warmup_steps < total_steps:
        raise ConfigError(f"need 0 <= warmup_steps < total_steps, got {warmup_steps} and {total_steps}")


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                  min_factor: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Multiply every group's learning rate by a factor rising linearly from 0 (step 0) to 1
    (step ``warmup_steps``), then falling along a cosine to ``min_factor`` at ``total_steps``.

    This is ``transformers.get_scheduler("cosine_with_min_lr")`` (``"cosine"`` when ``min_factor``
    is 0) itself, so a plain loop and the ``Trainer`` see the same rate at every step. Call
    ``scheduler.step()`` once per optimizer step, after ``optimizer.step()``, as the ``Trainer``
    and :func:`~transfer_utils.train.fit` do: the first update then uses factor 0.
    """
    from transformers import get_scheduler

    _check(warmup_steps, total_steps)
    if min_factor == 0.0:
        return get_scheduler("cosine", optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps)
    return get_scheduler("cosine_with_min_lr", optimizer, num_warmup_steps=warmup_steps,
                         num_training_steps=total_steps, scheduler_specific_kwargs={"min_lr_rate": min_factor})


def warmup_linear(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from 0 over ``warmup_steps`` steps, then a straight line down to zero at
    ``total_steps``: the schedule of BERT (Devlin et al. 2019) and the ``Trainer``'s default —
    ``transformers.get_scheduler("linear")`` itself (see :func:`warmup_cosine` for how to step it)."""
    from transformers import get_scheduler

    _check(warmup_steps, total_steps)
    return get_scheduler("linear", optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps)


def warmup_constant(optimizer: torch.optim.Optimizer, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from 0 over ``warmup_steps`` steps, then the full rate (no warm-up when
    ``warmup_steps`` is 0): ``transformers.get_scheduler("constant_with_warmup")``."""
    from transformers import get_scheduler

    if warmup_steps < 0:
        raise ConfigError(f"need warmup_steps >= 0, got {warmup_steps}")
    return get_scheduler("constant_with_warmup", optimizer, num_warmup_steps=warmup_steps)


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
