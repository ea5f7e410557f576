"""Figures the chapters share: training curves, image grids, confusion matrices, 2-D embeddings,
reliability diagrams.

Every function returns the matplotlib ``Figure`` so a notebook can show or save it.

Example::

    fig = plot_history(history); fig.savefig("curves.png")
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from .data import ImageFolderDataset, as_labels, load_image
from .errors import ConfigError, DataError
from .evaluate import Reliability
from .train import History


def plot_history(history: History, title: str = "") -> Figure:
    """Loss and accuracy per epoch, train vs validation."""
    if not isinstance(history, History):
        raise ConfigError(f"plot_history takes the History that train.fit returns (history = fit(...)), "
                          f"got {type(history).__name__}")
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.5))
    epochs = history.column("epoch")
    ax_loss.plot(epochs, history.column("train_loss"), "o-", label="train")
    ax_acc.plot(epochs, history.column("train_accuracy"), "o-", label="train")
    if any(v is not None for v in history.column("val_loss")):
        ax_loss.plot(epochs, history.column("val_loss"), "s-", label="validation")
        ax_acc.plot(epochs, history.column("val_accuracy"), "s-", label="validation")
    for ax, name in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        ax.set_xlabel("epoch"); ax.set_ylabel(name); ax.grid(alpha=0.3); ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _whole(value: object) -> int | None:
    """``value`` as an int if it is a whole number (int, NumPy or 0-d integer tensor), else None."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return None


