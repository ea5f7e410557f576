"""Chapter 4's robust fine-tuning: linear probe then fine-tune (LP-FT), weight-space ensembles, soups.

* :func:`backbone_gradient` and :func:`feature_change` show why a random head distorts the
  pretrained features at the start of fine-tuning, and a probed head does not.
* :func:`interpolate` — WiSE-FT's ``(1 - alpha) * theta_a + alpha * theta_b``, tensor by tensor.
* :func:`uniform_soup` and :func:`greedy_soup` — average fine-tuned runs from one start into one model.
* :func:`recompute_batchnorm` — BatchNorm running statistics measured again for an averaged network.
* :func:`ensemble_logits` — the output ensemble a soup is compared with (k forward passes).

Example::

    mid = load_state(model_ft, interpolate(state_lp, state_ft, 0.5))   # WiSE-FT at alpha = 0.5
    soup = load_state(model_ft, uniform_soup([s1, s2, s3]))
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .batches import forward_logits, to_device
from .errors import ConfigError
from .models import head_of

State = Mapping[str, torch.Tensor]


def _check_compatible(states: Sequence[State]) -> None:
    if not states:
        raise ConfigError("no state dicts to combine: pass at least one model's state_dict()")
    first = states[0]
    for i, other in enumerate(states[1:], start=1):
        if set(other) != set(first):
            missing, extra = sorted(set(first) - set(other)), sorted(set(other) - set(first))
            raise ConfigError(f"state {i} does not have the same tensors as state 0 (missing {missing[:3]}, extra "
                              f"{extra[:3]}): only models of one architecture with one head size can be averaged")
        for name, tensor in first.items():
            if other[name].shape != tensor.shape:
                raise ConfigError(f"{name!r} has shape {tuple(other[name].shape)} in state {i} but "
                                  f"{tuple(tensor.shape)} in state 0: replace the heads with the same number of "
                                  "classes before averaging")


def weighted_average(states: Sequence[State], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """``sum_i weights[i] * states[i]`` for every floating-point tensor (parameters and BatchNorm running
    statistics alike); integer buffers (BatchNorm's ``num_batches_tracked``) are taken from the first state."""
    _check_compatible(states)
    if len(weights) != len(states):
        raise ConfigError(f"{len(states)} states but {len(weights)} weights: give one weight per state")
    out = {}
    for name, tensor in states[0].items():
        if tensor.is_floating_point():
            acc = sum(float(w) * s[name].detach().double() for w, s in zip(weights, states))
            out[name] = acc.to(tensor.dtype)
        else:
            out[name] = tensor.detach().clone()
    return out


def interpolate(state_a: State, state_b: State, alpha: float) -> dict[str, torch.Tensor]:
    """WiSE-FT's weight-space ensemble ``(1 - alpha) * state_a + alpha * state_b``: ``alpha = 0`` is
    ``state_a`` (the pretrained network with its linear-probe head), ``alpha = 1`` is ``state_b``
    (the fine-tuned one). ``alpha`` outside [0, 1] extrapolates and is refused."""
    if not 0.0 <= float(alpha) <= 1.0:
        raise ConfigError(f"alpha must lie in [0, 1] (0: the first state, 1: the second), got {alpha}")
    return weighted_average([state_a, state_b], [1.0 - float(alpha), float(alpha)])


def uniform_soup(states: Sequence[State]) -> dict[str, torch.Tensor]:
    """The mean of several fine-tuned runs' weights (a *uniform soup*); all must start from one model."""
    _check_compatible(states)
    return weighted_average(states, [1.0 / len(states)] * len(states))


def greedy_soup(states: Sequence[State], score: Callable[[dict[str, torch.Tensor]], float]
                ) -> tuple[dict[str, torch.Tensor], list[int], list[float]]:
    """A *greedy soup*: rank the runs by ``score`` (accuracy on a held-out split — never the test
    split), start from the best, and add each next run if the uniform average of the chosen ones
    scores at least as well. Returns ``(soup, chosen indices, score after each candidate)``."""
    _check_compatible(states)
    own = [score(dict(s)) for s in states]
    order = sorted(range(len(states)), key=lambda i: -own[i])
    chosen, best = [order[0]], own[order[0]]
    trace = [best]
    for i in order[1:]:
        candidate = uniform_soup([states[j] for j in [*chosen, i]])
        value = score(candidate)
        trace.append(value)
        if value >= best:
            chosen, best = [*chosen, i], value
    return uniform_soup([states[j] for j in chosen]), chosen, trace


def load_state(template: nn.Module, state: State) -> nn.Module:
    """A copy of ``template`` holding ``state`` (the template is left unchanged), in ``eval()`` mode."""
    model = copy.deepcopy(template)
    model.load_state_dict(dict(state))
    return model.eval()


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, dataset: Dataset, *, batch_size: int = 32,
                        device: torch.device | str = "cpu") -> int:
    """Measure every BatchNorm layer's running mean and variance again on ``dataset`` (in place).

    Averaging weights averages the running statistics too, and the mean of two networks' statistics
    is not the statistics of the averaged network's activations. This resets them and runs one pass
    in ``train()`` mode with a cumulative average (``momentum=None``), no gradients, no weight
    changes. Returns how many layers were re-estimated; the model is left in ``eval()`` mode.
    """
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not layers:
        raise ConfigError(f"{type(model).__name__} has no BatchNorm layers with running statistics to recompute")
    momenta = [m.momentum for m in layers]
    model.to(device).train()
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
    try:
        for inputs, _ in DataLoader(dataset, batch_size=batch_size):
            forward_logits(model, to_device(inputs, device))
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        model.eval()
    return len(layers)


