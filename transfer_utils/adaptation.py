"""Domain adaptation: learn on a labelled source domain, predict on an unlabelled target domain.

Two methods, both taught in chapter 7:

* **DANN** (Ganin et al., 2016): a feature extractor is trained so that a domain discriminator
  cannot tell source from target features, through a *gradient reversal layer* — the identity
  on the way forward, ``-lambda`` times the gradient on the way back.
* **AdaBN** (Li et al., 2018): keep every weight, but re-estimate each BatchNorm layer's
  running mean and variance on target images.

Example::

    xs, ys = rotated_moons(300, degrees=0, seed=0)       # source: labelled
    xt, _ = rotated_moons(300, degrees=40, seed=1)       # target: its labels are never used
    model = DANN(in_features=2, num_classes=2, hidden=32, dropout=0.0)
    train_dann(model, xs, ys, xt, epochs=100, lr=1e-2, batch_size=32)
    adapted = adapt_batchnorm(trunk, target_loader)       # AdaBN on a CNN trunk
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from sklearn.datasets import make_moons
from torch import nn

from .data import as_labels
from .errors import ConfigError, DataError


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, lambd: float) -> torch.Tensor:  # type: ignore[override]
        ctx.lambd = lambd
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return -ctx.lambd * grad, None


def grad_reverse(x: torch.Tensor, lambd: float = 1.0) -> torch.Tensor:
    """Identity forward; multiplies the gradient by ``-lambd`` backward (the gradient reversal layer)."""
    return _GradReverse.apply(x, lambd)


def ganin_lambda(progress: float, gamma: float = 10.0) -> float:
    """Ganin et al.'s schedule for the reversal weight: 0 at the start, towards 1 at the end.

    ``progress`` is the fraction of training done, in [0, 1]: ``2 / (1 + exp(-gamma p)) - 1``.
    """
    if isinstance(progress, bool) or not isinstance(progress, (int, float)) or not 0.0 <= progress <= 1.0:
        raise ConfigError(f"progress is the fraction of training done and must be in [0, 1] "
                          f"(step / total_steps), got {progress!r}")
    return 2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0


class DANN(nn.Module):
    """A feature layer, a label classifier on it, and a domain discriminator behind a reversal layer.

    The input is any vector: raw coordinates (the rotated moons), or a frozen backbone's features,
    where only the one feature layer can adapt. It trains in seconds on a CPU; ``forward`` returns
    class scores, :meth:`domain_logits` the discriminator's score (source = 0, target = 1).
    """

    def __init__(self, in_features: int, num_classes: int, hidden: int = 256, dropout: float = 0.2) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.classifier = nn.Linear(hidden, num_classes)
        self.discriminator = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def domain_logits(self, x: torch.Tensor, lambd: float) -> torch.Tensor:
        return self.discriminator(grad_reverse(self.features(x), lambd)).squeeze(-1)


def rotated_moons(n: int, degrees: float = 0.0, seed: int = 0, noise: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` points of scikit-learn's two interleaved moons, rotated by ``degrees`` about their centre.

    The two-moons toy shift of Ganin et al.: the source unrotated, the target rotated.
    Returns ``float32`` points ``[n, 2]`` and ``int64`` labels ``[n]``.
    """
    if n < 2:
        raise ConfigError(f"rotated_moons needs at least 2 points (one per moon), got n={n}")
    x, y = make_moons(n, noise=noise, random_state=seed)
    centre = torch.tensor([0.5, 0.25])
    a = math.radians(degrees)
    rotation = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    points = (torch.tensor(x, dtype=torch.float32) - centre) @ rotation.T + centre
    return points, torch.tensor(y, dtype=torch.long)


