"""Figures the chapters share: training curves, image grids, confusion matrices, 2-D embeddings.

Every function returns the matplotlib ``Figure`` so a notebook can show or save it.

Example::

    fig = plot_history(history); fig.savefig("curves.png")
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from .data import ImageFolderDataset, as_labels, load_image
from .errors import DataError
from .train import History


def plot_history(history: History, title: str = "") -> Figure:
    """Loss and accuracy per epoch, train vs validation."""
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


def show_images(dataset: ImageFolderDataset, indices: Sequence[int], *, predictions: Sequence[int] | None = None,
                probabilities: Sequence[float] | None = None, ncols: int = 6, size: int = 2) -> Figure:
    """A grid of images with their true class (and predicted class, red when wrong)."""
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
    n = len(class_names)
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

    x = np.asarray(features, dtype=np.float32)
    if method == "pca":
        xy = PCA(n_components=2, random_state=seed).fit_transform(x)
    elif method == "tsne":
        xy = TSNE(n_components=2, random_state=seed, init="pca", perplexity=min(30, len(x) - 1)).fit_transform(x)
    else:
        raise ValueError("method must be 'pca' or 'tsne'")
    labels_arr = as_labels(labels, len(class_names)).numpy()
    if len(labels_arr) != len(x):
        raise DataError(f"{len(x)} feature vectors but {len(labels_arr)} labels")
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
