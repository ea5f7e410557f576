"""``evaluate``: accuracy, loss, a per-class report and the confusion matrix, in eval mode; and
calibration (chapter 5): the reliability diagram's bins, the expected calibration error, and the
temperature that makes held-out probabilities honest.

Example::

    result = evaluate(model, val_loader, class_names=val_ds.classes)
    print(result.accuracy); print(result.report)
    T = fit_temperature(*predict_logits(model, calibration_loader))   # held-out data, never the test set
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import classification_report, confusion_matrix
from torch import nn
from torch.utils.data import DataLoader

from .batches import forward_logits, to_device
from .data import as_labels
from .errors import ConfigError, DataError


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
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module (the classifier to evaluate), got {type(model).__name__}")
    device = _check_device(device)
    model.eval().to(device)
    logits, labels = [], []
    for k, batch in enumerate(loader):
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise DataError(f"batch {k} of the loader is a {type(batch).__name__}, not a pair: pass a DataLoader "
                            f"whose batches are (inputs, labels)")
        inputs, y = batch
        try:
            out = forward_logits(model, to_device(inputs, device))
        except torch.OutOfMemoryError:
            raise
        except (RuntimeError, TypeError, AttributeError) as err:
            shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
            raise DataError(f"the model rejects batch {k} (inputs {shape}): {str(err).splitlines()[0]}. Check that "
                            f"the loader feeds what the model was built for (input size, channels, "
                            f"preprocessing).") from err
        logits.append(out.float().cpu())
        labels.append(torch.as_tensor(y))
    if not logits:
        raise DataError("the loader yielded no batch (an empty dataset?): evaluate on at least one example")
    return torch.cat(logits), torch.cat(labels)


def _check_device(device: torch.device | str) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"unknown device {device!r} ({str(err).splitlines()[0]}): use 'cpu', 'cuda', 'cuda:0', "
                          f"'mps' or config.pick_device()") from None


def summarize(logits: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str] | None = None) -> EvalResult:
    """Turn logits and labels into an :class:`EvalResult`."""
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[-1] < 1:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise DataError(f"logits must be a [N, C] tensor (one row of class scores per example), got {shape}")
    num_classes = logits.shape[-1]
    if class_names is not None and len(class_names) != num_classes:
        raise ConfigError(f"{len(class_names)} class_names for {num_classes} classes the model scores: pass one "
                          f"name per class, in the order of the model's outputs (e.g. dataset.classes)")
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


# ----------------------------------------------------------------------------------------------
# Calibration
# ----------------------------------------------------------------------------------------------


@dataclass
class Reliability:
    """The reliability diagram's bins: bin ``m`` holds the predictions whose confidence (the top
    class's probability) lies in ``[m/M, (m+1)/M)``; confidence exactly 1 has a bin of its own, as
    in torchmetrics. Empty bins are left out."""

    lower: np.ndarray  #: each bin's lower edge
    confidence: np.ndarray  #: mean confidence in each bin
    accuracy: np.ndarray  #: fraction correct in each bin
    count: np.ndarray  #: predictions in each bin
    ece: float  #: sum over bins of count/N * |accuracy - confidence|


def _probs_and_labels(probs: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray | Sequence[int]
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    probs = torch.as_tensor(probs).detach().cpu()
    if probs.ndim != 2 or len(probs) == 0:
        raise DataError(f"probs must be [N, classes] with N >= 1, got shape {tuple(probs.shape)}")
    labels = as_labels(labels, probs.shape[1])
    if len(labels) != len(probs):
        raise DataError(f"{len(probs)} rows of probabilities but {len(labels)} labels")
    return probs, labels


def reliability(probs: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray | Sequence[int], *,
                n_bins: int = 15) -> Reliability:
    """Bin predictions by confidence and compare each bin's accuracy with its mean confidence
    (the reliability diagram; ``.ece`` is the expected calibration error, torchmetrics'
    ``MulticlassCalibrationError(norm="l1")``)."""
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ConfigError(f"n_bins must be an integer >= 1, got {n_bins!r}")
    probs, labels = _probs_and_labels(probs, labels)
    confidence, predicted = probs.double().max(1)
    correct = (predicted == labels).double()
    bins = (confidence * n_bins).floor().long()   # [m/M, (m+1)/M) -> m; exactly 1 -> M
    rows = [(int(m), float(confidence[bins == m].mean()), float(correct[bins == m].mean()), int((bins == m).sum()))
            for m in bins.unique()]
    lower, conf, acc, count = (np.array(c) for c in zip(*rows))
    ece = float(np.sum(count / count.sum() * np.abs(acc - conf)))
    return Reliability(lower / n_bins, conf, acc, count, ece)


def expected_calibration_error(probs: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray | Sequence[int],
                               *, n_bins: int = 15) -> float:
    """ECE: the bin-weighted mean gap between accuracy and confidence (see :func:`reliability`)."""
    return reliability(probs, labels, n_bins=n_bins).ece


def fit_temperature(logits: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray | Sequence[int], *,
                    bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The temperature ``T`` minimising the cross-entropy of ``softmax(logits / T)`` — fit it on
    held-out logits (a calibration split carved from the training data), never on the test set.

    A bounded 1-D search on ``log T`` (scipy's ``minimize_scalar``); ``bounds`` keep ``T`` finite
    when the held-out examples are all classified right (the loss then falls towards ``T = 0``).
    Dividing by ``T > 0`` keeps each row's order, so predictions and accuracy never change.
    """
    from scipy.optimize import minimize_scalar

    logits = torch.as_tensor(logits).detach().cpu().double()
    if logits.ndim != 2 or len(logits) == 0:
        raise DataError(f"logits must be [N, classes] with N >= 1, got shape {tuple(logits.shape)}")
    labels = as_labels(labels, logits.shape[1])
    if len(labels) != len(logits):
        raise DataError(f"{len(logits)} rows of logits but {len(labels)} labels")
    if not 0 < bounds[0] < bounds[1] < math.inf:
        raise ConfigError(f"bounds must be 0 < low < high < inf, got {bounds}")

    def nll(log_t: float) -> float:
        return float(nn.functional.cross_entropy(logits / math.exp(log_t), labels))

    best = minimize_scalar(nll, bounds=(math.log(bounds[0]), math.log(bounds[1])), method="bounded",
                           options={"xatol": 1e-6})
    return float(math.exp(best.x))
