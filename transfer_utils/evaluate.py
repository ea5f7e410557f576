"""``evaluate``: accuracy, loss, a per-class report and the confusion matrix, in eval mode.

Example::

    result = evaluate(model, val_loader, class_names=val_ds.classes)
    print(result.accuracy); print(result.report)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import classification_report, confusion_matrix
from torch import nn
from torch.utils.data import DataLoader

from .data import as_labels
from .errors import DataError
from .batches import forward_logits, to_device


@dataclass
class EvalResult:
    """Predictions of a classifier on one dataset, and the usual summaries of them."""

    accuracy: float
    loss: float
    y_true: np.ndarray
    y_pred: np.ndarray
    probs: np.ndarray  #: softmax probabilities, ``[N, C]``
    confusion: np.ndarray  #: rows = true class, columns = predicted class
    report: str  #: scikit-learn's per-class precision / recall / F1


@torch.no_grad()
def predict_logits(model: nn.Module, loader: DataLoader, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """All logits and labels of ``loader``, with the model in ``eval()`` mode and no gradients."""
    model.eval().to(device)
    logits, labels = [], []
    for inputs, y in loader:
        logits.append(forward_logits(model, to_device(inputs, device)).float().cpu())
        labels.append(y)
    return torch.cat(logits), torch.cat(labels)


def summarize(logits: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str] | None = None) -> EvalResult:
    """Turn logits and labels into an :class:`EvalResult`."""
    num_classes = logits.shape[-1]
    labels = as_labels(labels, num_classes)
    if len(labels) != len(logits):
        raise DataError(f"{len(logits)} rows of scores but {len(labels)} labels: score the examples you label")
    loss = float(nn.functional.cross_entropy(logits, labels))
    probs = logits.softmax(-1).numpy()
    y_true, y_pred = labels.numpy(), probs.argmax(-1)
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
    return EvalResult(
        accuracy=float((y_true == y_pred).mean()),
        loss=loss, y_true=y_true, y_pred=y_pred, probs=probs,
        confusion=confusion_matrix(y_true, y_pred, labels=list(range(num_classes))),
        report=classification_report(y_true, y_pred, labels=list(range(num_classes)), target_names=names,
                                     digits=3, zero_division=0),
    )


def evaluate(model: nn.Module, loader: DataLoader, *, class_names: Sequence[str] | None = None,
             device: torch.device | str = "cpu") -> EvalResult:
    """Evaluate a classifier on ``loader`` (eval mode, ``torch.no_grad()``)."""
    logits, labels = predict_logits(model, loader, device)
    return summarize(logits, labels, class_names)
