"""The fine-tuning recipe of chapter 4, in one function: :func:`finetune`.

It puts together what that chapter measures one piece at a time: which stages to freeze,
per-stage (discriminative) learning rates, linear warm-up then cosine decay, gradual unfreezing,
weight decay or L2-SP, BatchNorm of frozen stages in eval mode, and resumable checkpoints.

Example::

    model = replace_head(create_backbone("resnet18").model, num_classes=17)
    history = finetune(model, train_ds, val_ds, FinetuneConfig(epochs=5, freeze_until="layer2"),
                       checkpoint_dir="runs/flowers")
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from . import models, regularization, schedules
from .errors import ConfigError
from .train import EpochRecord, History, fit


@dataclass(frozen=True)
class FinetuneConfig:
    """Every choice of the recipe. The defaults are the chapter's recommendation."""

    epochs: int = 5
    batch_size: int = 16
    head_lr: float = 3e-3  #: learning rate of the new head
    #: learning rate of the stage just below the head (AdamW; lower stages get ``lr_decay`` times less
    #: per stage). Chapter 4's learning-rate table measures a tenth of it against it; at full scale on
    #: Flowers-17 (EfficientNet-Lite0, 128 px, 4 epochs) 1e-4 reached 90.9 %, 3e-4 92.6 % and 1e-3 96.2 %,
    #: against 94.1 % for the frozen probe. Chapter 5 lowers it to 1e-4 for ants/bees, classes ImageNet has.
    backbone_lr: float = 1e-3
    lr_decay: float = 0.5  #: factor per stage further down (1.0: one LR for the whole backbone)
    freeze_until: str | None = None  #: stages up to and including this one stay frozen ("all": head only)
    gradual_unfreeze_every: int | None = None  #: ULMFiT: unfreeze one more stage every k epochs
    warmup_fraction: float = 0.1  #: share of all steps spent warming up linearly
    decay: str = "cosine"  #: after warm-up: "cosine" or "linear" decay to zero, or "constant"
    weight_decay: float = 1e-2  #: AdamW's decoupled decay towards zero
    l2sp_alpha: float | None = None  #: if set, pull pretrained weights towards their start instead
    l2sp_beta: float = 1e-4  #: L2 on the new head when L2-SP is on
    frozen_bn_eval: bool = True  #: BatchNorm of frozen stages keeps its pretrained statistics
    label_smoothing: float = 0.0
    clip_grad_norm: float | None = 5.0


def learning_rates_by_stage(names: Sequence[str], head_lr: float, backbone_lr: float,
                            lr_decay: float) -> dict[str, float]:
    """``{stage: lr}`` for stages ``names`` listed from the input to the head: the head (last name)
    gets ``head_lr``, the stage below it ``backbone_lr``, and each stage further down ``lr_decay``
    times the one above it."""
    lrs = {names[-1]: head_lr}
    for depth, name in enumerate(reversed(names[:-1])):
        lrs[name] = backbone_lr * lr_decay**depth
    return lrs


def stage_learning_rates(model: nn.Module, cfg: FinetuneConfig) -> dict[str, float]:
    """:func:`learning_rates_by_stage` for ``model``'s stages and the recipe's rates."""
    return learning_rates_by_stage(list(models.stages(model)), cfg.head_lr, cfg.backbone_lr, cfg.lr_decay)


def finetune(model: nn.Module, train_ds: Dataset[Any], val_ds: Dataset[Any] | None, cfg: FinetuneConfig, *,
             device: torch.device | str = "cpu", seed: int = 0, amp: bool = True,
             checkpoint_dir: str | Path | None = None, num_classes: int | None = None,
             on_epoch_end: Callable[[EpochRecord], None] | None = None, progress: bool = False,
             collate_fn: Callable[[list[Any]], Any] | None = None) -> History:
    """Fine-tune ``model`` (its new head already in place) on ``train_ds`` with recipe ``cfg``.

    Images or text: for a Hugging Face text classifier pass ``(text, label)`` datasets and
    ``collate_fn=TextCollator(tokenizer, max_length)`` (see :mod:`transfer_utils.text`).

    Returns :func:`~transfer_utils.train.fit`'s history; with ``checkpoint_dir`` a second call
    resumes where an interrupted one stopped. ``amp`` only acts on CUDA.
    """
    if cfg.gradual_unfreeze_every is not None and cfg.freeze_until is not None:
        raise ConfigError("use either freeze_until or gradual_unfreeze_every, not both")
    if cfg.decay not in ("cosine", "linear", "constant"):
        raise ConfigError(f"decay must be 'cosine', 'linear' or 'constant', got {cfg.decay!r}")
    if cfg.l2sp_alpha is not None and cfg.l2sp_alpha < 0:
        raise ConfigError(f"l2sp_alpha must be >= 0, got {cfg.l2sp_alpha}")
    gen = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=True, generator=gen,
                              drop_last=len(train_ds) > cfg.batch_size,  # no 1-image batch for BatchNorm
                              collate_fn=collate_fn)
    val_loader = DataLoader(val_ds, batch_size=128, collate_fn=collate_fn) if val_ds is not None else None

    # Convolutions run markedly faster in channels-last layout on CPUs and tensor cores alike.
    model.to(memory_format=torch.channels_last)
    models.freeze(model, cfg.freeze_until)
    unfreezer = (schedules.GradualUnfreezer(model, every=cfg.gradual_unfreeze_every)
                 if cfg.gradual_unfreeze_every is not None else None)
    # L2-SP replaces the decay towards zero; it needs the starting point of every weight.
    start = regularization.snapshot(model) if cfg.l2sp_alpha is not None else None
    # Weight decay spares biases and normalisation weights, as the Trainer and timm do.
    groups = models.param_groups(model, stage_learning_rates(model, cfg), include_frozen=unfreezer is not None,
                                 weight_decay=0.0 if start is not None else cfg.weight_decay)
    optimizer = torch.optim.AdamW(groups)

    # The Trainer's schedules (transformers.get_scheduler), stepped after every optimizer step.
    total = cfg.epochs * len(train_loader)
    warmup = int(cfg.warmup_fraction * total)
    if cfg.decay == "cosine":
        scheduler = schedules.warmup_cosine(optimizer, warmup, total)
    elif cfg.decay == "linear":
        scheduler = schedules.warmup_linear(optimizer, warmup, total)
    else:
        scheduler = schedules.warmup_constant(optimizer, warmup)

    ce = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    if start is not None:
        # The new linear head has no starting point worth keeping: L2-SP treats it as a new layer (beta).
        head_ids = {id(p) for p in models.head_of(model).parameters()}
        reference = {n: start[n] for n, p in model.named_parameters() if id(p) not in head_ids}

        def loss_fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return ce(logits, labels) + regularization.l2_sp_penalty(model, reference, cfg.l2sp_alpha or 0.0,
                                                                     cfg.l2sp_beta)
    else:
        loss_fn = ce

    return fit(model, train_loader, val_loader=val_loader, epochs=cfg.epochs, optimizer=optimizer,
               loss_fn=loss_fn, scheduler=scheduler, scheduler_interval="step", device=device, amp=amp,
               clip_grad_norm=cfg.clip_grad_norm, checkpoint_dir=checkpoint_dir, seed=seed,
               num_classes=num_classes, on_epoch_start=unfreezer, on_epoch_end=on_epoch_end,
               frozen_bn_eval=cfg.frozen_bn_eval, progress=progress)
