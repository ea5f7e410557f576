"""Knowledge distillation (Hinton et al., 2015): a small student learns from a large teacher's
softened predictions as well as from the labels.

Example::

    loss = distillation_loss(student(x), teacher_logits, y, temperature=4.0, alpha=0.9)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .data import check_labels
from .errors import ConfigError, DataError


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None,
                      temperature: float = 4.0, alpha: float = 0.9) -> torch.Tensor:
    r"""``alpha * T² * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)``, batch-averaged.

    The ``T²`` keeps the soft term's gradients the same size whatever the temperature. With
    ``p = softmax(s/T)`` and ``q = softmax(t/T)``, the KL's gradient with respect to the student's
    logits ``s`` is ``(p - q) / T``, and at high ``T`` the difference ``p - q`` is itself about
    ``(s - t) / (K T)`` for ``K`` classes (logits centred), so without the factor the
    gradient falls off like ``1/T²``; with it, it tends to ``(s - t) / K`` (chapter 2 measures it).
    ``labels=None`` (or ``alpha=1``) is pure distillation, e.g. on unlabelled transfer data.
    """
    if temperature <= 0:
        raise ConfigError(f"temperature must be positive, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha weighs the soft term against the labels and must be in [0, 1], got {alpha}")
    if student_logits.shape != teacher_logits.shape:
        raise ConfigError(f"student scores {tuple(student_logits.shape)} and teacher scores "
                          f"{tuple(teacher_logits.shape)} differ: both must score the same classes")
    if labels is not None and alpha != 1.0:
        labels = check_labels(labels, student_logits.shape[-1], where="labels")
        if len(labels) != len(student_logits):
            raise DataError(f"{len(student_logits)} examples scored but {len(labels)} labels")
    t = temperature
    soft = F.kl_div(F.log_softmax(student_logits / t, dim=-1), F.log_softmax(teacher_logits.detach() / t, dim=-1),
                    log_target=True, reduction="batchmean") * t * t
    if labels is None or alpha == 1.0:
        return soft
    return alpha * soft + (1.0 - alpha) * F.cross_entropy(student_logits, labels)


def small_cnn(num_classes: int, width: int = 32) -> nn.Module:
    """A four-block convolutional student (about 0.14 M parameters at ``width=24``), trained from scratch."""
    for what, value in (("num_classes", num_classes), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{what} must be a whole number >= 1, got {value!r}")
    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                             nn.MaxPool2d(2))
    w = width
    return nn.Sequential(block(3, w), block(w, 2 * w), block(2 * w, 4 * w), block(4 * w, 4 * w),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(4 * w, num_classes))
