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


def _folder(tmp_path: Path) -> data.ImageFolderDataset:
    for i, (cls, color) in enumerate((("cat", (250, 10, 10)), ("dog", (10, 10, 250)))):
        for k in range(3):
            _img(tmp_path / "imgs" / cls / f"{k}.png", "RGB", color, size=(60 + 10 * k, 40))
    return data.ImageFolderDataset(tmp_path / "imgs")


def test_decode_images_once_and_reuse_the_cache(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    decoded = data.decode_images(folder, 24, cache_dir=tmp_path / "cache", tag="pets")
    assert decoded.images.dtype == torch.uint8 and tuple(decoded.images.shape) == (6, 3, 24, 24)
    assert decoded.targets == [0, 0, 0, 1, 1, 1] and decoded.classes == ["cat", "dog"]
    assert int(decoded.images[0, 0].float().mean()) > 200 and int(decoded.images[3, 2].float().mean()) > 200
    files = list((tmp_path / "cache").glob("pets-24px-*.safetensors"))
    assert len(files) == 1
    again = data.decode_images(folder, 24, cache_dir=tmp_path / "cache", tag="pets")
    assert torch.equal(again.images, decoded.images)
    # A changed file changes the key: the cache is never stale.
    _img(tmp_path / "imgs" / "cat" / "0.png", "RGB", (0, 255, 0), size=(60, 40))
    changed = data.decode_images(folder, 24, cache_dir=tmp_path / "cache", tag="pets")
    assert len(list((tmp_path / "cache").glob("pets-24px-*.safetensors"))) == 2
    assert int(changed.images[0, 1].float().mean()) > 200
    with pytest.raises(DataError, match="at least 8"):
        data.decode_images(folder, 4)


def test_tensor_image_dataset_transforms_subsets_and_errors(tmp_path: Path) -> None:
    decoded = data.decode_images(_folder(tmp_path), 32)
    prep = data.Preprocessing(28, 32, "bilinear", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    val = decoded.with_transform(prep.tensor_transform(train=False))
    x, y = val[4]
    assert x.dtype == torch.float32 and tuple(x.shape) == (3, 28, 28) and y == 1
    assert torch.equal(val[4][0], x), "evaluation views are deterministic"
    assert x[2].mean() > 0.9 and x[0].mean() < -0.8   # blue image: normalised to about +1 / -1
    train = decoded.with_transform(prep.tensor_transform(train=True, input_size=16))
    torch.manual_seed(0)
    views = torch.stack([train[0][0] for _ in range(4)])
    assert tuple(views.shape) == (4, 3, 16, 16)
    assert val.images is decoded.images, "with_transform shares the pixels"
    sub = val.subset([1, 5])
    assert len(sub) == 2 and sub.targets == [0, 1] and sub.class_counts() == {"cat": 1, "dog": 1}
    with pytest.raises(DataError, match="uint8"):
        data.TensorImageDataset(torch.zeros(2, 3, 8, 8), [0, 1], ["a", "b"])
    with pytest.raises(DataError, match="2 images but 3 labels"):
        data.TensorImageDataset(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), [0, 1, 1], ["a", "b"])


def test_labels_are_class_indices_or_a_clear_error_naming_the_first_bad_one() -> None:
    # accepted: ints, numpy and torch integer types, whole-number floats (as pandas reads a CSV column)
    for good in ([0, 1, 1], (0, 1, 1), np.array([0, 1, 1], dtype=np.int32), np.array([0, 1, 1], dtype=np.uint8),
                 torch.tensor([0, 1, 1]), [np.int64(0), torch.tensor(1), 1], [0.0, 1.0, 1.0], np.array([0.0, 1.0, 1.0])):
        y = data.as_labels(good, 2)
        assert y.dtype == torch.int64 and y.tolist() == [0, 1, 1]
    assert data.as_labels([], 2).tolist() == []
    # refused, naming the value and its index: 0.7 used to become class 0 without a word
    for bad, index, hint in (([0, 1, 0.7], 2, "fractional"), (np.array([0.0, 0.5]), 1, "fractional"),
                             ([0, None, 1], 1, "missing"), ([0, float("nan")], 1, "missing"),
                             (["neg", "pos"], 0, "not names"), ([0, True], 1, "booleans"),
                             (np.array([True, False]), 0, "booleans"), ([0, 1, 2], 2, r"\[0, 2\)"),
                             ([0, -1], 1, r"\[0, 2\)"), ([[0], [1]], 0, "one class index per example")):
        with pytest.raises(DataError, match=rf"labels\[{index}\] is .*{hint}"):
            data.as_labels(bad, 2)
    with pytest.raises(DataError, match="single str"):
        data.as_labels("0110", 2)
    with pytest.raises(DataError, match=r"1-D"):
        data.as_labels(np.zeros((2, 2), dtype=int), 2)
    # every label entry point of this module goes through it
    images = torch.zeros(3, 3, 8, 8, dtype=torch.uint8)
    for bad in ([0, 1, 0.7], [0, 1, 2], [0, 1, -1], [0, 1, None], [0, 1, "1"], [0, 1, True]):
        with pytest.raises(DataError, match=r"targets\[2\]"):
            data.TensorImageDataset(images, bad, ["a", "b"])
    assert data.TensorImageDataset(images, np.array([0.0, 1.0, 1.0]), ["a", "b"]).targets == [0, 1, 1]
    with pytest.raises(DataError, match=r"targets\[2\] is None"):
        data.per_class_indices([0, 1, None], 1)
    with pytest.raises(DataError, match=r"targets\[1\] is 0.5"):
        data.stratified_split([0, 0.5, 1, 1], 0.5)
    with pytest.raises(DataError, match=r"batch labels\[1\] is 0.7"):
        data.check_labels(torch.tensor([0.0, 0.7]), 2)
    assert data.check_labels(torch.tensor([0.0, 1.0]), 2).dtype == torch.int64   # whole floats become indices
    soft = torch.tensor([[0.3, 0.7], [1.0, 0.0]])                                  # class probabilities pass
    assert data.check_labels(soft, 2) is soft


def test_missing_and_non_text_values_are_named() -> None:
    with pytest.raises(DataError, match="review #2 is missing"):
        data.ensure_text(None, where="review #2")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="review #2 is missing"):
        data.ensure_text(float("nan"), where="review #2")  # type: ignore[arg-type]
