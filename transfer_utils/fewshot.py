"""Few-shot and zero-shot classification with a pretrained encoder's embeddings, and model fusion.

* **Prototypes** (Snell et al., 2017): a class is the mean of its few labelled embeddings; an
  example goes to the class whose prototype is nearest (cosine similarity here).
* **Zero-shot**: the "prototype" of a class is the embedding of a *description* of it — no
  labelled example at all.
* **Fusion**: averaging or weighting several models' probabilities.

Example::

    protos = class_prototypes(support_emb, support_labels, num_classes=2)
    predicted = nearest_prototype(query_emb, protos).argmax(1)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .data import as_labels
from .errors import ConfigError, DataError


def class_prototypes(embeddings: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The mean of each class's L2-normalised embeddings, ``[num_classes, dim]``."""
    _check_embeddings(embeddings, "embeddings")
    labels = as_labels(labels, num_classes).to(embeddings.device)
    if len(labels) != len(embeddings):
        raise DataError(f"{len(embeddings)} embeddings but {len(labels)} labels")
    missing = sorted(set(range(num_classes)) - set(labels.tolist()))
    if missing:
        raise ConfigError(f"classes {missing} have no example: a prototype needs at least one per class")
    z = F.normalize(embeddings.float(), dim=-1)
    return torch.stack([z[labels == c].mean(0) for c in range(num_classes)])


def nearest_prototype(embeddings: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every embedding to every prototype, ``[n, num_classes]`` (argmax = prediction)."""
    _check_embeddings(embeddings, "embeddings")
    _check_embeddings(prototypes, "prototypes")
    if embeddings.shape[1] != prototypes.shape[1]:
        raise DataError(f"embeddings have {embeddings.shape[1]} dimensions but prototypes {prototypes.shape[1]}: "
                        f"compute both with the same encoder (and the same pooling)")
    return F.normalize(embeddings.float(), dim=-1) @ F.normalize(prototypes.float(), dim=-1).T


def _check_embeddings(x: torch.Tensor, what: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise DataError(f"{what} must be a [n, dim] tensor (one embedding per row), got {shape}")


def sample_support(labels: Sequence[int], shots: int, episodes: int, seed: int = 0) -> list[list[int]]:
    """``episodes`` random support sets of ``shots`` examples per class (indices into ``labels``)."""
    for what, value in (("shots", shots), ("episodes", episodes)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ConfigError(f"{what} must be a whole number >= 1, got {value!r}")
    labels_np = as_labels(labels).numpy()
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(episodes):
        picked: list[int] = []
        for c in np.unique(labels_np):
            pool = np.flatnonzero(labels_np == c)
            if len(pool) < shots:
                raise ConfigError(f"class {c} has {len(pool)} examples, fewer than {shots} shots")
            picked += rng.choice(pool, size=shots, replace=False).tolist()
        out.append(picked)
    return out


def average_probabilities(probabilities: Sequence[np.ndarray], weights: Sequence[float] | None = None) -> np.ndarray:
    """Fuse models by a (weighted) mean of their class probabilities, each ``[n, classes]``."""
    if not probabilities:
        raise ConfigError("nothing to fuse: pass the probabilities of at least one model")
    probabilities = [np.asarray(p, dtype=float) for p in probabilities]
    shapes = {p.shape for p in probabilities}
    if len(shapes) != 1:
        raise ConfigError(f"the models' probabilities have different shapes {sorted(shapes)}: score the same examples")
    w = np.ones(len(probabilities)) if weights is None else np.asarray(weights, dtype=float)
    if len(w) != len(probabilities) or (w < 0).any() or w.sum() == 0:
        raise ConfigError("weights: one non-negative weight per model, not all zero")
    return np.tensordot(w / w.sum(), np.stack(probabilities), axes=1)
