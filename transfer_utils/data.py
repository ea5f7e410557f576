"""Datasets: image folders read with the backbone's own preprocessing, and text datasets.

Images are read defensively: every PIL mode becomes 8-bit RGB (16-bit and float images are
scaled, never clipped; transparent pixels become white), photos are turned upright by their
EXIF orientation, and an unreadable file raises :class:`DataError` naming it — or, where a
function takes ``on_error="skip"``, is left out and reported. :func:`check_image_folder`
reports counts, sizes, modes, unreadable files and duplicates before any training.

Example::

    print(check_image_folder(root / "train"))
    train = ImageFolderDataset(root / "train", transform=prep.eval_transform())
    small = train.subset(per_class_indices(train.targets, 10, seed=0))
    texts = load_text_dataset("rotten_tomatoes", offline=True)
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import numbers
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision import transforms as T

from . import assets
from .cache import SkippedImage, load_or_compute
from .errors import ConfigError, DataError, SkippedImagesWarning

#: File extensions read as images. ``.gif`` is left out on purpose, as in torchvision's
#: ``ImageFolder`` (hymenoptera ships an ``imageNotFound.gif`` placeholder).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm")


# ----------------------------------------------------------------------------------------------
# Preprocessing
# ----------------------------------------------------------------------------------------------


#: Interpolation names a :class:`Preprocessing` accepts (torchvision's ``InterpolationMode`` values).
INTERPOLATIONS = tuple(m.value for m in T.InterpolationMode)


def _interpolation_mode(name: str) -> T.InterpolationMode:
    if name not in INTERPOLATIONS:
        raise ConfigError(f"unknown interpolation {name!r}; use one of {list(INTERPOLATIONS)} "
                          "(normally the backbone's: backbone.preprocessing.interpolation)")
    return T.InterpolationMode(name)


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

    def __post_init__(self) -> None:
        for name in ("input_size", "resize_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ConfigError(f"Preprocessing.{name} must be a positive number of pixels, got {value!r}")
        _interpolation_mode(self.interpolation)
        for name in ("mean", "std"):
            value = getattr(self, name)
            if len(value) != 3:
                raise ConfigError(f"Preprocessing.{name} needs one value per RGB channel (3), got {value!r}")
        if min(self.std) <= 0:
            raise ConfigError(f"Preprocessing.std must be positive, got {self.std!r}")

    def _interp(self) -> T.InterpolationMode:
        return _interpolation_mode(self.interpolation)

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

        if input_size is not None and (isinstance(input_size, bool) or not isinstance(input_size, numbers.Integral)
                                       or input_size < 1):
            raise ConfigError(f"input_size must be a positive number of pixels or None, got {input_size!r}")
        if not 0.0 < min_scale <= 1.0:
            raise ConfigError(f"min_scale is the smallest fraction of the image a crop covers, in (0, 1]; "
                              f"got {min_scale!r}")
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

#: What ``on_error`` accepts: ``"raise"`` (the default: the first unreadable image stops the run
#: with a :class:`DataError` that names it) or ``"skip"`` (leave unreadable images out, warn with
#: their paths and return them as ``.skipped``).
ON_ERROR = ("raise", "skip")

#: PIL modes with more than 8 bits per pixel: scaled to 0..255 by :func:`to_rgb`, never clipped.
HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")

_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def check_on_error(on_error: str) -> str:
    """Return ``on_error`` if it is one of :data:`ON_ERROR`, else raise :class:`ConfigError`."""
    if on_error not in ON_ERROR:
        raise ConfigError(f"on_error must be 'raise' (stop at the first unreadable image, the default) or "
                          f"'skip' (leave unreadable images out and report them), got {on_error!r}")
    return on_error



def warn_skipped(skipped: Sequence[SkippedImage], where: str, *, stacklevel: int = 3) -> None:
    """Warn (:class:`SkippedImagesWarning`) with the paths of ``skipped`` images, if there are any."""
    if not skipped:
        return
    shown = "\n  ".join(str(s) for s in skipped[:10])
    more = f"\n  ... and {len(skipped) - 10} more" if len(skipped) > 10 else ""
    warnings.warn(SkippedImagesWarning(
        f"{where}: left out {len(skipped)} unreadable image(s) (on_error='skip'); the full list is in "
        f".skipped:\n  {shown}{more}"), stacklevel=stacklevel)


def _as_path(path: Any, what: str = "path") -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise DataError(f"{what} must be a file path (str or pathlib.Path), got {type(path).__name__}")
    return Path(path)


def _to_uint8(img: Image.Image) -> np.ndarray:
    """The pixels of a 16-bit, 32-bit integer or float image scaled to 0..255 (see :func:`to_rgb`)."""
    arr = np.asarray(img).astype(np.float64)
    if arr.size == 0:
        return arr.astype(np.uint8)
    if img.mode.startswith("I;16"):
        unit = arr / 65535.0
    elif img.mode == "I":
        lo, hi = float(arr.min()), float(arr.max())
        if lo >= 0 and hi <= 65535:   # 16-bit data (Pillow opens 16-bit PGM and some PNG/TIFF as "I")
            unit = arr / 65535.0
        elif lo >= 0:
            unit = arr / float(2**31 - 1)
        else:
            unit = (arr + 2.0**31) / float(2**32 - 1)
    else:  # "F"
        finite = arr[np.isfinite(arr)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        if (lo >= 0.0 and hi <= 1.0) or hi == lo:
            unit = arr                   # already [0, 1] (or a constant: nothing to stretch; clipped)
        else:
            unit = (arr - lo) / (hi - lo)  # the image's own range
        unit = np.nan_to_num(unit, nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(np.rint(unit * 255.0), 0, 255).astype(np.uint8)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert an image of any PIL mode to 8-bit RGB, without clipping or losing contrast.

    * 16-bit modes (``I;16``, ``I;16B``, ...) are scaled by their range: 65535 becomes 255.
    * ``I`` (32-bit integer) is scaled as 16-bit data when every value lies in 0..65535 (Pillow
      opens 16-bit PGM and some 16-bit PNG/TIFF files as ``I``), else by the 32-bit range
      (0..2**31-1, or -2**31..2**31-1 when there are negative values).
    * ``F`` (float) is taken as [0, 1] intensities when every finite value lies in [0, 1];
      otherwise the image's own range (min..max of its finite values) is stretched to 0..255, so
      a depth map or a float copy of an 8-bit image keeps its contrast and ordering. NaN becomes
      0; a constant image outside [0, 1] is clipped.
    * Transparent pixels (RGBA, LA, PA, or a palette/L/RGB ``transparency`` entry) become white.
    * Everything else (1, L, P, CMYK, YCbCr, LAB, HSV, RGBX, ...) goes through PIL's ``convert``.
    """
    if not isinstance(img, Image.Image):
        raise DataError(f"expected a PIL image, got {type(img).__name__}")
    try:
        if img.mode in HIGH_BIT_MODES:
            return Image.fromarray(_to_uint8(img)).convert("RGB")
        if img.mode == "La":  # premultiplied alpha: PIL converts it to RGBA only through LA
            img = img.convert("LA")
        if img.mode in _ALPHA_MODES or (img.mode in ("P", "L", "RGB") and "transparency" in img.info):
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return img.convert("RGB")
    except ValueError as err:
        raise DataError(f"cannot convert an image of mode {img.mode!r} to RGB ({err}); "
                        "save it as an RGB or grayscale PNG/JPEG first") from None