def show_images(dataset: ImageFolderDataset, indices: Sequence[int], *, predictions: Sequence[int] | None = None,
                probabilities: Sequence[float] | None = None, ncols: int = 6, size: int = 2) -> Figure:
    """A grid of images with their true class (and predicted class, red when wrong)."""
    if not isinstance(dataset, ImageFolderDataset):
        raise DataError(f"show_images shows the files of an ImageFolderDataset, got {type(dataset).__name__}")
    if isinstance(ncols, bool) or not isinstance(ncols, int) or ncols < 1:
        raise ConfigError(f"ncols must be a whole number >= 1 (images per row), got {ncols!r}")
    indices = list(indices)
    for i in indices:
        if _whole(i) is None or not -len(dataset) <= _whole(i) < len(dataset):
            raise DataError(f"index {i!r} is not an image of the dataset: it holds {len(dataset)} images "
                            f"(indices 0 to {len(dataset) - 1})")
    for what, values in (("predictions", predictions), ("probabilities", probabilities)):
        if values is not None and len(values) != len(indices):
            raise ConfigError(f"{len(values)} {what} for {len(indices)} indices: pass one per index, in the same order")
    if probabilities is not None and predictions is None:
        raise ConfigError("probabilities label the predicted class: pass predictions= too")
    for p in predictions if predictions is not None else []:
        if _whole(p) is None or not 0 <= _whole(p) < len(dataset.classes):
            raise DataError(f"prediction {p!r} is not a class index of this dataset's {len(dataset.classes)} "
                            f"classes (0 to {len(dataset.classes) - 1}): pass predicted class indices "
                            f"(e.g. result.y_pred)")
    nrows = int(np.ceil(len(indices) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * size, nrows * size * 1.1), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for k, (ax, i) in enumerate(zip(axes.flat, indices)):
        path, label = dataset.samples[i]
        ax.imshow(load_image(path))
        text = dataset.classes[label]
        color = "black"
        if predictions is not None:
            pred = predictions[k]
            text = f"true {dataset.classes[label]}\npred {dataset.classes[pred]}"
            if probabilities is not None:
                text += f" ({probabilities[k]:.2f})"
            color = "black" if pred == label else "crimson"
        ax.set_title(text, fontsize=8, color=color)
    fig.tight_layout()
    return fig


def plot_confusion_matrix(confusion: np.ndarray, class_names: Sequence[str], title: str = "") -> Figure:
    """Confusion matrix with counts in the cells (rows: true class, columns: predicted)."""
    try:
        confusion = np.asarray(confusion, dtype=float)
    except (TypeError, ValueError):
        confusion = np.empty(0)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise DataError(f"confusion must be a square [C, C] matrix of counts (e.g. result.confusion), got shape "
                        f"{confusion.shape}")
    n = len(class_names)
    if n != confusion.shape[0]:
        raise ConfigError(f"{n} class_names for a {confusion.shape[0]}x{confusion.shape[0]} confusion matrix: pass "
                          f"one name per row, in class order (e.g. dataset.classes)")
    fig, ax = plt.subplots(figsize=(max(3.5, 0.45 * n + 2), max(3, 0.45 * n + 1.5)))
    ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(n), class_names, rotation=90 if n > 4 else 0, fontsize=8)
    ax.set_yticks(range(n), class_names, fontsize=8)
    ax.set_xlabel("predicted"); ax.set_ylabel("true"); ax.set_title(title)
    threshold = confusion.max() / 2 if confusion.size else 0
    for i in range(n):
        for j in range(n):
            if confusion[i, j]:
                ax.text(j, i, int(confusion[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if confusion[i, j] > threshold else "black")
    fig.tight_layout()
    return fig


def plot_embedding_2d(features: torch.Tensor | np.ndarray, labels: Sequence[int], class_names: Sequence[str], *,
                      method: str = "pca", seed: int = 0, title: str = "") -> Figure:
    """Scatter of features projected to 2-D by PCA (fast, linear) or t-SNE (``method="tsne"``)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    if method not in ("pca", "tsne"):
        raise ConfigError(f"method must be 'pca' or 'tsne', got {method!r}")
    try:
        x = np.asarray(features.detach().cpu() if isinstance(features, torch.Tensor) else features, dtype=np.float32)
    except (TypeError, ValueError):
        x = np.empty(0)
    if x.ndim != 2 or len(x) < 3:
        raise DataError(f"features must be an [N, D] array of numbers with N >= 3 (e.g. feats.x), got shape {x.shape}")
    labels_arr = as_labels(labels, len(class_names)).numpy()
    if len(labels_arr) != len(x):
        raise DataError(f"{len(x)} feature vectors but {len(labels_arr)} labels: pass one label per row")
    if method == "pca":
        xy = PCA(n_components=2, random_state=seed).fit_transform(x)
    else:
        xy = TSNE(n_components=2, random_state=seed, init="pca", perplexity=min(30, len(x) - 1)).fit_transform(x)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    cmap = plt.get_cmap("tab20" if len(class_names) > 10 else "tab10")
    for k, name in enumerate(class_names):
        sel = labels_arr == k
        ax.scatter(xy[sel, 0], xy[sel, 1], s=10, color=cmap(k % cmap.N), label=name, alpha=0.8)
    ax.set_title(title or f"{method.upper()} of the features")
    ax.set_xticks([]); ax.set_yticks([])
    ax.legend(fontsize=7, markerscale=1.5, loc="center left", bbox_to_anchor=(1, 0.5))
    fig.tight_layout()
    return fig


def plot_reliability(diagrams: dict[str, Reliability], title: str = "") -> Figure:
    """Reliability diagrams side by side: accuracy against mean confidence per bin (the diagonal
    is perfect calibration; bars below it are overconfident), each panel titled with its ECE."""
    fig, axes = plt.subplots(1, len(diagrams), figsize=(3.6 * len(diagrams), 3.4), squeeze=False)
    for ax, (name, r) in zip(axes[0], diagrams.items()):
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="calibrated")
        ax.scatter(r.confidence, r.accuracy, s=20 + 200 * r.count / r.count.max(), alpha=0.7, label="bins (size: count)")
        for c, a in zip(r.confidence, r.accuracy):
            ax.plot([c, c], [c, a], color="tab:red", lw=1)
        ax.set_xlim(0, 1.02); ax.set_ylim(0, 1.02)
        ax.set_xlabel("confidence"); ax.set_ylabel("accuracy"); ax.set_title(f"{name}\nECE {r.ece:.3f}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.suptitle(title)
    fig.tight_layout()
    return fig