@torch.no_grad()
def ensemble_logits(models: Sequence[nn.Module], dataset: Dataset, *, batch_size: int = 128,
                    device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The mean logits of ``models`` on ``dataset`` (an output ensemble: one forward pass per model)
    and the labels."""
    if not models:
        raise ConfigError("an ensemble needs at least one model")
    total, labels = None, []
    for k, model in enumerate(models):
        model.eval().to(device)
        logits = []
        for inputs, y in DataLoader(dataset, batch_size=batch_size):
            logits.append(forward_logits(model, to_device(inputs, device)).float().cpu())
            if k == 0:
                labels.append(y)
        out = torch.cat(logits)
        total = out if total is None else total + out
    assert total is not None
    return total / len(models), torch.cat(labels)


def backbone_gradient(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """``(loss, gradient norm)`` of one batch: the cross-entropy, and the norm of its gradient with
    respect to the backbone (every parameter but the head's), with the model in ``eval()`` mode
    (BatchNorm statistics unchanged). No gradient is left behind and no weight changes."""
    head_ids = {id(p) for p in head_of(model).parameters()}
    device = next(model.parameters()).device
    model.eval().zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(model(inputs.to(device)), labels.to(device))
    loss.backward()
    squares = [p.grad.pow(2).sum() for p in model.parameters() if id(p) not in head_ids and p.grad is not None]
    model.zero_grad(set_to_none=True)
    return float(loss.detach()), float(torch.stack(squares).sum().sqrt()) if squares else 0.0


@torch.no_grad()
def pooled_features(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The features the head receives (read by a hook on its input), with the model in ``eval()`` mode."""
    captured: list[torch.Tensor] = []
    handle = head_of(model).register_forward_hook(lambda _m, args, _out: captured.append(args[0].detach()))
    was_training = model.training
    model.eval()
    try:
        model(inputs.to(next(model.parameters()).device))
    finally:
        handle.remove()
        model.train(was_training)
    return captured[0].float().cpu()


def feature_change(model: nn.Module, reference: nn.Module, inputs: torch.Tensor) -> float:
    """Relative change ``||phi(x) - phi0(x)|| / ||phi0(x)||`` of the pooled features between ``model``
    and ``reference`` on ``inputs``, averaged over the examples."""
    now, before = pooled_features(model, inputs), pooled_features(reference, inputs)
    return float(((now - before).norm(dim=1) / before.norm(dim=1).clamp_min(1e-12)).mean())


def blur_and_noise(images: torch.Tensor, blur_sigma: float = 1.5, noise_std: float = 0.1,
                   seed: int = 0) -> torch.Tensor:
    """A shifted copy of ``uint8`` images ``[N, 3, H, W]``: Gaussian blur (``blur_sigma`` pixels), then
    Gaussian noise (``noise_std`` in units of the full 0-255 range), seeded. The same classes under
    a corruption: a distribution shift the model never trained on."""
    import torchvision.transforms.functional as TF

    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ConfigError(f"images must be a uint8 tensor [N, C, H, W] (a TensorImageDataset's .images), got "
                          f"{images.dtype} {tuple(images.shape)}")
    if blur_sigma < 0 or noise_std < 0:
        raise ConfigError(f"blur_sigma and noise_std must be >= 0, got {blur_sigma} and {noise_std}")
    x = images.float()
    if blur_sigma > 0:
        x = TF.gaussian_blur(x, kernel_size=2 * round(3 * blur_sigma) + 1, sigma=blur_sigma)
    if noise_std > 0:
        x = x + noise_std * 255 * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    return x.round().clamp(0, 255).to(torch.uint8)
