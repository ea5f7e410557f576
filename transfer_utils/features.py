"""Embeddings of a frozen backbone, computed once and cached on disk.

A frozen backbone maps the same image to the same vector every epoch, so feature extraction
can run it *once* and train the head on the stored vectors. The cache key hashes everything
that determines the vectors — the model's weights, the preprocessing, and every input file's
bytes and label — so changing any of them computes fresh features instead of reusing stale ones.

Example::

    feats = extract_features(trunk, train_ds, cache_dir=CACHE, tag="resnet18")
    feats.x.shape   # torch.Size([244, 512])
"""

from __future__ import annotations

import hashlib
import json
import numbers
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate
from tqdm.auto import tqdm

from .data import ImageFolderDataset, SkippedImage, TensorImageDataset, check_on_error, ensure_text, warn_skipped
from .errors import ConfigError, DataError


@dataclass
class Features:
    """Feature vectors ``x`` (float32, ``[N, D]``), labels ``y`` and how they were obtained.

    ``skipped`` lists the images left out under ``on_error="skip"`` (``x`` and ``y`` hold the
    others, in order, so they stay aligned)."""

    x: torch.Tensor
    y: torch.Tensor
    key: str
    from_cache: bool
    seconds: float  #: time spent computing (or loading) them
    skipped: list[SkippedImage] = field(default_factory=list)