def _bomb_message(path: Path, err: BaseException) -> str:
    return (
        f"cannot decode image {path}: it is too large to decode safely ({err}). Pillow refuses images "
        f"over Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS} pixels as a guard against "
        "decompression bombs. If the image is genuine, raise the limit deliberately before loading "
        "(from PIL import Image; Image.MAX_IMAGE_PIXELS = 400_000_000 — None switches the guard off) "
        "or downscale the file; otherwise delete it."
    )


def open_image(path: str | Path) -> Image.Image:
    """Decode an image file in its own mode, turned upright by its EXIF orientation.

    Phones store a portrait photo sideways with an EXIF ``Orientation`` tag (values 2..8); the
    pixels returned here are the ones a photo viewer shows. Every failure — missing, corrupt or
    truncated file, an image over Pillow's decompression-bomb limit — raises :class:`DataError`
    naming the file. :func:`load_image` adds the conversion to RGB.
    """
    path = _as_path(path, "image path")
    if path.is_dir():
        raise DataError(f"{path} is a folder, not an image file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                return _upright(img, path)
    except FileNotFoundError:
        raise DataError(f"image file not found: {path}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise DataError(_bomb_message(path, err)) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(
            f"cannot decode image {path} ({err}). The file is corrupt or not an image: "
            "delete or replace it (for a registered dataset, fetch_dataset(name, force=True) "
            "unpacks a fresh, verified copy)."
        ) from err


def _upright(img: Image.Image, path: Path) -> Image.Image:
    try:
        upright = ImageOps.exif_transpose(img)
    except Exception as err:  # noqa: BLE001 - a broken EXIF block must not lose the image
        warnings.warn(f"{path}: its EXIF orientation cannot be read ({err!r}); using the pixels as stored, "
                      "which may be rotated", stacklevel=3)
        return img.copy()
    return upright if upright is not None else img


def load_image(path: str | Path) -> Image.Image:
    """Open any image file as 8-bit RGB, upright (EXIF orientation applied); see :func:`to_rgb`
    for how 16-bit, float and transparent images are converted. Errors name the file."""
    img = open_image(path)
    try:
        return to_rgb(img)
    except DataError as err:
        raise DataError(f"{path}: {err}") from None


def _is_image_file(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS


def _image_subfolders(folder: Path) -> list[str]:
    """Names of ``folder``'s sub-folders that hold images (at any depth)."""
    return sorted(d.name for d in folder.iterdir()
                  if d.is_dir() and not d.name.startswith(".") and any(_is_image_file(p) for p in d.rglob("*")))


def _scan_image_folder(root: Path, allow_nested: bool = False) -> tuple[list[str], list[tuple[Path, int]]]:
    if not root.is_dir():
        raise DataError(f"{root} is not a folder. Expected the layout {root}/<class>/<image>.")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    nested = {cls: subs for cls in classes if len(subs := _image_subfolders(root / cls)) >= 2}
    if nested and not allow_nested:
        found = "; ".join(f"{cls}/ holds {', '.join(s + '/' for s in subs[:5])}{' ...' if len(subs) > 5 else ''}"
                          for cls, subs in list(nested.items())[:4])
        first = next(iter(nested))
        raise DataError(
            f"{root} looks like a data set's root, not one split of it: its class folders hold class-like "
            f"sub-folders with images ({found}). Read as it is, it would become a {len(classes)}-class data set "
            f"{classes} whose 'classes' mix the real ones. Pass one split's folder instead, e.g. "
            f"ImageFolderDataset(root / {first!r}); if the sub-folders really are parts of their parent class, "
            "pass allow_nested=True."
        )
    if len(classes) < 2:
        raise DataError(
            f"{root} has {len(classes)} class folder(s) ({classes}); a classifier needs at least 2. "
            f"Put each class's images in its own sub-folder: {root}/<class>/<image>."
        )
    samples: list[tuple[Path, int]] = []
    for label, cls in enumerate(classes):
        files = sorted(p for p in (root / cls).rglob("*") if _is_image_file(p))
        if not files:
            raise DataError(
                f"class folder {root / cls} holds no images (extensions {', '.join(IMAGE_EXTENSIONS)}). "
                "Add images or remove the folder."
            )
        samples.extend((f, label) for f in files)
    return classes, samples


def _check_transform(transform: Any) -> None:
    if transform is not None and not callable(transform):
        raise ConfigError(f"transform must be callable (e.g. preprocessing.eval_transform()) or None, "
                          f"got {type(transform).__name__}")


class ImageFolderDataset(Dataset[tuple[Any, int]]):
    """``<root>/<class>/<image>`` images with integer labels in alphabetical class order.

    Unlike a bare ``torchvision.datasets.ImageFolder`` it fails early with a clear message for
    an empty class folder, fewer than two classes, or a data set's root (``root/train/<class>``)
    passed instead of one split; converts every image mode to RGB; and can be subset without
    losing its class names.

    With ``on_error="skip"`` every image is decoded once here and the unreadable ones are left
    out (labels stay aligned: a sample is a (path, label) pair), reported with a warning and
    kept in ``.skipped``. The default, ``"raise"``, stops at the first unreadable image when it
    is read. Run :func:`check_image_folder` first to see every problem at once.

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
        on_error: str = "raise",
        allow_nested: bool = False,
    ) -> None:
        self.root = _as_path(root, "root")
        _check_transform(transform)
        self.on_error = check_on_error(on_error)
        self.skipped: list[SkippedImage] = []
        if samples is None:
            found_classes, found = _scan_image_folder(self.root, allow_nested)
            self.classes, self.samples = found_classes, found
            if on_error == "skip":
                self.samples, self.skipped = self._readable(found)
        else:
            self.classes, self.samples = list(classes or []), list(samples)
        self.transform = transform

    def _readable(self, found: list[tuple[Path, int]]) -> tuple[list[tuple[Path, int]], list[SkippedImage]]:
        kept, skipped = [], []
        for i, (path, label) in enumerate(found):
            try:
                load_image(path)
            except DataError as err:
                skipped.append(SkippedImage(i, str(path), str(err)))
            else:
                kept.append((path, label))
        warn_skipped(skipped, f"ImageFolderDataset({self.root})", stacklevel=4)
        empty = sorted(set(self.classes) - {self.classes[label] for _, label in kept})
        if empty:
            raise DataError(f"every image of class(es) {empty} in {self.root} is unreadable "
                            f"(first: {skipped[0]}); fix or replace those files")
        return kept, skipped

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

    def _like(self, samples: Sequence[tuple[Path, int]],
              transform: Callable[[Image.Image], Any] | None) -> "ImageFolderDataset":
        out = ImageFolderDataset(self.root, transform, samples=samples, classes=self.classes, on_error=self.on_error)
        out.skipped = list(self.skipped)
        return out

    def subset(self, indices: Sequence[int]) -> "ImageFolderDataset":
        """A dataset holding only ``indices`` (same classes, same transform)."""
        return self._like([self.samples[i] for i in indices], self.transform)

    def with_transform(self, transform: Callable[[Image.Image], Any] | None) -> "ImageFolderDataset":
        """The same samples read through another transform."""
        return self._like(self.samples, transform)

    def class_counts(self) -> dict[str, int]:
        """Number of images per class name."""
        counts = np.bincount(self.targets, minlength=len(self.classes))
        return {c: int(n) for c, n in zip(self.classes, counts)}


@dataclass
class ImageFolderReport:
    """What :func:`check_image_folder` found; ``print(report)`` shows it, ``report.ok`` sums it up."""

    root: Path
    class_counts: dict[str, int]              #: image files per class folder
    min_size: tuple[int, int] | None          #: (smallest width, smallest height) of the readable images
    max_size: tuple[int, int] | None          #: (largest width, largest height)
    modes: dict[str, int]                     #: PIL mode as stored -> number of images
    unreadable: list[SkippedImage]            #: files that cannot be decoded, and why
    duplicates: list[list[Path]]              #: groups of files with identical bytes
    ignored: list[Path]                       #: files in class folders that are not images (by extension)

    def _class_of(self, path: Path) -> str:
        return path.relative_to(self.root).parts[0]

    @property
    def label_conflicts(self) -> list[list[Path]]:
        """Duplicate groups whose copies sit in different class folders: one image, two labels."""
        return [g for g in self.duplicates if len({self._class_of(p) for p in g}) > 1]

    @property
    def ok(self) -> bool:
        """No unreadable file and no image filed under two classes."""
        return not self.unreadable and not self.label_conflicts

    def __str__(self) -> str:
        n = sum(self.class_counts.values())
        lines = [f"{self.root}: {len(self.class_counts)} classes, {n} image files"]
        width = max(len(c) for c in self.class_counts)
        lines += [f"  {c:<{width}}  {k:6d}" for c, k in self.class_counts.items()]
        if self.min_size and self.max_size:
            lines.append(f"sizes: width {self.min_size[0]}..{self.max_size[0]} px, "
                         f"height {self.min_size[1]}..{self.max_size[1]} px")
        lines.append("modes: " + ", ".join(f"{m} {k}" for m, k in sorted(self.modes.items(), key=lambda kv: -kv[1])))
        if self.unreadable:
            lines.append(f"UNREADABLE ({len(self.unreadable)}): fix or delete them, or read with on_error='skip'")
            lines += [f"  {s}" for s in self.unreadable]
        conflicts = self.label_conflicts
        if conflicts:
            lines.append(f"LABEL CONFLICTS ({len(conflicts)}): identical files in different classes; keep one copy "
                         "in the right class")
            lines += ["  " + " == ".join(str(p.relative_to(self.root)) for p in g) for g in conflicts]
        same_class = [g for g in self.duplicates if g not in conflicts]
        if same_class:
            lines.append(f"duplicates within a class ({len(same_class)} groups): they count twice in training "
                         "and can leak across splits")
            lines += ["  " + " == ".join(str(p.relative_to(self.root)) for p in g) for g in same_class]
        if self.ignored:
            lines.append(f"ignored, not images ({len(self.ignored)}): "
                         + ", ".join(str(p.relative_to(self.root)) for p in self.ignored[:5])
                         + (" ..." if len(self.ignored) > 5 else ""))
        lines.append("ok" if self.ok else "NOT OK: see above")
        return "\n".join(lines)


def check_image_folder(root: str | Path, *, allow_nested: bool = False) -> ImageFolderReport:
    """Read every image of ``<root>/<class>/<image>`` once and report, before any training:
    images per class, the smallest and largest sizes, the modes, the unreadable files, and
    files with identical bytes (duplicates; across classes they are label conflicts).

    It raises :class:`DataError` only for a layout that cannot be read at all (see
    :class:`ImageFolderDataset`); problems with single files are reported, not raised.

    Example::

        report = check_image_folder(root / "train")
        print(report)            # counts, sizes, modes, problems
        assert report.ok
    """
    root = _as_path(root, "root")
    classes, samples = _scan_image_folder(root, allow_nested)
    counts = {c: 0 for c in classes}
    modes: dict[str, int] = {}
    widths: list[int] = []
    heights: list[int] = []
    unreadable: list[SkippedImage] = []
    by_hash: dict[str, list[Path]] = {}
    for i, (path, label) in enumerate(samples):
        counts[classes[label]] += 1
        by_hash.setdefault(hashlib.sha256(path.read_bytes()).hexdigest(), []).append(path)
        try:
            img = open_image(path)
            to_rgb(img)
        except DataError as err:
            unreadable.append(SkippedImage(i, str(path), str(err)))
            continue
        modes[img.mode] = modes.get(img.mode, 0) + 1
        widths.append(img.width)
        heights.append(img.height)
    ignored = sorted(p for c in classes for p in (root / c).rglob("*")
                     if p.is_file() and not _is_image_file(p) and not p.name.startswith("."))
    return ImageFolderReport(
        root=root, class_counts=counts,
        min_size=(min(widths), min(heights)) if widths else None,
        max_size=(max(widths), max(heights)) if widths else None,
        modes=modes, unreadable=unreadable,
        duplicates=[sorted(g) for g in by_hash.values() if len(g) > 1],
        ignored=ignored,
    )


class TensorImageDataset(Dataset[tuple[Any, int]]):
    """Images decoded once into a ``uint8`` tensor ``[N, 3, S, S]``, with their labels.

    Decoding and resizing a JPEG costs more than a small network's forward pass on a CPU; with
    the pixels in memory an epoch costs only the network. Random augmentation still works:
    ``transform`` (e.g. :meth:`Preprocessing.tensor_transform`) runs on every access.
    ``skipped`` lists the images that :func:`decode_images` left out under ``on_error="skip"``.

    Example::

        train = decode_images(ImageFolderDataset(root / "train"), preprocessing=prep, cache_dir=cache)
        train = train.with_transform(prep.tensor_transform(train=True))
    """

    def __init__(self, images: torch.Tensor, targets: Sequence[int], classes: Sequence[str],
                 transform: Callable[[torch.Tensor], Any] | None = None, *,
                 skipped: Sequence[SkippedImage] = ()) -> None:
        if not isinstance(images, torch.Tensor):
            raise DataError(f"images must be a uint8 tensor [N, 3, H, W], got {type(images).__name__}")
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise DataError(f"images must be a uint8 tensor [N, 3, H, W], got {images.dtype} {tuple(images.shape)}")
        if len(targets) != images.shape[0]:
            raise DataError(f"{images.shape[0]} images but {len(targets)} labels")
        _check_transform(transform)
        self.images = images
        self.classes = list(classes)
        self._targets = as_labels(targets, len(self.classes), where="targets")
        self.transform = transform
        self.skipped = list(skipped)

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
        return TensorImageDataset(self.images[idx], self._targets[idx].tolist(), self.classes, self.transform,
                                  skipped=self.skipped)

    def with_transform(self, transform: Callable[[torch.Tensor], Any] | None) -> "TensorImageDataset":
        """The same images read through another transform (the pixels are shared, not copied)."""
        return TensorImageDataset(self.images, self._targets.tolist(), self.classes, transform, skipped=self.skipped)

    def class_counts(self) -> dict[str, int]:
        """Number of images per class name."""
        counts = np.bincount(self.targets, minlength=len(self.classes))
        return {c: int(n) for c, n in zip(self.classes, counts)}


def _crop_start(extent: int, size: int, inner: int | None) -> int:
    """Where a ``size`` crop starts along an ``extent`` so that a later centre crop to ``inner``
    lands exactly where a direct centre crop of ``extent`` to ``inner`` would (torchvision's
    rounding), keeping decoded and directly transformed images pixel-identical."""
    if inner is None or inner > size:
        return int(round((extent - size) / 2.0))
    start = int(round((extent - inner) / 2.0)) - int(round((size - inner) / 2.0))
    return min(max(start, 0), extent - size)


def dataset_fingerprint(dataset: ImageFolderDataset | TensorImageDataset) -> str:
    """sha256 over every sample's bytes (file or decoded pixels), label, and the dataset's transform."""
    h = hashlib.sha256(repr(dataset.transform).encode())
    if isinstance(dataset, TensorImageDataset):
        h.update(dataset.images.contiguous().numpy().tobytes())
        h.update(str(dataset.targets).encode())
        return h.hexdigest()
    for path, label in dataset.samples:
        try:
            h.update(hashlib.sha256(Path(path).read_bytes()).digest())
        except OSError:  # missing or unreadable: the run reports it (or skips it) when it reads the file
            h.update(b"<unreadable file>")
        h.update(str(label).encode())
    return h.hexdigest()


def decode_images(dataset: ImageFolderDataset, size: int | None = None, *,
                  preprocessing: Preprocessing | None = None, cache_dir: str | Path | None = None,
                  tag: str = "decoded", interpolation: str | None = None,
                  on_error: str = "raise") -> TensorImageDataset:
    """Decode every image of ``dataset`` once: short side resized to ``size``, centre square
    crop, kept as ``uint8``.

    Pass the backbone's ``preprocessing``: the resize then uses *its* interpolation (the one
    :meth:`Preprocessing.eval_transform` — and so :func:`~transfer_utils.inference.predict` —
    uses), ``size`` defaults to its ``resize_size``, and the square crop is placed so that
    ``preprocessing.tensor_transform(train=False)`` of a decoded image equals
    ``preprocessing.eval_transform()`` of the file. Training, evaluation and serving then see
    the same pixels. Without ``preprocessing``, ``interpolation`` (default ``"bilinear"``, with
    a warning) sets the resize.

    With ``cache_dir`` the pixels are stored as safetensors, keyed by every file's bytes and
    label, the size and the interpolation, and reused while they match. ``on_error="skip"``
    leaves unreadable images out (labels stay aligned) and lists them in ``.skipped``.
    """

    if not isinstance(dataset, ImageFolderDataset):
        raise DataError(f"decode_images reads an ImageFolderDataset (files on disk), got {type(dataset).__name__}")
    if len(dataset) == 0:
        raise DataError("the dataset holds no images (an empty subset?); there is nothing to decode")
    if preprocessing is not None and not isinstance(preprocessing, Preprocessing):
        raise ConfigError(f"preprocessing must be a Preprocessing (e.g. backbone.preprocessing), "
                          f"got {type(preprocessing).__name__}")
    check_on_error(on_error)
    if not isinstance(tag, str) or not tag.strip():
        raise ConfigError(f"tag names the cache file: a non-empty string, got {tag!r}")
    if size is None:
        if preprocessing is None:
            raise ConfigError("decode_images needs size= or preprocessing= (whose resize_size it then uses)")
        size = preprocessing.resize_size
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 8:
        raise DataError(f"size must be at least 8 pixels, got {size!r}")
    size = int(size)
    if preprocessing is not None:
        if interpolation is not None and interpolation != preprocessing.interpolation:
            raise ConfigError(
                f"interpolation={interpolation!r} contradicts preprocessing.interpolation="
                f"{preprocessing.interpolation!r}: training would resize differently from evaluation and "
                "predict. Leave interpolation out; the preprocessing decides.")
        interpolation = preprocessing.interpolation
    elif interpolation is None:
        warnings.warn("decode_images without preprocessing= resizes with 'bilinear', which may differ from "
                      "the backbone's preprocessing (what evaluation and predict use). Pass "
                      "preprocessing=backbone.preprocessing.", stacklevel=2)
        interpolation = "bilinear"
    mode = _interpolation_mode(interpolation)
    inner = preprocessing.input_size if preprocessing is not None else None
    resize = T.Resize(size, interpolation=mode)
    settings = json.dumps({"size": size, "interpolation": interpolation, "aligned_to": inner,
                           **({"on_error": on_error} if on_error == "skip" else {})}, sort_keys=True)
    key = hashlib.sha256((settings + dataset_fingerprint(dataset.with_transform(None))).encode()).hexdigest()

    def compute() -> tuple[torch.Tensor, torch.Tensor, list[SkippedImage]]:
        images = torch.empty((len(dataset), 3, size, size), dtype=torch.uint8)
        targets: list[int] = []
        skipped: list[SkippedImage] = []
        for i, (path, label) in enumerate(dataset.samples):
            try:
                img = resize(load_image(path))
            except DataError as err:
                if on_error == "raise":
                    raise
                skipped.append(SkippedImage(i, str(path), str(err)))
                continue
            left, top = _crop_start(img.width, size, inner), _crop_start(img.height, size, inner)
            images[len(targets)] = T.functional.pil_to_tensor(img.crop((left, top, left + size, top + size)))
            targets.append(label)
        if not targets:
            raise DataError(f"none of the {len(dataset)} images could be read (first: {skipped[0]})")
        if skipped:
            images = images[:len(targets)].clone()
        return images, torch.as_tensor(targets, dtype=torch.long), skipped

    stored = load_or_compute(cache_dir, f"{tag}-{size}px-{interpolation}", key, compute)
    warn_skipped(stored.skipped, f"decode_images({tag!r})")
    return TensorImageDataset(stored.x, stored.y.tolist(), dataset.classes, skipped=stored.skipped)


def per_class_indices(targets: Sequence[int], n_per_class: int | None, seed: int = 0) -> list[int]:
    """Indices of at most ``n_per_class`` samples of each class, chosen reproducibly by ``seed``.

    ``None`` keeps everything. The result is sorted, so loaders see a stable order.
    """
    targets_arr = as_labels(targets, where="targets").numpy()
    if n_per_class is None:
        return list(range(len(targets_arr)))
    if isinstance(n_per_class, bool) or not isinstance(n_per_class, (int, np.integer)):
        raise ConfigError(f"n_per_class must be a whole number >= 1 (or None for all), got "
                          f"{type(n_per_class).__name__} {n_per_class!r}")
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
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float, np.integer, np.floating)):
        raise ConfigError(f"val_fraction must be a number in (0, 1), e.g. 0.2, got "
                          f"{type(val_fraction).__name__} {val_fraction!r}")
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
    if not isinstance(name, str) or name not in assets.TEXT_DATASETS:
        raise ConfigError(f"unknown text dataset {name!r}; use one of the registered names: "
                          f"{sorted(assets.TEXT_DATASETS)}")
    if (isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float, np.integer, np.floating))
            or not 0.0 < test_fraction < 1.0):
        raise ConfigError(f"test_fraction must be a number in (0, 1), the share held out for testing "
                          f"(e.g. 0.2), got {test_fraction!r}")
    for what, cap in (("max_train", max_train), ("max_test", max_test)):
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, (int, np.integer)) or cap < 2):
            raise ConfigError(f"{what} must be a whole number >= 2 (it keeps {what} // 2 examples per class) "
                              f"or None for all, got {type(cap).__name__} {cap!r}")
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