def train_dann(model: DANN, source_x: torch.Tensor, source_y: torch.Tensor, target_x: torch.Tensor, *,
               epochs: int = 30, batch_size: int = 64, lr: float = 1e-3, weight_decay: float = 1e-4,
               adversarial: bool = True, domain_weight: float = 1.0, seed: int = 0) -> list[dict[str, float]]:
    """Train ``model`` on labelled source features and unlabelled target features.

    Every step takes a source batch (cross-entropy on its labels) and, with ``adversarial``, a
    target batch of the same size: the discriminator learns to tell the domains apart while the
    reversed gradient pushes the feature layer to make them indistinguishable. The reversal
    weight follows :func:`ganin_lambda`. ``adversarial=False`` trains the same network on the
    source alone: the fair "source-only" baseline. Returns one record per epoch.
    """
    if not isinstance(model, DANN):
        raise ConfigError(f"train_dann trains an adaptation.DANN (e.g. DANN(feats.x.shape[1], num_classes)), "
                          f"got {type(model).__name__}")
    for what, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{what} must be a whole number >= 1, got {value!r}")
    width = model.features[0].in_features
    for what, x in (("source_x", source_x), ("target_x", target_x)):
        if not isinstance(x, torch.Tensor) or x.ndim != 2 or (x.shape[1] != width and (what == "source_x" or adversarial)):
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise DataError(f"{what} must be a [N, {width}] float tensor of features (the model was built with "
                            f"in_features={width}), got {shape}: extract both domains with the same backbone")
    source_y = as_labels(source_y, model.classifier.out_features, where="source_y").to(source_x.device)
    if len(source_x) != len(source_y):
        raise ConfigError(f"{len(source_x)} source features but {len(source_y)} labels: pass one label per row")
    if adversarial and len(target_x) == 0:
        raise ConfigError("DANN needs unlabelled target examples: pass some, or adversarial=False")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = max(1, math.ceil(len(source_x) / batch_size))
    total = epochs * steps_per_epoch
    history = []
    step = 0
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(source_x), generator=gen)
        sums = {"class_loss": 0.0, "domain_loss": 0.0, "domain_accuracy": 0.0}
        for i in range(steps_per_epoch):
            idx = order[i * batch_size:(i + 1) * batch_size]
            loss = class_loss = F.cross_entropy(model(source_x[idx]), source_y[idx])
            if adversarial:
                lambd = ganin_lambda(step / max(1, total - 1))
                tidx = torch.randint(len(target_x), (len(idx),), generator=gen)
                logits = torch.cat([model.domain_logits(source_x[idx], lambd), model.domain_logits(target_x[tidx], lambd)])
                domain = torch.cat([torch.zeros(len(idx)), torch.ones(len(idx))])
                domain_loss = F.binary_cross_entropy_with_logits(logits, domain)
                loss = class_loss + domain_weight * domain_loss
                sums["domain_loss"] += domain_loss.item()
                sums["domain_accuracy"] += ((logits > 0).float() == domain).float().mean().item()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sums["class_loss"] += class_loss.item()
            step += 1
        history.append({k: v / steps_per_epoch for k, v in sums.items()})
    model.eval()
    return history


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer of ``model`` (timm's fused BatchNormAct2d included)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def adapt_batchnorm(model: nn.Module, batches: Iterable[Any], device: torch.device | str = "cpu") -> int:
    """AdaBN: replace every BatchNorm layer's running statistics by those of the target ``batches``.

    Weights do not change. The statistics are a plain (cumulative) average over all batches, so
    the order of the batches does not matter; dropout stays off. ``batches`` yields images or
    ``(images, labels)`` pairs (labels are ignored: no target label is needed). Returns the
    number of BatchNorm layers adapted; the model is left in ``eval()`` mode. If it fails (no
    images, a batch the model rejects), every layer gets its previous statistics back.
    """
    layers = batchnorm_layers(model)
    if not layers:
        raise ConfigError("the model has no BatchNorm layer: AdaBN has nothing to adapt")
    model.to(device).eval()
    saved = [(bn.momentum, {k: v.clone() for k, v in bn.state_dict().items()}) for bn in layers]
    for bn in layers:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average
        bn.train()
    seen = 0
    try:
        for k, batch in enumerate(batches):
            images = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
            if not isinstance(images, torch.Tensor):
                raise DataError(f"batch {k} holds a {type(images).__name__}, not an image tensor: pass batches of "
                                f"images [B, C, H, W] (or (images, labels) pairs, e.g. a DataLoader)")
            try:
                model(images.to(device))
            except torch.OutOfMemoryError:
                raise
            except (RuntimeError, TypeError, ValueError) as err:
                raise DataError(f"the model rejects batch {k} (images {tuple(images.shape)}): "
                                f"{str(err).splitlines()[0]}. Pass target images preprocessed as for the "
                                f"model (channels, size); the BatchNorm statistics were left as they were.") from err
            seen += len(images)
        if seen == 0:
            raise ConfigError("no target images were given to AdaBN")
    except BaseException:
        for bn, (_, state) in zip(layers, saved):  # nothing is lost: the statistics the model had
            bn.load_state_dict(state)
        raise
    finally:
        for bn, (momentum, _) in zip(layers, saved):
            bn.momentum = momentum
        model.eval()
    return len(layers)