def model_fingerprint(model: nn.Module) -> str:
    """sha256 over the names, shapes and values of a model's parameters and buffers."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


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


def _cache_path(cache_dir: Path, tag: str, key: str) -> Path:
    return Path(cache_dir) / f"{tag}-{key[:16]}.safetensors"


def _load_or_compute(cache_dir: str | Path | None, tag: str, key: str, compute) -> Features:  # type: ignore[no-untyped-def]
    """Load ``tag``/``key`` from ``cache_dir`` or store what ``compute()`` returns: ``(x, y)`` or
    ``(x, y, skipped)`` (the skipped images travel in the file's metadata)."""
    start = time.perf_counter()
    if cache_dir is not None and Path(cache_dir).exists() and not Path(cache_dir).is_dir():
        raise ConfigError(f"cache_dir {cache_dir} is a file; pass a folder (it is created if missing) or None")
    if cache_dir is not None:
        path = _cache_path(Path(cache_dir), tag, key)
        if path.is_file():
            stored = load_file(path)
            with safe_open(path, "pt") as f:
                meta = f.metadata() or {}
            skipped = [SkippedImage(**s) for s in json.loads(meta.get("skipped", "[]"))]
            return Features(stored["x"], stored["y"], key, True, time.perf_counter() - start, skipped)
    x, y, *rest = compute()
    skipped = list(rest[0]) if rest else []
    if cache_dir is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(path.name + ".part")
        save_file({"x": x.contiguous(), "y": y.contiguous()}, part,
                  metadata={"key": key, "tag": tag, "skipped": json.dumps([asdict(s) for s in skipped])})
        part.replace(path)
    return Features(x, y, key, False, time.perf_counter() - start, skipped)


@dataclass(frozen=True)
class _Unreadable:
    index: int
    reason: str


class _SkipUnreadable(Dataset):  # type: ignore[type-arg]
    """Wraps a dataset: an image that raises :class:`DataError` becomes an ``_Unreadable`` marker."""

    def __init__(self, dataset: Dataset) -> None:  # type: ignore[type-arg]
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        try:
            x, y = self.dataset[index]
        except DataError as err:
            return _Unreadable(index, str(err))
        return index, x, y


def _collate_readable(items: list[Any]) -> tuple[Any, list[_Unreadable]]:
    bad = [it for it in items if isinstance(it, _Unreadable)]
    good = [it for it in items if not isinstance(it, _Unreadable)]
    return (default_collate(good) if good else None), bad


@torch.no_grad()
def extract_features(
    trunk: nn.Module,
    dataset: ImageFolderDataset | TensorImageDataset,
    *,
    cache_dir: str | Path | None = None,
    tag: str = "features",
    batch_size: int = 32,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
    on_error: str = "raise",
) -> Features:
    """Run a frozen ``trunk`` (see :func:`~transfer_utils.models.feature_extractor`) over ``dataset``.

    The trunk is put in ``eval()`` mode (BatchNorm uses its running statistics, dropout is off)
    and run under ``torch.no_grad()``. With ``cache_dir`` the result is stored as safetensors
    and reused while the key matches.

    An unreadable image stops the run with a :class:`DataError` naming it (``on_error="raise"``,
    the default). With ``on_error="skip"`` it is left out instead: ``x`` and ``y`` hold the
    readable images in order (labels stay aligned), ``.skipped`` lists the others, and a
    :class:`~transfer_utils.errors.SkippedImagesWarning` names them.
    """
    if not isinstance(trunk, nn.Module):
        raise ConfigError(f"trunk must be a torch.nn.Module (e.g. models.feature_extractor(backbone.model)), "
                          f"got {type(trunk).__name__}")
    if not isinstance(dataset, (ImageFolderDataset, TensorImageDataset)):
        raise DataError(f"dataset must be an ImageFolderDataset or a TensorImageDataset, got {type(dataset).__name__}")
    if len(dataset) == 0:
        raise DataError("the dataset holds no images (an empty subset?); there is nothing to extract")
    if dataset.transform is None:
        raise DataError("the dataset has no transform, so it yields images, not tensors: pass "
                        "dataset.with_transform(preprocessing.eval_transform()) (or tensor_transform(train=False) "
                        "for decoded images)")
    for name, value, low in (("batch_size", batch_size, 1), ("num_workers", num_workers, 0)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
            raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
    check_on_error(on_error)
    settings = "on_error=skip" if on_error == "skip" else ""  # the default keeps the keys it always had
    key = hashlib.sha256((model_fingerprint(trunk) + dataset_fingerprint(dataset) + settings).encode()).hexdigest()

    def compute() -> tuple[torch.Tensor, torch.Tensor, list[SkippedImage]]:
        trunk.eval().to(device)
        source = _SkipUnreadable(dataset) if on_error == "skip" else dataset
        loader = DataLoader(source, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                            **({"collate_fn": _collate_readable} if on_error == "skip" else {}))
        xs, ys = [], []
        skipped: list[SkippedImage] = []
        # The bar wraps the loop, not the loader: the loader's iterator (and its worker
        # processes) is then released as soon as the loop ends, not at a later garbage collection
        # that would stall whatever code happens to run then.
        with tqdm(total=len(loader), desc=f"features {tag}", leave=False, disable=not progress) as bar:
            for batch in loader:
                if on_error == "skip":
                    batch, bad = batch
                    skipped += [SkippedImage(b.index, str(_sample_path(dataset, b.index)), b.reason) for b in bad]
                    if batch is None:
                        bar.update()
                        continue
                    _, images, labels = batch
                else:
                    images, labels = batch
                xs.append(trunk(images.to(device)).float().cpu())
                ys.append(labels)
                bar.update()
        if not xs:
            raise DataError(f"none of the {len(dataset)} images could be read (first: {skipped[0]})")
        return torch.cat(xs), torch.cat(ys), skipped

    result = _load_or_compute(cache_dir, tag, key, compute)
    warn_skipped(result.skipped, f"extract_features({tag!r})")
    return result


def _sample_path(dataset: ImageFolderDataset | TensorImageDataset, index: int) -> str:
    samples = getattr(dataset, "samples", None)
    return str(samples[index][0]) if samples is not None else f"<image #{index}>"


def mean_pool(last_hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average token vectors, ignoring padding (the pooling all-MiniLM-L6-v2 was trained with)."""
    mask = attention_mask.unsqueeze(-1).to(last_hidden.dtype)
    return (last_hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def embed_texts(
    tokenizer,  # type: ignore[no-untyped-def]
    encoder: nn.Module,
    texts: Sequence[str | bytes],
    *,
    pooling: str = "mean",
    max_length: int = 128,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Embed texts with a frozen encoder: ``"mean"`` pooling or the ``"cls"`` token's vector.

    Texts are sorted by length before batching (less padding, same result) and returned in the
    input order. Bytes must be UTF-8; empty strings are allowed (they embed ``[CLS] [SEP]``).
    Chapter 6 builds it: :func:`transfer_utils.text.pooled_embeddings` computes both poolings.
    """
    from .text import pooled_embeddings

    if pooling not in ("mean", "cls"):
        raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
    return pooled_embeddings(tokenizer, encoder, texts, max_length=max_length, batch_size=batch_size,
                             device=device)[pooling]


def extract_text_features(
    tokenizer,  # type: ignore[no-untyped-def]
    encoder: nn.Module,
    texts: Sequence[str],
    labels: Sequence[int],
    *,
    cache_dir: str | Path | None = None,
    tag: str = "text",
    pooling: str = "mean",
    max_length: int = 128,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> Features:
    """:func:`embed_texts` with the same on-disk cache as :func:`extract_features`."""
    settings = json.dumps({"pooling": pooling, "max_length": max_length,
                           "tokenizer": type(tokenizer).__name__, "vocab": len(tokenizer)})
    h = hashlib.sha256((model_fingerprint(encoder) + settings).encode())
    for text, label in zip(texts, labels):
        h.update(hashlib.sha256(ensure_text(text).encode()).digest())
        h.update(str(label).encode())
    key = h.hexdigest()

    def compute() -> tuple[torch.Tensor, torch.Tensor]:
        x = embed_texts(tokenizer, encoder, texts, pooling=pooling, max_length=max_length,
                        batch_size=batch_size, device=device)
        return x, torch.tensor(list(labels), dtype=torch.long)

    return _load_or_compute(cache_dir, tag, key, compute)
