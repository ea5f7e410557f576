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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate
from tqdm.auto import tqdm

from .cache import Features, SkippedImage, model_fingerprint
from .cache import load_or_compute as _load_or_compute
from .data import (
    ImageFolderDataset,
    TensorImageDataset,
    as_labels,
    check_on_error,
    dataset_fingerprint,
    ensure_text,
    warn_skipped,
)
from .errors import ConfigError, DataError
from .text import mean_pool, pooled_embeddings

__all__ = ["Features", "model_fingerprint", "dataset_fingerprint", "extract_features", "mean_pool", "embed_texts",
           "extract_text_features", "tokenizer_fingerprint"]


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
        # Channels-last layout: convolutions run markedly faster in it on CPUs (EfficientNet-Lite0 at
        # 224 px, one thread: 35 against 59 ms per image) and on tensor cores; the features are the
        # same up to float rounding. recipes.finetune puts the model in it too.
        trunk.eval().to(device, memory_format=torch.channels_last)
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
                xs.append(trunk(images.to(device, memory_format=torch.channels_last)).float().cpu())
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
    if pooling not in ("mean", "cls"):
        raise ConfigError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
    return pooled_embeddings(tokenizer, encoder, texts, max_length=max_length, batch_size=batch_size,
                             device=device)[pooling]


def tokenizer_fingerprint(tokenizer) -> str:  # type: ignore[no-untyped-def]
    """sha256 over everything that decides a tokenizer's ids: its full definition (vocabulary,
    normaliser such as lower-casing, pre-tokeniser) and its special tokens. Two tokenizers of the
    same class and vocabulary size (BERT cased vs uncased) get different fingerprints."""
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # truncation/padding are per-call settings the tokenizer keeps from its last call: left out
        definition = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("truncation", "padding")}
        h.update(json.dumps(definition, sort_keys=True).encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
        h.update(json.dumps(getattr(tokenizer, "init_kwargs", {}), sort_keys=True, default=str).encode())
    specials = {k: getattr(tokenizer, f"{k}_token_id", None) for k in ("cls", "sep", "pad", "unk")}
    h.update(json.dumps(specials, sort_keys=True).encode())
    return h.hexdigest()


def extract_text_features(
    tokenizer,  # type: ignore[no-untyped-def]
    encoder: nn.Module,
    texts: Sequence[str | bytes],
    labels: Sequence[int],
    *,
    cache_dir: str | Path | None = None,
    tag: str = "text",
    pooling: str = "mean",
    max_length: int = 128,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> Features:
    """:func:`embed_texts` with the same on-disk cache as :func:`extract_features`.

    ``texts`` and ``labels`` must have the same length; labels are checked by
    :func:`~transfer_utils.data.as_labels` (class indices, whole floats such as ``1.0`` accepted)
    and texts by :func:`~transfer_utils.data.ensure_text` (``str`` or UTF-8 ``bytes``; empty texts
    are allowed and embed ``[CLS] [SEP]``). The cache key covers every text, every label, the
    encoder's weights, the tokenizer's definition and the settings, so no two different inputs
    share a cache entry.
    """
    if isinstance(texts, (str, bytes)):
        raise DataError("extract_text_features() takes a list of texts; wrap a single text as [text]")
    if pooling not in ("mean", "cls"):
        raise ConfigError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
    texts = [ensure_text(t, where=f"text #{i}") for i, t in enumerate(texts)]
    y = as_labels(labels)
    if len(texts) != len(y):
        raise DataError(f"{len(texts)} texts but {len(y)} labels: pass exactly one label per text")
    settings = json.dumps({"format": 2, "pooling": pooling, "max_length": int(max_length),
                           "tokenizer": tokenizer_fingerprint(tokenizer), "n": len(texts)}, sort_keys=True)
    h = hashlib.sha256((model_fingerprint(encoder) + settings).encode())
    for text in texts:  # fixed-size digests: no two different lists hash the same stream
        h.update(hashlib.sha256(text.encode()).digest())
    h.update(y.numpy().astype("<i8").tobytes())
    key = h.hexdigest()

    def compute() -> tuple[torch.Tensor, torch.Tensor]:
        x = embed_texts(tokenizer, encoder, texts, pooling=pooling, max_length=max_length,
                        batch_size=batch_size, device=device)
        return x, y

    return _load_or_compute(cache_dir, tag, key, compute)
