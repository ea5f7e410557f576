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
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .data import ImageFolderDataset, TensorImageDataset, as_labels, ensure_text
from .errors import ConfigError, DataError


@dataclass
class Features:
    """Feature vectors ``x`` (float32, ``[N, D]``), labels ``y`` and how they were obtained."""

    x: torch.Tensor
    y: torch.Tensor
    key: str
    from_cache: bool
    seconds: float  #: time spent computing (or loading) them


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
        h.update(hashlib.sha256(Path(path).read_bytes()).digest())
        h.update(str(label).encode())
    return h.hexdigest()


def _cache_path(cache_dir: Path, tag: str, key: str) -> Path:
    return Path(cache_dir) / f"{tag}-{key[:16]}.safetensors"


def _read_cache(path: Path, key: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The ``(x, y)`` stored at ``path`` for ``key``; ``None`` (with a warning) if the file cannot be used."""
    from safetensors import SafetensorError, safe_open

    try:
        stored = load_file(path)
        with safe_open(path, framework="pt") as f:
            stored_key = (f.metadata() or {}).get("key")
        x, y = stored["x"], stored["y"]
        if stored_key != key or x.shape[:1] != y.shape:
            raise ValueError("it holds other features" if stored_key != key else "x and y differ in length")
    except (SafetensorError, OSError, KeyError, ValueError) as err:
        warnings.warn(f"the cache file {path} is damaged ({err}); recomputing it and overwriting the file",
                      stacklevel=4)
        return None
    return x, y


def _load_or_compute(cache_dir: str | Path | None, tag: str, key: str, compute) -> Features:  # type: ignore[no-untyped-def]
    """Read ``(x, y)`` for ``key`` from the cache, or ``compute()`` and store them (atomically).
    A cache file that cannot be read is a cache miss: it is recomputed and overwritten, with a warning."""
    start = time.perf_counter()
    if cache_dir is not None:
        path = _cache_path(Path(cache_dir), tag, key)
        stored = _read_cache(path, key) if path.is_file() else None
        if stored is not None:
            return Features(*stored, key, True, time.perf_counter() - start)
    x, y = compute()
    if cache_dir is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(path.name + ".part")
        try:
            save_file({"x": x.contiguous(), "y": y.contiguous()}, part, metadata={"key": key, "tag": tag})
            part.replace(path)
        finally:
            part.unlink(missing_ok=True)
    return Features(x, y, key, False, time.perf_counter() - start)


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
) -> Features:
    """Run a frozen ``trunk`` (see :func:`~transfer_utils.models.feature_extractor`) over ``dataset``.

    The trunk is put in ``eval()`` mode (BatchNorm uses its running statistics, dropout is off)
    and run under ``torch.no_grad()``. With ``cache_dir`` the result is stored as safetensors
    and reused while the key matches.
    """
    key = hashlib.sha256((model_fingerprint(trunk) + dataset_fingerprint(dataset)).encode()).hexdigest()

    def compute() -> tuple[torch.Tensor, torch.Tensor]:
        trunk.eval().to(device)
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
        xs, ys = [], []
        # The bar wraps the loop, not the loader: the loader's iterator (and its worker
        # processes) is then released as soon as the loop ends, not at a later garbage collection
        # that would stall whatever code happens to run then.
        with tqdm(total=len(loader), desc=f"features {tag}", leave=False, disable=not progress) as bar:
            for images, labels in loader:
                xs.append(trunk(images.to(device)).float().cpu())
                ys.append(labels)
                bar.update()
        return torch.cat(xs), torch.cat(ys)

    return _load_or_compute(cache_dir, tag, key, compute)


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
