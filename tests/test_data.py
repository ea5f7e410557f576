"""Bad input gets a clear error; every image mode becomes RGB; splits are reproducible."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from transfer_utils import data
from transfer_utils.errors import DataError


def _img(path: Path, mode: str = "RGB", color=None, size=(40, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    defaults = {"RGB": (200, 30, 30), "L": 128, "CMYK": (0, 255, 255, 0), "RGBA": (255, 0, 0, 0),
                "LA": (10, 0), "P": 3}
    img = Image.new(mode, size, color if color is not None else defaults[mode])
    fmt = {"CMYK": "JPEG"}.get(mode, "PNG")
    img.save(path, format=fmt, **({"transparency": 3} if mode == "P" else {}))
    return path


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGBA", "LA", "P", "RGB"])
def test_every_image_mode_becomes_rgb(tmp_path: Path, mode: str) -> None:
    img = data.load_image(_img(tmp_path / f"x_{mode}.img", mode))
    assert img.mode == "RGB" and img.size == (40, 30)


def test_transparent_pixels_become_white(tmp_path: Path) -> None:
    img = data.load_image(_img(tmp_path / "t.png", "RGBA", (255, 0, 0, 0)))
    assert img.getpixel((0, 0)) == (255, 255, 255)
    img = data.load_image(_img(tmp_path / "o.png", "RGBA", (255, 0, 0, 255)))
    assert img.getpixel((0, 0)) == (255, 0, 0)


def test_corrupt_and_truncated_images_name_the_file(tmp_path: Path) -> None:
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"\x00\x01 definitely not a jpeg")
    with pytest.raises(DataError, match="junk.jpg"):
        data.load_image(junk)
    whole = tmp_path / "whole.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(whole, quality=95)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(DataError, match="cut.jpg.*corrupt"):
        data.load_image(cut)
    with pytest.raises(DataError, match="not found"):
        data.load_image(tmp_path / "missing.jpg")


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a folder"):
        data.ImageFolderDataset(tmp_path / "nope")
    _img(tmp_path / "one" / "cats" / "a.png")
    with pytest.raises(DataError, match="at least 2"):
        data.ImageFolderDataset(tmp_path / "one")
    _img(tmp_path / "two" / "cats" / "a.png")
    (tmp_path / "two" / "dogs").mkdir()
    (tmp_path / "two" / "dogs" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match="dogs holds no images"):
        data.ImageFolderDataset(tmp_path / "two")


def test_image_folder_reads_and_subsets(tmp_path: Path) -> None:
    for cls, n in (("bees", 3), ("ants", 2)):
        for i in range(n):
            _img(tmp_path / cls / f"{i}.png", "L")
    (tmp_path / "ants" / "placeholder.gif").write_bytes(b"GIF89a")
    ds = data.ImageFolderDataset(tmp_path, transform=lambda im: torch.tensor(im.size))
    assert ds.classes == ["ants", "bees"] and ds.targets == [0, 0, 1, 1, 1]
    x, y = ds[4]
    assert y == 1 and x.tolist() == [40, 30]
    sub = ds.subset([0, 4])
    assert sub.classes == ds.classes and sub.targets == [0, 1]


def test_per_class_indices_and_stratified_split_are_reproducible() -> None:
    targets = [0] * 50 + [1] * 30 + [2] * 20
    a = data.per_class_indices(targets, 5, seed=1)
    assert a == data.per_class_indices(targets, 5, seed=1) and a != data.per_class_indices(targets, 5, seed=2)
    assert np.bincount([targets[i] for i in a]).tolist() == [5, 5, 5]
    assert data.per_class_indices(targets, None) == list(range(100))
    train, val = data.stratified_split(targets, 0.2, seed=0)
    assert not set(train) & set(val) and len(train) + len(val) == 100
    assert np.bincount([targets[i] for i in val]).tolist() == [10, 6, 4]
    assert (train, val) == data.stratified_split(targets, 0.2, seed=0)
    with pytest.raises(DataError):
        data.stratified_split(targets, 1.5)


def test_labels_out_of_range_are_explained() -> None:
    data.check_labels(torch.tensor([0, 1, 2]), 3)
    with pytest.raises(DataError, match=r"\[0, 2\).*head is too small"):
        data.check_labels(torch.tensor([0, 2]), 2)
    with pytest.raises(DataError):
        data.check_labels(torch.tensor([-1, 0]), 2)


def test_text_must_be_utf8() -> None:
    assert data.ensure_text("naïve") == "naïve"
    assert data.ensure_text("naïve".encode()) == "naïve"
    with pytest.raises(DataError, match="not valid UTF-8.*latin-1"):
        data.ensure_text("naïve".encode("latin-1"), where="review #3")
    with pytest.raises(DataError, match="str or bytes"):
        data.ensure_text(42)  # type: ignore[arg-type]


def test_preprocessing_normalises_with_the_backbones_statistics(tmp_path: Path) -> None:
    prep = data.Preprocessing(32, 36, "bilinear", (0.5, 0.25, 0.0), (0.5, 0.25, 1.0))
    x = prep.eval_transform()(Image.new("RGB", (50, 40), (255, 255, 255)))
    assert x.shape == (3, 32, 32)
    assert torch.allclose(x[:, 0, 0], torch.tensor([1.0, 3.0, 1.0]))
    assert torch.allclose(prep.denormalize(x)[:, 0, 0], torch.ones(3))
    assert prep.train_transform()(Image.new("RGB", (50, 40))).shape == (3, 32, 32)
