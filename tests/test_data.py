"""Bad input gets a clear error; every image mode becomes RGB; splits are reproducible."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from transfer_utils import data
from transfer_utils.errors import ConfigError, DataError, SkippedImagesWarning


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
    decoded = data.decode_images(folder, 24, interpolation="bilinear", cache_dir=tmp_path / "cache", tag="pets")
    assert decoded.images.dtype == torch.uint8 and tuple(decoded.images.shape) == (6, 3, 24, 24)
    assert decoded.targets == [0, 0, 0, 1, 1, 1] and decoded.classes == ["cat", "dog"]
    assert int(decoded.images[0, 0].float().mean()) > 200 and int(decoded.images[3, 2].float().mean()) > 200
    files = list((tmp_path / "cache").glob("pets-24px-*.safetensors"))
    assert len(files) == 1
    again = data.decode_images(folder, 24, interpolation="bilinear", cache_dir=tmp_path / "cache", tag="pets")
    assert torch.equal(again.images, decoded.images)
    # A changed file changes the key: the cache is never stale.
    _img(tmp_path / "imgs" / "cat" / "0.png", "RGB", (0, 255, 0), size=(60, 40))
    changed = data.decode_images(folder, 24, interpolation="bilinear", cache_dir=tmp_path / "cache", tag="pets")
    assert len(list((tmp_path / "cache").glob("pets-24px-*.safetensors"))) == 2
    assert int(changed.images[0, 1].float().mean()) > 200
    with pytest.raises(DataError, match="at least 8"):
        data.decode_images(folder, 4)


def test_tensor_image_dataset_transforms_subsets_and_errors(tmp_path: Path) -> None:
    decoded = data.decode_images(_folder(tmp_path), 32, interpolation="bilinear")
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


# ----------------------------------------------------------------------------------------------
# No silent wrong answers: high bit depths, EXIF orientation, a data set's root, huge images,
# unreadable files, one resize for training and serving.
# ----------------------------------------------------------------------------------------------

_W = 256


def _gradient_image(mode: str) -> tuple[Image.Image, np.ndarray]:
    """A horizontal gradient in ``mode`` and the 8-bit values it must become."""
    ramp = np.linspace(0.0, 1.0, _W)
    expected = np.rint(ramp * 255).astype(np.uint8)
    if mode.startswith("I;16"):
        values = np.rint(ramp * 65535).astype(np.uint16)
        dtype = {"I;16": "<u2", "I;16L": "<u2", "I;16B": ">u2", "I;16N": "=u2"}[mode]
        img = Image.frombytes(mode, (_W, 8), np.tile(values, (8, 1)).astype(dtype).tobytes())
    elif mode == "I-16bit":   # 16-bit data in a 32-bit image, as Pillow opens 16-bit PGM files
        img = Image.fromarray(np.tile(np.rint(ramp * 65535).astype(np.int32), (8, 1)))
    elif mode == "I":
        img = Image.fromarray(np.tile(np.rint(ramp * (2**31 - 1)).astype(np.int32), (8, 1)))
    elif mode == "F":
        img = Image.fromarray(np.tile(ramp.astype(np.float32), (8, 1)))
    elif mode == "F-range":    # float values outside [0, 1]: the image's own range is used
        img = Image.fromarray(np.tile((ramp * 703.0 - 3.0).astype(np.float32), (8, 1)))
    else:
        raise AssertionError(mode)
    return img, expected


def _assert_gradient(img: Image.Image, expected: np.ndarray) -> None:
    arr = np.asarray(img)
    assert img.mode == "RGB" and arr.shape == (8, _W, 3)
    row = arr[4, :, 0].astype(int)
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()
    assert row.max() - row.min() >= 250, "a gradient must not collapse to a constant"
    assert (np.diff(row) >= 0).all(), "ordering of intensities is kept"
    assert np.abs(row - expected.astype(int)).max() <= 1, "intensities scale linearly with the mode's range"


@pytest.mark.parametrize("mode,fmt", [("I;16", "PNG"), ("I;16B", "TIFF"), ("I;16", "TIFF"), ("I-16bit", "PPM"),
                                      ("I", "TIFF"), ("F", "TIFF"), ("F-range", "TIFF")])
def test_high_bit_depth_files_keep_their_gradient(tmp_path: Path, mode: str, fmt: str) -> None:
    img, expected = _gradient_image(mode)
    path = tmp_path / f"gradient.{fmt.lower()}"
    img.save(path, format=fmt)
    with Image.open(path) as stored:   # the file really holds a high-bit-depth mode
        assert stored.mode in ("I;16", "I;16B", "I", "F")
    _assert_gradient(data.load_image(path), expected)


@pytest.mark.parametrize("mode", ["I;16", "I;16L", "I;16B", "I;16N", "I-16bit", "I", "F", "F-range"])
def test_every_high_bit_depth_mode_converts_without_clipping(mode: str) -> None:
    img, expected = _gradient_image(mode)
    _assert_gradient(data.to_rgb(img), expected)


def test_float_images_with_nan_or_a_constant_value_stay_defined() -> None:
    arr = np.tile(np.linspace(0, 1, _W, dtype=np.float32), (8, 1))
    arr[0, 0] = np.nan
    out = np.asarray(data.to_rgb(Image.fromarray(arr)))
    assert out[0, 0, 0] == 0 and out[4, -1, 0] == 255
    assert np.asarray(data.to_rgb(Image.fromarray(np.full((4, 4), 0.5, np.float32)))).max() == 128


def _quadrants() -> np.ndarray:
    """A 48 x 32 image whose four quadrants have distinct colours (robust to JPEG)."""
    arr = np.zeros((32, 48, 3), np.uint8)
    arr[:16, :24] = (230, 20, 20)
    arr[:16, 24:] = (20, 230, 20)
    arr[16:, :24] = (20, 20, 230)
    arr[16:, 24:] = (230, 230, 20)
    return arr


# How a camera stores the upright image for each EXIF orientation (the tag says how to undo it).
_STORED = {1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
           5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, 1),
           7: lambda a: np.rot90(a, 2).transpose(1, 0, 2), 8: lambda a: np.rot90(a, -1)}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(tmp_path: Path, orientation: int) -> None:
    upright = _quadrants()
    stored = np.ascontiguousarray(_STORED[orientation](upright))
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"photo{orientation}.jpg"
    Image.fromarray(stored).save(path, quality=98, exif=exif.tobytes())
    got = np.asarray(data.load_image(path)).astype(int)
    assert got.shape == upright.shape
    for r in (4, 27):
        for c in (5, 42):
            assert np.abs(got[r, c] - upright[r, c]).max() < 20, (orientation, r, c, got[r, c], upright[r, c])


def test_a_data_sets_root_is_refused_with_the_split_to_pass(tmp_path: Path) -> None:
    for split in ("train", "val"):
        for cls in ("ants", "bees"):
            _img(tmp_path / "root" / split / cls / "0.png")
    with pytest.raises(DataError, match=r"(?s)train/ holds ants/, bees/.*root / 'train'"):
        data.ImageFolderDataset(tmp_path / "root")
    with pytest.raises(DataError, match="root / 'train'"):
        data.check_image_folder(tmp_path / "root")
    # A root with a single split is explained the same way (not just "needs 2 classes").
    _img(tmp_path / "only" / "train" / "ants" / "0.png")
    _img(tmp_path / "only" / "train" / "bees" / "0.png")
    with pytest.raises(DataError, match="root / 'train'"):
        data.ImageFolderDataset(tmp_path / "only")
    # One split reads fine; deliberate nesting is allowed when asked for.
    assert data.ImageFolderDataset(tmp_path / "root" / "train").classes == ["ants", "bees"]
    assert data.ImageFolderDataset(tmp_path / "root", allow_nested=True).classes == ["train", "val"]
    # A single sub-folder per class (e.g. cats/images/*.jpg) is an ordinary layout.
    _img(tmp_path / "plain" / "cats" / "images" / "0.png")
    _img(tmp_path / "plain" / "dogs" / "images" / "0.png")
    assert data.ImageFolderDataset(tmp_path / "plain").targets == [0, 1]


@pytest.mark.parametrize("pixels", [40 * 30, 100 * 100])   # over the limit (warning) / over twice it (error)
def test_decompression_bombs_name_the_file_and_the_remedy(tmp_path: Path, monkeypatch, pixels: int) -> None:
    side = int(pixels ** 0.5)
    path = _img(tmp_path / "big.png", size=(side, pixels // side))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(DataError, match=r"big\.png.*MAX_IMAGE_PIXELS"):
        data.load_image(path)
    with pytest.warns(SkippedImagesWarning, match="big.png"):
        assert data.ImageFolderDataset(_two_class_folder(tmp_path / "f", extra=path), on_error="skip").skipped


def _two_class_folder(root: Path, extra: Path | None = None) -> Path:
    for cls in ("a", "b"):
        for i in range(2):
            _img(root / cls / f"{i}.png", "RGB", (60 * i, 100, 200 if cls == "b" else 0), size=(20, 15))
    if extra is not None:
        (root / "a" / extra.name).write_bytes(extra.read_bytes())
    return root


def test_check_image_folder_reports_everything_before_training(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    _img(root / "cats" / "a.png", "RGB", (1, 2, 3), size=(40, 30))
    _img(root / "cats" / "b.png", "L", 7, size=(80, 20))
    (root / "cats" / "b_copy.png").write_bytes((root / "cats" / "b.png").read_bytes())
    _img(root / "dogs" / "c.png", "RGBA", (9, 9, 9, 255), size=(50, 60))
    (root / "dogs" / "a_again.png").write_bytes((root / "cats" / "a.png").read_bytes())   # one image, two labels
    (root / "dogs" / "broken.jpg").write_bytes(b"not a jpeg")
    (root / "dogs" / "notes.txt").write_text("hello")
    report = data.check_image_folder(root)
    assert report.class_counts == {"cats": 3, "dogs": 3}
    assert report.min_size == (40, 20) and report.max_size == (80, 60)
    assert report.modes == {"RGB": 2, "L": 2, "RGBA": 1}
    assert [Path(s.path).name for s in report.unreadable] == ["broken.jpg"]
    assert sorted(sorted(p.name for p in g) for g in report.duplicates) == [["a.png", "a_again.png"],
                                                                            ["b.png", "b_copy.png"]]
    assert [[p.name for p in g] for g in report.label_conflicts] == [["a.png", "a_again.png"]]
    assert [p.name for p in report.ignored] == ["notes.txt"]
    assert not report.ok
    text = str(report)
    for needle in ("cats", "width 40..80 px", "height 20..60 px", "UNREADABLE (1)", "broken.jpg",
                   "LABEL CONFLICTS (1)", "cats/a.png == dogs/a_again.png", "cats/b.png == cats/b_copy.png", "NOT OK"):
        assert needle in text, needle
    clean = data.check_image_folder(_two_class_folder(tmp_path / "clean"))
    assert clean.ok and str(clean).endswith("ok")


def test_skipping_unreadable_images_keeps_labels_aligned(tmp_path: Path) -> None:
    root = _two_class_folder(tmp_path / "imgs")
    (root / "a" / "1.png").write_bytes(b"garbage")
    (root / "b" / "0.png").write_bytes(b"garbage")
    strict = data.ImageFolderDataset(root)
    assert len(strict) == 4
    with pytest.raises(DataError, match="1.png"):
        [strict[i] for i in range(len(strict))]
    with pytest.warns(SkippedImagesWarning, match=r"(?s)2 unreadable.*a/1\.png.*b/0\.png"):
        ds = data.ImageFolderDataset(root, on_error="skip")
    assert [p.name for p, _ in ds.samples] == ["0.png", "1.png"] and ds.targets == [0, 1]
    assert [Path(s.path).relative_to(root).as_posix() for s in ds.skipped] == ["a/1.png", "b/0.png"]
    assert np.asarray(ds[0][0])[0, 0, 2] == 0 and np.asarray(ds[1][0])[0, 0, 2] == 200, "pixels match labels"
    assert ds.subset([1]).skipped == ds.skipped
    with pytest.raises(ConfigError, match="on_error"):
        data.ImageFolderDataset(root, on_error="ignore")
    with pytest.raises(DataError, match="every image of class"):
        (root / "b" / "1.png").write_bytes(b"garbage")
        with pytest.warns(SkippedImagesWarning):
            data.ImageFolderDataset(root, on_error="skip")


def test_decode_images_skips_and_reports_unreadable_files(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    (tmp_path / "imgs" / "cat" / "1.png").write_bytes(b"garbage")
    prep = data.Preprocessing(20, 24, "bilinear", (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(DataError, match="1.png"):
        data.decode_images(folder, preprocessing=prep)
    for from_cache in (False, True):
        with pytest.warns(SkippedImagesWarning, match="1.png"):
            decoded = data.decode_images(folder, preprocessing=prep, cache_dir=tmp_path / "c", on_error="skip")
        assert decoded.targets == [0, 0, 1, 1, 1] and len(decoded) == 5
        assert [Path(s.path).name for s in decoded.skipped] == ["1.png"] and decoded.skipped[0].index == 1
        assert int(decoded.images[1, 0].float().mean()) > 200 and int(decoded.images[2, 2].float().mean()) > 200
    # The strict default never reuses the pixels of a skipping run.
    with pytest.raises(DataError, match="1.png"):
        data.decode_images(folder, preprocessing=prep, cache_dir=tmp_path / "c")


def _odd_folder(root: Path) -> data.ImageFolderDataset:
    rng = np.random.default_rng(0)
    for cls, sizes in (("a", [(61, 45), (45, 61), (50, 50)]), ("b", [(77, 40), (40, 33)])):
        for i, (w, h) in enumerate(sizes):
            (root / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    return data.ImageFolderDataset(root)


@pytest.mark.parametrize("prep", [data.Preprocessing(21, 26, "bicubic", (0.4, 0.5, 0.6), (0.2, 0.3, 0.25)),
                                  data.Preprocessing(24, 28, "bilinear", (0.5,) * 3, (0.5,) * 3),
                                  data.Preprocessing(19, 26, "lanczos", (0.5,) * 3, (0.5,) * 3)])
def test_decoded_images_equal_what_the_eval_transform_gives(tmp_path: Path, prep: data.Preprocessing) -> None:
    """Training (decode_images + tensor_transform) and serving (eval_transform, which predict
    uses) see the same tensor for the same file: one interpolation, one crop."""
    folder = _odd_folder(tmp_path / "imgs")
    decoded = data.decode_images(folder, preprocessing=prep)
    assert tuple(decoded.images.shape[1:]) == (3, prep.resize_size, prep.resize_size)
    val = decoded.with_transform(prep.tensor_transform(train=False))
    direct = prep.eval_transform()
    for i, (path, label) in enumerate(folder.samples):
        x, y = val[i]
        assert y == label
        assert torch.allclose(x, direct(data.load_image(path)), atol=1e-6), path


def test_decode_cache_is_keyed_by_the_interpolation(tmp_path: Path) -> None:
    folder = _odd_folder(tmp_path / "imgs")
    cache = tmp_path / "cache"
    bicubic = data.Preprocessing(20, 24, "bicubic", (0.5,) * 3, (0.5,) * 3)
    bilinear = data.Preprocessing(20, 24, "bilinear", (0.5,) * 3, (0.5,) * 3)
    a = data.decode_images(folder, preprocessing=bicubic, cache_dir=cache, tag="pets")
    b = data.decode_images(folder, preprocessing=bilinear, cache_dir=cache, tag="pets")
    names = sorted(p.name for p in cache.glob("*.safetensors"))
    assert len(names) == 2 and names[0].startswith("pets-24px-bicubic-") and names[1].startswith("pets-24px-bilinear-")
    assert not torch.equal(a.images, b.images)
    again = data.decode_images(folder, 24, interpolation="bicubic", cache_dir=cache, tag="pets")
    assert len(list(cache.glob("*.safetensors"))) == 3, "aligned crop and plain crop are different decodings"
    assert again.images.shape == a.images.shape


def test_arguments_are_checked_where_they_enter(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    prep = data.Preprocessing(20, 24, "bicubic", (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(ConfigError, match="contradicts"):
        data.decode_images(folder, preprocessing=prep, interpolation="bilinear")
    with pytest.raises(DataError, match="no images"):
        data.decode_images(folder.subset([]), preprocessing=prep)
    with pytest.raises(ConfigError, match="size= or preprocessing="):
        data.decode_images(folder)
    with pytest.raises(ConfigError, match="unknown interpolation"):
        data.decode_images(folder, 24, interpolation="cubic")
    with pytest.raises(ConfigError, match="tag"):
        data.decode_images(folder, preprocessing=prep, tag="")
    with pytest.raises(DataError, match="ImageFolderDataset"):
        data.decode_images(data.decode_images(folder, preprocessing=prep), preprocessing=prep)  # type: ignore[arg-type]
    with pytest.warns(UserWarning, match="preprocessing=backbone.preprocessing"):
        data.decode_images(folder, 24)
    with pytest.raises(ConfigError, match="unknown interpolation"):
        data.Preprocessing(20, 24, "cubic", (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(ConfigError, match="input_size"):
        data.Preprocessing(0, 24, "bicubic", (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(ConfigError, match="std"):
        data.Preprocessing(20, 24, "bicubic", (0.5,) * 3, (0.5, 0.0, 0.5))
    with pytest.raises(ConfigError, match="min_scale"):
        prep.tensor_transform(train=True, min_scale=0.0)
    with pytest.raises(ConfigError, match="transform must be callable"):
        data.ImageFolderDataset(tmp_path / "imgs", transform="resize")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="file path"):
        data.load_image(42)  # type: ignore[arg-type]
    with pytest.raises(DataError, match="is a folder"):
        data.load_image(tmp_path)
