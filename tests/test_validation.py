"""Argument validation of the public functions the chapters call first: a wrong type, shape,
range, a missing path or an unknown name raises a ``transfer_utils`` error that says what to do,
never a raw ``KeyError`` / ``TypeError`` / ``RuntimeError`` from deep inside torch, PIL or
scikit-learn, and never a silent wrong answer.

Each case is one bad call, the error class expected, and a phrase of the remedy it must contain.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from transfer_utils import adaptation, assets, data, distill, evaluate, features, fewshot, plots, transferability
from transfer_utils.errors import ConfigError, DataError, TransferUtilsError


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two classes of two tiny RGB images each."""
    root = tmp_path_factory.mktemp("images")
    for c, cls in enumerate(["ants", "bees"]):
        (root / cls).mkdir()
        for i in range(2):
            Image.new("RGB", (16, 16), (60 * c, 30 * i, 90)).save(root / cls / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def ds(folder: Path) -> data.ImageFolderDataset:
    return data.ImageFolderDataset(folder)


def _loader(n: int = 4, classes: int = 3) -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(n, 5), torch.arange(n) % classes), batch_size=2)


def _linear(classes: int = 3) -> nn.Module:
    return nn.Linear(5, classes)


def _bn_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def _feats(n: int = 6, d: int = 4) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(0))


LABELS6 = [0, 1, 2, 0, 1, 2]
CONF3 = np.arange(9).reshape(3, 3)
NAN_FEATS = torch.full((6, 4), float("nan"))

