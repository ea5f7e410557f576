"""Datasets: image folders read with the backbone's own preprocessing, and text datasets.

Images are read defensively: grayscale, CMYK, palette and RGBA files are converted to RGB
(transparent pixels become white); an unreadable file raises :class:`DataError` naming it.

Example::

    train = ImageFolderDataset(root / "train", transform=prep.eval_transform())
    small = train.subset(per_class_indices(train.targets, 10, seed=0))
    texts = load_text_dataset("rotten_tomatoes", offline=True)
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision import transforms as T

from . import assets
from .errors import DataError

#: File extensions read as images. ``.gif`` is left out on purpose, as in torchvision's
#: ``ImageFolder`` (hymenoptera ships an ``imageNotFound.gif`` placeholder).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm")


# ----------------------------------------------------------------------------------------------
# Preprocessing
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preprocessing:
    """The input pipeline a pretrained backbone expects. Its ``repr`` keys feature caches.

    Example::

        prep = Preprocessing(224, 256, "bilinear", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        x = prep.eval_transform()(load_image("ant.jpg"))   # tensor [3, 224, 224]
    """

    input_size: int
    resize_size: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def _interp(self) -> T.InterpolationMode:
        return T.InterpolationMode(self.interpolation)

    def eval_transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """Resize the short side, centre-crop, scale to [0, 1], normalise."""
        return T.Compose([
            T.Resize(self.resize_size, interpolation=self._interp()),
            T.CenterCrop(self.input_size),
            T.ToTensor(),
            T.Normalize(self.mean, self.std),
        ])

    def train_transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """Random resized crop and horizontal flip, then the same normalisation."""
        return T.Compose([
            T.RandomResizedCrop(self.input_size, interpolation=self._interp()),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(self.mean, self.std),
        ])

    def tensor_transform(self, train: bool, input_size: int | None = None,
                         min_scale: float = 0.25) -> Callable[[torch.Tensor], torch.Tensor]:
        """The same pipeline for images already decoded to ``uint8`` tensors (see
        :func:`decode_images`): a random resized crop covering at least ``min_scale`` of the
        image and a horizontal flip when ``train``, a centre crop otherwise; then scale to
        [0, 1] and normalise. ``input_size`` overrides the backbone's (e.g. 128 px on a CPU)."""
        from torchvision.transforms import v2

        size = input_size or self.input_size
        crop = ([v2.RandomResizedCrop(size, scale=(min_scale, 1.0), interpolation=self._interp(), antialias=True),
                 v2.RandomHorizontalFlip()] if train else [v2.CenterCrop(size)])
        return v2.Compose([*crop, v2.ToDtype(torch.float32, scale=True), v2.Normalize(self.mean, self.std)])

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Undo the normalisation of a ``[..., 3, H, W]`` tensor, for display."""
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (x.cpu() * std + mean).clamp(0, 1)


# ----------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------


def load_image(path: str | Path) -> Image.Image:
    """Open any image file as RGB. Transparent pixels become white; errors name the file."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
                rgba = img.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                return Image.alpha_composite(background, rgba).convert("RGB")
            return img.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(
            f"cannot decode image {path} ({err}). The file is corrupt or not an image: "
            "delete or replace it (for a registered dataset, fetch_dataset(name, force=True) "
            "unpacks a fresh, verified copy)."
        ) from err


def _scan_image_folder(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    if not root.is_dir():
        raise DataError(f"{root} is not a folder. Expected the layout {root}/<class>/<image>.")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(classes) < 2:
        raise DataError(
            f"{root} has {len(classes)} class folder(s) ({classes}); a classifier needs at least 2. "
            f"Put each class's images in its own sub-folder: {root}/<class>/<image>."
        )
    samples: list[tuple[Path, int]] = []
    for label, cls in enumerate(classes):
        files = sorted(p for p in (root / cls).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise DataError(
                f"class folder {root / cls} holds no images (extensions {', '.join(IMAGE_EXTENSIONS)}). "
                "Add images or remove the folder."
            )
        samples.extend((f, label) for f in files)
    return classes, samples


class ImageFolderDataset(Dataset[tuple[Any, int]]):
    """``<root>/<class>/<image>`` images with integer labels in alphabetical class order.

    Unlike a bare ``torchvision.datasets.ImageFolder`` it fails early with a clear message for
    an empty class folder or fewer than two classes, converts every image mode to RGB, and can
    be subset without losing its class names.

    Example::

        ds = ImageFolderDataset(root / "train", transform=prep.eval_transform())
        x, y = ds[0]; print(ds.classes[y])
    """

    def __init__(
        self,
        root: str | Path,
        transform: Callable[[Image.Image], Any] | None = None,
        *,
        samples: Sequence[tuple[Path, int]] | None = None,
        classes: Sequence[str] | None = None,
    ) -> None:
        self.root = Path(root)
        if samples is None:
            found_classes, found = _scan_image_folder(self.root)
            self.classes, self.samples = found_classes, found
        else:
            self.classes, self.samples = list(classes or []), list(samples)
        self.transform = transform

    @property
    def targets(self) -> list[int]:
        """The label of every sample, in order."""
        return [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        img = load_image(path)
        return (self.transform(img) if self.transform else img), label

    def subset(self, indices: Sequence[int]) -> "ImageFolderDataset":
        """A dataset holding only ``indices`` (same classes, same transform)."""
        return ImageFolderDataset(self.root, self.transform,
                                  samples=[self.samples[i] for i in indices], classes=self.classes)

    def with_transform(self, transform: Callable[[Image.Image], Any] | None) -> "ImageFolderDataset":
        """The same samples read through another transform."""
        return ImageFolderDataset(self.root, transform, samples=self.samples, classes=self.classes)

    def class_counts(self) -> dict[str, int]:
        """Number of images per class name."""
        counts = np.bincount(self.targets, minlength=len(self.classes))
        return {c: int(n) for c, n in zip(self.classes, counts)}


class TensorImageDataset(Dataset[tuple[Any, int]]):
    """Images decoded once into a ``uint8`` tensor ``[N, 3, S, S]``, with their labels.

    Decoding and resizing a JPEG costs more than a small network's forward pass on a CPU; with
    the pixels in memory an epoch costs only the network. Random augmentation still works:
    ``transform`` (e.g. :meth:`Preprocessing.tensor_transform`) runs on every access.

    Example::

        train = decode_images(ImageFolderDataset(root / "train"), size=146, cache_dir=cache)
        train = train.with_transform(prep.tensor_transform(train=True, input_size=128))
    """

    def __init__(self, images: torch.Tensor, targets: Sequence[int], classes: Sequence[str],
                 transform: Callable[[torch.Tensor], Any] | None = None) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise DataError(f"images must be a uint8 tensor [N, 3, H, W], got {images.dtype} {tuple(images.shape)}")
        if len(targets) != images.shape[0]:
            raise DataError(f"{images.shape[0]} images but {len(targets)} labels")
        self.images = images
        self.classes = list(classes)
        self._targets = as_labels(targets, len(self.classes), where="targets")
        self.transform = transform

    @property
    def targets(self) -> list[int]:
        """The label of every image, in order."""
        return self._targets.tolist()

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = self.images[index]
        return (self.transform(image) if self.transform else image), int(self._targets[index])

    def subset(self, indices: Sequence[int]) -> "TensorImageDataset":
        """A dataset holding only ``indices`` (same classes, same transform)."""
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return TensorImageDataset(self.images[idx], self._targets[idx].tolist(), self.classes, self.transform)

    def with_transform(self, transform: Callable[[torch.Tensor], Any] | None) -> "TensorImageDataset":
        """The same images read through another transform (the pixels are shared, not copied)."""
        return TensorImageDataset(self.images, self._targets.tolist(), self.classes, transform)

    def class_counts(self) -> dict[str, int]:
        """Number of images per class name."""
        counts = np.bincount(self.targets, minlength=len(self.classes))
        return {c: int(n) for c, n in zip(self.classes, counts)}


def decode_images(dataset: ImageFolderDataset, size: int, *, cache_dir: str | Path | None = None,
                  tag: str = "decoded", interpolation: str = "bilinear") -> TensorImageDataset:
    """Decode every image of ``dataset`` once: short side resized to ``size``, centre square
    crop, kept as ``uint8``. With ``cache_dir`` the pixels are stored as safetensors, keyed by
    every file's bytes and the decoding parameters, and reused while they match."""
    from .features import _load_or_compute, dataset_fingerprint  # features imports this module

    if size < 8:
        raise DataError(f"size must be at least 8 pixels, got {size}")
    decode = T.Compose([T.Resize(size, interpolation=T.InterpolationMode(interpolation)),
                        T.CenterCrop(size), T.PILToTensor()])
    source = dataset.with_transform(decode)

    def compute() -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.empty((len(source), 3, size, size), dtype=torch.uint8)
        for i in range(len(source)):
            images[i] = source[i][0]
        return images, torch.as_tensor(source.targets, dtype=torch.long)

    stored = _load_or_compute(cache_dir, f"{tag}-{size}px", dataset_fingerprint(source), compute)
    return TensorImageDataset(stored.x, stored.y.tolist(), dataset.classes)


def per_class_indices(targets: Sequence[int], n_per_class: int | None, seed: int = 0) -> list[int]:
    """Indices of at most ``n_per_class`` samples of each class, chosen reproducibly by ``seed``.

    ``None`` keeps everything. The result is sorted, so loaders see a stable order.
    """
    targets_arr = as_labels(targets, where="targets").numpy()
    if n_per_class is None:
        return list(range(len(targets_arr)))
    if n_per_class < 1:
        raise DataError(f"n_per_class must be >= 1, got {n_per_class}")
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for label in np.unique(targets_arr):
        idx = np.flatnonzero(targets_arr == label)
        chosen.extend(rng.permutation(idx)[:n_per_class].tolist())
    return sorted(chosen)


def stratified_split(targets: Sequence[int], val_fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """Split indices into train and validation, keeping class proportions; same seed, same split."""
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}")
    targets_arr = as_labels(targets, where="targets").numpy()
    rng = np.random.default_rng(seed)
    train: list[int] = []
    val: list[int] = []
    for label in np.unique(targets_arr):
        idx = rng.permutation(np.flatnonzero(targets_arr == label))
        n_val = max(1, int(round(len(idx) * val_fraction)))
        val.extend(idx[:n_val].tolist())
        train.extend(idx[n_val:].tolist())
    return sorted(train), sorted(val)


def _bad_label(value: Any, index: int, where: str, num_classes: int | None) -> DataError:
    """The error for the first unusable label: what it is, where it is, and what to do."""
    shown = f"{float(value):.7g}" if isinstance(value, (float, np.floating)) else f"{value!r:.40}"
    shown += f" ({type(value).__name__})"
    if num_classes is not None and isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        fix = (f"labels must lie in [0, {num_classes}). Either the head is too small for the data (rebuild it "
               "with num_classes = number of classes) or the labels are not 0-based class indices.")
    elif isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        fix = "labels are 0-based class indices and cannot be negative."
    elif isinstance(value, (bool, np.bool_)):
        fix = ("booleans are refused as labels (a mask passed by mistake looks the same): "
               "convert with int(), e.g. y.astype(int).")
    elif isinstance(value, (list, tuple, np.ndarray, torch.Tensor)):
        fix = "expected one class index per example, not a sequence (one-hot labels: take argmax first)."
    elif isinstance(value, (str, bytes)):
        fix = ("labels are class indices, not names: map names to indices first, "
               "e.g. [class_names.index(name) for name in names].")
    elif value is None or (isinstance(value, (float, np.floating)) and not math.isfinite(value)):
        fix = "the label is missing: drop the example or fill in its class."
    else:
        fix = ("labels are class indices (integers; whole-number floats like 1.0 are accepted); a fractional "
               "value would be truncated to a different class, so it is refused. Round or map your labels first.")
    return DataError(f"{where}[{index}] is {shown}: {fix}")


def _label_value(value: Any) -> int | None:
    """``value`` as an ``int`` class index if it is one (ints, numpy/torch integers, whole floats)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.ndim <= 1:
        value = value.item()
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
        return int(value)
    return None


def as_labels(labels: Any, num_classes: int | None = None, *, where: str = "labels") -> torch.Tensor:
    """Check class labels where they enter and return them as a 1-D ``int64`` tensor.

    Accepted: Python ints, numpy and torch integer types, and whole-number floats (``1.0``, as a
    CSV column with missing values reads them); with ``num_classes`` every label must also lie in
    ``[0, num_classes)``, else in ``[0, ∞)``. Refused with a :class:`DataError` that names the first
    bad value and its index: fractional floats (``0.7`` would otherwise be truncated to class 0),
    NaN, ``None``, strings (class names, not indices) and booleans (convert them with ``int``).

    Example::

        y = as_labels(df["label"].to_numpy(), num_classes=2)   # tensor([0, 1, ...])
    """
    if isinstance(labels, (str, bytes)):
        raise DataError(f"{where} must be a sequence of class indices, got a single {type(labels).__name__} "
                        f"{labels[:40]!r}")
    if isinstance(labels, torch.Tensor):
        if labels.dtype == torch.bool:
            labels = labels.detach().cpu().numpy()
        else:
            labels = labels.detach().cpu()
            labels = (labels.float() if labels.is_floating_point() else labels.long()).numpy()
    if isinstance(labels, np.ndarray) and labels.dtype.kind in "iuf":
        if labels.ndim != 1:
            raise DataError(f"{where} must be one class index per example (1-D), got shape {labels.shape}")
        arr = labels
        if arr.dtype.kind == "f":
            whole = np.isfinite(arr) & (arr == np.round(arr))
            if not whole.all():
                i = int(np.flatnonzero(~whole)[0])
                raise _bad_label(float(arr[i]), i, where, num_classes)
        arr = arr.astype(np.int64)
    else:
        try:
            values = list(labels)
        except TypeError:
            raise DataError(f"{where} must be a sequence of class indices, got {type(labels).__name__}") from None
        arr = np.empty(len(values), dtype=np.int64)
        for i, value in enumerate(values):
            k = _label_value(value)
            if k is None:
                raise _bad_label(value, i, where, num_classes)
            arr[i] = k
    out_of_range = (arr < 0) if num_classes is None else ((arr < 0) | (arr >= num_classes))
    if out_of_range.any():
        i = int(np.flatnonzero(out_of_range)[0])
        raise _bad_label(int(arr[i]), i, where, num_classes)
    return torch.from_numpy(arr)


def check_labels(labels: torch.Tensor, num_classes: int, *, where: str = "batch labels") -> torch.Tensor:
    """Raise :class:`DataError` unless ``labels`` are class indices in ``[0, num_classes)`` (see
    :func:`as_labels`); returns them as an ``int64`` tensor on the same device.

    ``[N, num_classes]`` floating-point tensors are class *probabilities* (soft targets, which
    ``F.cross_entropy`` accepts) and are returned unchanged.
    """
    if (isinstance(labels, torch.Tensor) and labels.is_floating_point() and labels.ndim == 2
            and labels.shape[-1] == num_classes):
        return labels
    if isinstance(labels, torch.Tensor) and labels.dtype == torch.long and labels.ndim == 1:
        # the common case, checked without copying the batch to the CPU first
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            as_labels(labels, num_classes, where=where)  # raises, naming the first bad label
        return labels
    device = labels.device if isinstance(labels, torch.Tensor) else None
    out = as_labels(labels, num_classes, where=where)
    return out.to(device) if device is not None else out


# ----------------------------------------------------------------------------------------------
# Text
# ----------------------------------------------------------------------------------------------


def ensure_text(value: str | bytes, *, where: str = "input") -> str:
    """Return ``value`` as ``str``; bytes must be valid UTF-8 (the error says where it is not)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataError(
                f"{where} is not valid UTF-8 (byte {err.start}: {bytes(value)[err.start:err.start + 4]!r}). "
                "Decode it with its real encoding first, e.g. raw.decode('latin-1'), "
                "or pass errors='replace' when you read the file."
            ) from None
    if value is None or (isinstance(value, (float, np.floating)) and math.isnan(value)):
        raise DataError(f"{where} is missing ({value!r}): drop the example, or fill it in, before passing it on")
    raise DataError(f"{where} must be str or bytes, got {type(value).__name__} {value!r:.40}: "
                    "convert it with str() if it really is text")


@dataclass
class TextDataset:
    """A binary sentiment dataset with a fixed, seeded held-out split.

    Online and offline go through the same steps: both start from the dataset's canonical
    ``train`` split (the only split the offline mirror has) and hold out a stratified, seeded
    ``test_fraction`` of it. ``source`` records where the rows came from.
    """

    name: str
    train_texts: list[str]
    train_labels: list[int]
    test_texts: list[str]
    test_labels: list[int]
    label_names: tuple[str, ...]
    source: str

    def __repr__(self) -> str:
        return (f"TextDataset({self.name!r}, train={len(self.train_texts)}, test={len(self.test_texts)}, "
                f"source={self.source!r})")


def _read_mirror_rows(asset: assets.TextDatasetAsset) -> tuple[list[str], list[int]]:
    path = assets.text_mirror_file(asset.name)
    texts: list[str] = []
    labels: list[int] = []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["source"] == asset.mirror_source_value:
                texts.append(row["text"])
                labels.append(int(row["label"]))
    return texts, labels


def _read_hub_rows(asset: assets.TextDatasetAsset) -> tuple[list[str], list[int]]:
    from datasets import load_dataset

    split = load_dataset(asset.hf_id, split="train")
    return [str(t) for t in split["text"]], [int(y) for y in split["label"]]


def load_text_dataset(name: str, *, offline: bool = False, test_fraction: float = 0.2, seed: int = 0,
                      max_train: int | None = None, max_test: int | None = None) -> TextDataset:
    """Load ``"rotten_tomatoes"`` or ``"imdb"`` with a stratified, seeded held-out split.

    ``max_train`` / ``max_test`` keep a class-balanced subset (CI scale). Rows come in a seeded
    random order (the source files are sorted by label).

    Example::

        rt = load_text_dataset("rotten_tomatoes", offline=True)
        print(rt.train_texts[0], rt.label_names[rt.train_labels[0]])
    """
    if name not in assets.TEXT_DATASETS:
        raise KeyError(f"unknown text dataset {name!r}; registered: {sorted(assets.TEXT_DATASETS)}")
    asset = assets.TEXT_DATASETS[name]
    if offline:
        texts, labels = _read_mirror_rows(asset)
        source = f"offline mirror ({asset.mirror_package} {asset.mirror_file})"
    else:
        texts, labels = _read_hub_rows(asset)
        source = f"Hugging Face hub ({asset.hf_id}, split 'train')"
    train_idx, test_idx = stratified_split(labels, test_fraction, seed)
    if max_train is not None:
        train_idx = [train_idx[i] for i in per_class_indices([labels[i] for i in train_idx], max_train // 2, seed)]
    if max_test is not None:
        test_idx = [test_idx[i] for i in per_class_indices([labels[i] for i in test_idx], max_test // 2, seed)]
    # The sources list one class after the other: shuffle (seeded), so that a slice such as
    # train_texts[:1000] is a fair sample and not a single class.
    rng = np.random.default_rng(seed)
    train_idx, test_idx = rng.permutation(train_idx).tolist(), rng.permutation(test_idx).tolist()
    return TextDataset(
        name=name,
        train_texts=[texts[i] for i in train_idx], train_labels=[labels[i] for i in train_idx],
        test_texts=[texts[i] for i in test_idx], test_labels=[labels[i] for i in test_idx],
        label_names=asset.label_names, source=source,
    )

