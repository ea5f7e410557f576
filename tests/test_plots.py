"""The shared figures draw what they claim to draw."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import torch
from PIL import Image

from transfer_utils import data, plots
from transfer_utils.train import EpochRecord, History


def test_plot_history_has_train_and_validation_curves() -> None:
    h = History([EpochRecord(e, 1.0 / e, 0.5 + e / 10, 1.2 / e, 0.4 + e / 10, 1e-3, 0.1) for e in (1, 2, 3)])
    fig = plots.plot_history(h)
    loss_ax, acc_ax = fig.axes
    assert [line.get_label() for line in acc_ax.lines] == ["train", "validation"]
    assert list(acc_ax.lines[1].get_ydata()) == h.column("val_accuracy")


def test_confusion_matrix_annotates_counts() -> None:
    fig = plots.plot_confusion_matrix(np.array([[3, 1], [0, 4]]), ["ants", "bees"])
    texts = sorted(t.get_text() for t in fig.axes[0].texts)
    assert texts == ["1", "3", "4"]  # zero cells stay blank


def test_image_grid_marks_wrong_predictions(tmp_path: Path) -> None:
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / cls / "x.png")
    ds = data.ImageFolderDataset(tmp_path)
    fig = plots.show_images(ds, [0, 1], predictions=[0, 0], probabilities=[0.9, 0.6], ncols=2)
    titles = [ax.get_title() for ax in fig.axes[:2]]
    colors = [ax.title.get_color() for ax in fig.axes[:2]]
    assert "pred a (0.90)" in titles[0] and colors == ["black", "crimson"]


def test_embedding_view_has_one_series_per_class() -> None:
    x = torch.cat([torch.randn(20, 5), torch.randn(20, 5) + 5])
    fig = plots.plot_embedding_2d(x, [0] * 20 + [1] * 20, ["ants", "bees"], method="pca")
    assert [c.get_label() for c in fig.axes[0].collections] == ["ants", "bees"]


def test_embedding_view_refuses_labels_it_would_silently_drop() -> None:
    # A fractional or out-of-range label matched no class and its point vanished from the plot.
    import pytest

    from transfer_utils.errors import DataError

    x = torch.randn(4, 5)
    with pytest.raises(DataError, match=r"labels\[3\] is 0.5"):
        plots.plot_embedding_2d(x, [0, 1, 1, 0.5], ["ants", "bees"])
    with pytest.raises(DataError, match=r"labels\[1\] is 2"):
        plots.plot_embedding_2d(x, [0, 2, 1, 0], ["ants", "bees"])
    with pytest.raises(DataError, match="4 feature vectors but 3 labels"):
        plots.plot_embedding_2d(x, [0, 1, 1], ["ants", "bees"])
