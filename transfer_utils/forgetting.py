"""Catastrophic forgetting, measured: what the original head still gets right after fine-tuning.

Fine-tuning moves the backbone's weights, and the features the original (ImageNet) head was
trained on move with them. :class:`OldTaskProbe` keeps a frozen copy of that head and, at any
point of a fine-tuning run, scores the *current* backbone through the *old* head on a few
labelled photos of the old task.

Example::

    probe = OldTaskProbe(bb.model, images, labels)    # before the head is replaced
    model = replace_head(bb.model, 17)
    fit(model, loader, ..., on_epoch_end=lambda record: print(probe(model)))
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .data import as_labels
from .errors import DataError
from .models import head_of


@dataclass(frozen=True)
class ProbeResult:
    """How the old head fares on the old task's photos with the current backbone."""

    accuracy: float  #: top-1 accuracy on the photos' labels
    agreement: float  #: share of photos whose top-1 class is still the original model's
    kl: float  #: mean KL(original || current) between the old head's predicted distributions
    true_class_prob: float  #: mean probability given to the correct class


class OldTaskProbe:
    """Score a backbone through a frozen copy of its original head on labelled old-task photos.

    Build it from the pretrained model *before* its head is replaced; call it with the model at
    any later point. The model's current head is only used to find the pooled features (a forward
    hook reads its input), so any new head works. ``images`` must be preprocessed as the original
    model expects.
    """

    def __init__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> None:
        labels = as_labels(labels).to(images.device)
        if images.ndim != 4 or images.shape[0] != labels.shape[0]:
            raise DataError(f"need images [N, C, H, W] and N labels, got {tuple(images.shape)} and {tuple(labels.shape)}")
        self.head = copy.deepcopy(head_of(model)).requires_grad_(False).eval()
        if int(labels.max()) >= self.head.out_features:
            raise DataError(f"labels go up to {int(labels.max())} but the original head has {self.head.out_features} classes")
        self.images, self.labels = images, labels
        self.reference = self._log_probs(model)
        self.original = self(model)  #: the scores of the unchanged model

    def _log_probs(self, model: nn.Module) -> torch.Tensor:
        captured: list[torch.Tensor] = []
        handle = head_of(model).register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0].detach()))
        was_training = model.training
        device = next(model.parameters()).device
        model.eval()
        try:
            with torch.no_grad():
                model(self.images.to(device))
        finally:
            handle.remove()
            model.train(was_training)
        head = self.head.to(device)
        with torch.no_grad():
            return F.log_softmax(head(captured[0]).float(), dim=-1).cpu()

    def __call__(self, model: nn.Module) -> ProbeResult:
        log_probs = self._log_probs(model)
        pred = log_probs.argmax(-1)
        kl = F.kl_div(log_probs, self.reference, log_target=True, reduction="batchmean")
        return ProbeResult(
            accuracy=float((pred == self.labels).float().mean()),
            agreement=float((pred == self.reference.argmax(-1)).float().mean()),
            kl=float(kl),
            true_class_prob=float(log_probs.exp().gather(1, self.labels[:, None]).mean()),
        )


def restore_batchnorm_statistics(model: nn.Module, pretrained: nn.Module) -> nn.Module:
    """A copy of ``model`` whose BatchNorm running statistics are ``pretrained``'s again.

    Fine-tuning changes a BatchNorm network in two ways: its weights (what the learning rate and
    L2-SP control) and the running mean and variance every BatchNorm layer re-estimates from the
    new data in ``train()`` mode. Probing the copy separates the two: what it still gets wrong
    was forgotten in the weights.
    """
    reference = dict(pretrained.named_buffers())
    restored = copy.deepcopy(model)
    count = 0
    for name, module in restored.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
            for stat in ("running_mean", "running_var"):
                getattr(module, stat).copy_(reference[f"{name}.{stat}"])
            count += 1
    if count == 0:
        raise DataError(f"{type(model).__name__} has no BatchNorm layers with running statistics")
    return restored