# (id, call(ds, folder), error class, phrase of the message)
Case = tuple[str, Callable[[Any, Path], Any], type[Exception], str]
CASES: list[Case] = [
    # --- assets -------------------------------------------------------------------------------
    ("pretrained_source unknown name", lambda ds, f: assets.pretrained_source("nope", offline=True), ConfigError,
     "registered"),
    ("pretrained_source an image backbone", lambda ds, f: assets.pretrained_source("resnet18", offline=False),
     ConfigError, "registered"),
    # --- data ---------------------------------------------------------------------------------
    ("load_image missing file", lambda ds, f: data.load_image(f / "nope.jpg"), DataError, "not found"),
    ("load_image not a path", lambda ds, f: data.load_image(123), DataError, "file path"),
    ("load_image a folder", lambda ds, f: data.load_image(f / "ants"), DataError, "is a folder"),
    ("check_image_folder missing", lambda ds, f: data.check_image_folder(f / "nope"), DataError, "is not a folder"),
    ("ImageFolderDataset missing", lambda ds, f: data.ImageFolderDataset(f / "nope"), DataError, "is not a folder"),
    ("per_class_indices 0", lambda ds, f: data.per_class_indices([0, 1, 1], 0), DataError, ">= 1"),
    ("per_class_indices str n", lambda ds, f: data.per_class_indices([0, 1, 1], "3"), ConfigError,
     "whole number"),
    ("per_class_indices float n", lambda ds, f: data.per_class_indices([0, 1, 1], 2.5), ConfigError,
     "whole number"),
    ("per_class_indices scalar targets", lambda ds, f: data.per_class_indices(5, 2), DataError,
     "sequence of class indices"),
    ("per_class_indices fractional label", lambda ds, f: data.per_class_indices([0, 1.5], 2), DataError,
     "targets"),
    ("per_class_indices negative label", lambda ds, f: data.per_class_indices([0, -1], 2), DataError, "targets"),
    ("stratified_split fraction 1", lambda ds, f: data.stratified_split([0, 1, 0, 1], 1.0), DataError,
     "in (0, 1)"),
    ("stratified_split fraction str", lambda ds, f: data.stratified_split([0, 1, 0, 1], "0.2"), ConfigError,
     "a number"),
    ("load_text_dataset unknown name", lambda ds, f: data.load_text_dataset("nope", offline=True), ConfigError,
     "registered"),
    ("load_text_dataset test_fraction", lambda ds, f: data.load_text_dataset(
        "rotten_tomatoes", offline=True, test_fraction=1.5), ConfigError, "test_fraction must be"),
    ("load_text_dataset max_train 1", lambda ds, f: data.load_text_dataset(
        "rotten_tomatoes", offline=True, max_train=1), ConfigError, "max_train must be"),
    ("load_text_dataset max_test str", lambda ds, f: data.load_text_dataset(
        "rotten_tomatoes", offline=True, max_test="100"), ConfigError, "max_test must be"),
    ("decode_images not a dataset", lambda ds, f: data.decode_images([1, 2], 32), DataError, "ImageFolderDataset"),
    ("decode_images size 4", lambda ds, f: data.decode_images(ds, 4), DataError, "at least 8 pixels"),
    ("decode_images no size", lambda ds, f: data.decode_images(ds), ConfigError, "size= or preprocessing="),
    ("ensure_text None", lambda ds, f: data.ensure_text(None), DataError, "missing"),
    # --- features -----------------------------------------------------------------------------
    ("extract_features trunk str", lambda ds, f: features.extract_features("resnet18", ds), ConfigError,
     "torch.nn.Module"),
    ("extract_features not a dataset", lambda ds, f: features.extract_features(nn.Identity(), [1, 2]), DataError,
     "ImageFolderDataset"),
    ("extract_features no transform", lambda ds, f: features.extract_features(nn.Identity(), ds), DataError,
     "no transform"),
    ("extract_features batch_size 0", lambda ds, f: features.extract_features(
        nn.Identity(), ds.with_transform(lambda im: torch.zeros(3, 8, 8)), batch_size=0), ConfigError, ">= 1"),
    ("extract_text_features one text", lambda ds, f: features.extract_text_features(
        None, nn.Identity(), "a text", [0]), DataError, "wrap a single text"),
    ("extract_text_features pooling", lambda ds, f: features.extract_text_features(
        None, nn.Identity(), ["a"], [0], pooling="max"), ConfigError, "'mean' or 'cls'"),
    ("extract_text_features lengths", lambda ds, f: features.extract_text_features(
        None, nn.Identity(), ["a", "b"], [0]), DataError, "one label per text"),
    ("extract_text_features None text", lambda ds, f: features.extract_text_features(
        None, nn.Identity(), ["a", None], [0, 1]), DataError, "text #1"),
    # --- evaluate -----------------------------------------------------------------------------
    ("evaluate model str", lambda ds, f: evaluate.evaluate("model", _loader()), ConfigError, "torch.nn.Module"),
    ("evaluate class_names count", lambda ds, f: evaluate.evaluate(_linear(3), _loader(), class_names=["a", "b"]),
     ConfigError, "one name per class"),
    ("evaluate loader of ints", lambda ds, f: evaluate.evaluate(_linear(), [1, 2, 3]), DataError,
     "(inputs, labels)"),
    ("evaluate empty loader", lambda ds, f: evaluate.evaluate(_linear(), []), DataError, "no batch"),
    ("evaluate wrong input width", lambda ds, f: evaluate.evaluate(nn.Linear(7, 3), _loader()), DataError,
     "the model rejects"),
    ("evaluate unknown device", lambda ds, f: evaluate.evaluate(_linear(), _loader(), device="gpu"), ConfigError,
     "device"),
    ("summarize 1-D logits", lambda ds, f: evaluate.summarize(torch.randn(4), torch.tensor([0, 1, 0, 1])),
     DataError, "[N, C]"),
    ("summarize label out of range", lambda ds, f: evaluate.summarize(torch.randn(2, 3), torch.tensor([0, 5])),
     DataError, "labels"),
    ("summarize lengths", lambda ds, f: evaluate.summarize(torch.randn(3, 3), torch.tensor([0, 1])), DataError,
     "score the examples you label"),
    # --- plots --------------------------------------------------------------------------------
    ("plot_confusion_matrix too few names", lambda ds, f: plots.plot_confusion_matrix(CONF3, ["a", "b"]),
     ConfigError, "one name per row"),
    ("plot_confusion_matrix 1-D", lambda ds, f: plots.plot_confusion_matrix(np.ones(3), ["a", "b", "c"]),
     DataError, "square"),
    ("plot_confusion_matrix str", lambda ds, f: plots.plot_confusion_matrix("matrix", ["a"]), DataError,
     "square"),
    ("show_images index out of range", lambda ds, f: plots.show_images(ds, [0, 99]), DataError, "index 99"),
    ("show_images predictions count", lambda ds, f: plots.show_images(ds, [0, 1], predictions=[0]), ConfigError,
     "one per index"),
    ("show_images probabilities count", lambda ds, f: plots.show_images(
        ds, [0, 1], predictions=[0, 1], probabilities=[0.5]), ConfigError, "one per index"),
    ("show_images unknown predicted class", lambda ds, f: plots.show_images(ds, [0], predictions=[7]), DataError,
     "prediction 7 is not a class index"),
    ("show_images not a dataset", lambda ds, f: plots.show_images([1, 2], [0]), DataError, "ImageFolderDataset"),
    ("show_images ncols 0", lambda ds, f: plots.show_images(ds, [0], ncols=0), ConfigError, "ncols"),
    ("plot_embedding_2d method", lambda ds, f: plots.plot_embedding_2d(_feats(), LABELS6, ["a", "b", "c"],
                                                                       method="umap"),
     ConfigError, "'pca' or 'tsne'"),
    ("plot_embedding_2d 1-D features", lambda ds, f: plots.plot_embedding_2d(np.ones(6), LABELS6,
                                                                             ["a", "b", "c"]),
     DataError, "[N, D]"),
    ("plot_embedding_2d label count", lambda ds, f: plots.plot_embedding_2d(_feats(), [0, 1], ["a", "b", "c"]),
     DataError, "labels"),
    ("plot_history not a History", lambda ds, f: plots.plot_history({"train_loss": [1.0]}), ConfigError,
     "History"),
    # --- transferability ----------------------------------------------------------------------
    ("logme 1-D features", lambda ds, f: transferability.logme(np.ones(6), LABELS6), DataError, "[N, D]"),
    ("logme NaN features", lambda ds, f: transferability.logme(NAN_FEATS, LABELS6), DataError, "NaN"),
    ("logme label count", lambda ds, f: transferability.logme(_feats(), [0, 1]), DataError, "one per feature row"),
    ("logme float labels", lambda ds, f: transferability.logme(_feats(), [0.5] * 6), DataError, "integer"),
    ("logme one class", lambda ds, f: transferability.logme(_feats(), [0] * 6), DataError, "at least 2 classes"),
    ("logme text features", lambda ds, f: transferability.logme("features", LABELS6), DataError, "[N, D]"),
    ("logme features list of str", lambda ds, f: transferability.logme([["a"]] * 6, LABELS6), DataError,
     "numbers"),
    # --- fewshot ------------------------------------------------------------------------------
    ("class_prototypes lengths", lambda ds, f: fewshot.class_prototypes(_feats(), torch.tensor([0, 1]), 2),
     DataError, "labels"),
    ("class_prototypes missing class", lambda ds, f: fewshot.class_prototypes(_feats(), torch.tensor([0] * 6), 2),
     ConfigError, "at least one per class"),
    ("class_prototypes 1-D embeddings", lambda ds, f: fewshot.class_prototypes(
        torch.randn(6), torch.tensor(LABELS6), 3), DataError, "[n, dim]"),
    ("nearest_prototype dims", lambda ds, f: fewshot.nearest_prototype(_feats(6, 4), _feats(2, 5)), DataError,
     "same encoder"),
    ("sample_support shots 0", lambda ds, f: fewshot.sample_support(LABELS6, 0, 2), ConfigError, "shots"),
    ("sample_support episodes 0", lambda ds, f: fewshot.sample_support(LABELS6, 1, 0), ConfigError, "episodes"),
    ("sample_support too many shots", lambda ds, f: fewshot.sample_support(LABELS6, 5, 1), ConfigError,
     "fewer than 5 shots"),
    ("average_probabilities none", lambda ds, f: fewshot.average_probabilities([]), ConfigError, "at least one"),
    ("average_probabilities shapes", lambda ds, f: fewshot.average_probabilities([np.ones((2, 3)), np.ones((2, 2))]),
     ConfigError, "same examples"),
    ("average_probabilities weights", lambda ds, f: fewshot.average_probabilities([np.ones((2, 3))] * 2, [1.0]),
     ConfigError, "one non-negative weight per model"),
    ("average_probabilities lists", lambda ds, f: fewshot.average_probabilities([[[0.5, 0.5]], [[0.2, 0.8], [0.1, 0.9]]]),
     ConfigError, "same examples"),
    # --- distill ------------------------------------------------------------------------------
    ("distillation_loss temperature", lambda ds, f: distill.distillation_loss(
        torch.randn(2, 3), torch.randn(2, 3), None, temperature=0), ConfigError, "positive"),
    ("distillation_loss alpha", lambda ds, f: distill.distillation_loss(
        torch.randn(2, 3), torch.randn(2, 3), None, alpha=1.5), ConfigError, "[0, 1]"),
    ("distillation_loss shapes", lambda ds, f: distill.distillation_loss(
        torch.randn(2, 3), torch.randn(2, 4), None), ConfigError, "same classes"),
    ("distillation_loss label range", lambda ds, f: distill.distillation_loss(
        torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0, 3]), alpha=0.5), DataError, "labels"),
    ("distillation_loss label count", lambda ds, f: distill.distillation_loss(
        torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0]), alpha=0.5), DataError, "labels"),
    ("small_cnn 0 classes", lambda ds, f: distill.small_cnn(0), ConfigError, "num_classes"),
    ("small_cnn width 0", lambda ds, f: distill.small_cnn(2, width=0), ConfigError, "width"),
    # --- adaptation ---------------------------------------------------------------------------
    ("train_dann lengths", lambda ds, f: adaptation.train_dann(
        adaptation.DANN(4, 2, hidden=8), _feats(), torch.tensor([0, 1]), _feats(), epochs=1), ConfigError,
     "labels"),
    ("train_dann no target", lambda ds, f: adaptation.train_dann(
        adaptation.DANN(4, 2, hidden=8), _feats(), torch.tensor([0, 1] * 3), _feats()[:0], epochs=1), ConfigError,
     "adversarial=False"),
    ("train_dann feature width", lambda ds, f: adaptation.train_dann(
        adaptation.DANN(5, 2, hidden=8), _feats(), torch.tensor([0, 1] * 3), _feats(), epochs=1), DataError,
     "in_features"),
    ("train_dann target width", lambda ds, f: adaptation.train_dann(
        adaptation.DANN(4, 2, hidden=8), _feats(), torch.tensor([0, 1] * 3), _feats(6, 3), epochs=1), DataError,
     "target_x"),
    ("train_dann epochs 0", lambda ds, f: adaptation.train_dann(
        adaptation.DANN(4, 2, hidden=8), _feats(), torch.tensor([0, 1] * 3), _feats(), epochs=0), ConfigError,
     "epochs"),
    ("train_dann batch_size 0", lambda ds, f: adaptation.train_dann(
        adaptation.DANN(4, 2, hidden=8), _feats(), torch.tensor([0, 1] * 3), _feats(), batch_size=0), ConfigError,
     "batch_size"),
    ("train_dann model", lambda ds, f: adaptation.train_dann(
        nn.Linear(4, 2), _feats(), torch.tensor([0, 1] * 3), _feats()), ConfigError, "adaptation.DANN"),
    ("adapt_batchnorm no BN", lambda ds, f: adaptation.adapt_batchnorm(nn.Linear(2, 2), [torch.randn(2, 2)]),
     ConfigError, "no BatchNorm"),
    ("adapt_batchnorm no batches", lambda ds, f: adaptation.adapt_batchnorm(_bn_model(), []), ConfigError,
     "no target images"),
    ("adapt_batchnorm wrong channels", lambda ds, f: adaptation.adapt_batchnorm(
        _bn_model(), [torch.randn(2, 1, 8, 8)]), DataError, "the model rejects"),
    ("adapt_batchnorm batch of str", lambda ds, f: adaptation.adapt_batchnorm(_bn_model(), [("a", 0)]), DataError,
     "tensor"),
    ("ganin_lambda progress", lambda ds, f: adaptation.ganin_lambda(2.0), ConfigError, "[0, 1]"),
]


@pytest.mark.parametrize("call, error, phrase", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_bad_call_raises_a_package_error_that_says_what_to_do(ds, folder, call, error, phrase) -> None:
    with pytest.raises(TransferUtilsError) as info:
        call(ds, folder)
    assert isinstance(info.value, error), f"{type(info.value).__name__}: {info.value}"
    assert phrase in str(info.value), str(info.value)


def test_adapt_batchnorm_keeps_the_statistics_when_a_batch_is_refused() -> None:
    model = _bn_model()
    adaptation.adapt_batchnorm(model, [torch.randn(4, 3, 8, 8)])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(DataError):
        adaptation.adapt_batchnorm(model, [torch.randn(4, 3, 8, 8), torch.randn(2, 1, 8, 8)])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_the_errors_stay_what_callers_caught_before() -> None:
    """ConfigError / DataError are ValueErrors: code that caught ValueError still does."""
    with pytest.raises(ValueError):
        plots.plot_embedding_2d(_feats(), LABELS6, ["a", "b", "c"], method="umap")
    with pytest.raises(ValueError):
        data.load_text_dataset("nope", offline=True)
