"""The on-disk cache of computed tensors (features, decoded pixels): one engine, safetensors files.

A result is stored under a key that hashes everything that determines it; a file that cannot be
read, or that holds another key's result, is a cache miss: the result is computed again and the
file overwritten, with a warning. Writes are atomic
(:func:`~transfer_utils.fileio.atomic_path`). This module sits at
the bottom of the package: :mod:`transfer_utils.data` (decoded pixels) and
:mod:`transfer_utils.features` (embeddings) both use it.

Example::

    feats = load_or_compute(cache_dir, "my-tag", key, lambda: (x, y))
    feats.from_cache   # True on the second call with the same key
"""

from __future__ import annotations

import hashlib
import inspect
import json
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import ConfigError
from .fileio import atomic_path

__all__ = ["SkippedImage", "Features", "model_fingerprint", "load_or_compute"]


@dataclass(frozen=True)
class SkippedImage:
    """An image left out under ``on_error="skip"``: its position in the input, its path and why."""

    index: int
    path: str
    reason: str

    def __str__(self) -> str:
        return self.reason if self.path in self.reason else f"{self.path}: {self.reason}"


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
    """sha256 over what a model computes: the names, shapes and values of its parameters and
    buffers, its structure (``repr``: layer types and settings), its class and ``forward`` source
    where Python can read it, and which submodules carry forward hooks.

    Weights alone are not enough: a wrapper that reads other layers' outputs through hooks (chapter
    3's per-stage pooling) has the same weights whichever layers it hooks, and a cache keyed on the
    weights alone returned features of another layout.
    """
    h = hashlib.sha256()
    h.update(f"{type(model).__module__}.{type(model).__qualname__}\n{model!r}".encode())
    try:
        h.update(inspect.getsource(type(model).forward).encode())
    except (OSError, TypeError):  # defined where the source cannot be read: the repr and hooks still count
        pass
    hooked = [name for name, m in model.named_modules() if m._forward_hooks or m._forward_pre_hooks]
    h.update(json.dumps(hooked).encode())
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _cache_path(cache_dir: Path, tag: str, key: str) -> Path:
    return Path(cache_dir) / f"{tag}-{key[:16]}.safetensors"


def _read_cache(path: Path, key: str) -> tuple[torch.Tensor, torch.Tensor, list[SkippedImage]] | None:
    """The ``(x, y, skipped)`` stored at ``path`` for ``key``; ``None`` (with a warning) if the file
    cannot be used."""
    from safetensors import SafetensorError, safe_open

    try:
        stored = load_file(path)
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
        stored_key = meta.get("key")
        x, y = stored["x"], stored["y"]
        if stored_key != key or x.shape[:1] != y.shape:
            raise ValueError("it holds other features" if stored_key != key else "x and y differ in length")
        skipped = [SkippedImage(**s) for s in json.loads(meta.get("skipped", "[]"))]
    except (SafetensorError, OSError, KeyError, ValueError, TypeError) as err:
        warnings.warn(f"the cache file {path} is damaged ({err}); recomputing it and overwriting the file",
                      stacklevel=4)
        return None
    return x, y, skipped


def load_or_compute(cache_dir: str | Path | None, tag: str, key: str, compute: Callable[[], Any]) -> Features:
    """Read ``(x, y)`` for ``key`` from the cache, or store what ``compute()`` returns, ``(x, y)`` or
    ``(x, y, skipped)`` (the skipped images travel in the file's metadata), atomically. A cache file
    that cannot be read is a cache miss: it is recomputed and overwritten, with a warning."""
    start = time.perf_counter()
    if cache_dir is not None and Path(cache_dir).exists() and not Path(cache_dir).is_dir():
        raise ConfigError(f"cache_dir {cache_dir} is a file; pass a folder (it is created if missing) or None")
    if cache_dir is not None:
        path = _cache_path(Path(cache_dir), tag, key)
        stored = _read_cache(path, key) if path.is_file() else None
        if stored is not None:
            return Features(*stored[:2], key, True, time.perf_counter() - start, stored[2])
    x, y, *rest = compute()
    skipped = list(rest[0]) if rest else []
    if cache_dir is not None:
        with atomic_path(path) as part:
            save_file({"x": x.contiguous(), "y": y.contiguous()}, part,
                      metadata={"key": key, "tag": tag, "skipped": json.dumps([asdict(s) for s in skipped])})
    return Features(x, y, key, False, time.perf_counter() - start, skipped)
