"""Check a derived gradient against autograd and against finite differences.

The loss-and-gradient chapter derives each formula by hand, then *checks* it: the hand-derived
gradient, PyTorch's autograd and central finite differences must agree, in float64, to a stated
tolerance. A wrong derivation fails the check.

Example::

    x = torch.randn(5, dtype=torch.float64)
    result = check_gradient(lambda v: (v ** 3).sum(), x, analytic=3 * x ** 2)
    result.assert_ok()          # raises AssertionError with the largest error if not
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .errors import ConfigError


def numerical_gradient(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Central differences (f(x + eps e_i) - f(x - eps e_i)) / (2 eps) for every element i of ``x``."""
    _check_input(x)
    grad = torch.zeros_like(x)
    flat, gflat = x.detach().clone().reshape(-1), grad.reshape(-1)
    for i in range(flat.numel()):
        orig = flat[i].item()
        flat[i] = orig + eps
        up = float(f(flat.view_as(x)))
        flat[i] = orig - eps
        down = float(f(flat.view_as(x)))
        flat[i] = orig
        gflat[i] = (up - down) / (2 * eps)
    return grad


def autograd_gradient(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The gradient of the scalar ``f`` at ``x`` according to autograd."""
    _check_input(x)
    xv = x.detach().clone().requires_grad_(True)
    value = f(xv)
    if value.numel() != 1:
        raise ConfigError(f"f must return a scalar, got shape {tuple(value.shape)}")
    (grad,) = torch.autograd.grad(value, xv)
    return grad


@dataclass
class GradientCheck:
    """Autograd, finite differences and (optionally) a hand-derived gradient, compared."""

    autograd: torch.Tensor
    numeric: torch.Tensor
    analytic: torch.Tensor | None
    max_abs_error: float  #: largest |difference| between any two of the gradients
    max_rel_error: float  #: the same, relative to max(|g|, 1e-12)
    rtol: float
    atol: float

    @property
    def ok(self) -> bool:
        return self.max_abs_error <= self.atol + self.rtol * float(self.autograd.abs().max())

    def assert_ok(self) -> None:
        assert self.ok, (f"gradients disagree: max abs error {self.max_abs_error:.3e}, "
                         f"max rel error {self.max_rel_error:.3e} (rtol {self.rtol}, atol {self.atol})")

    def __repr__(self) -> str:
        verdict = "OK" if self.ok else "MISMATCH"
        return (f"GradientCheck({verdict}: max abs error {self.max_abs_error:.2e}, "
                f"max rel error {self.max_rel_error:.2e})")


def check_gradient(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, analytic: torch.Tensor | None = None,
                   *, eps: float = 1e-6, rtol: float = 1e-6, atol: float = 1e-9) -> GradientCheck:
    """Compare autograd, finite differences and ``analytic`` (if given) for scalar ``f`` at ``x``."""
    auto = autograd_gradient(f, x)
    numeric = numerical_gradient(f, x, eps)
    grads = [auto, numeric] + ([analytic.detach().to(torch.float64)] if analytic is not None else [])
    if analytic is not None and analytic.shape != x.shape:
        raise ConfigError(f"analytic gradient has shape {tuple(analytic.shape)}, x has {tuple(x.shape)}")
    abs_err = max(float((a - b).abs().max()) for i, a in enumerate(grads) for b in grads[i + 1:])
    scale = max(float(auto.abs().max()), 1e-12)
    return GradientCheck(auto, numeric, analytic, abs_err, abs_err / scale, rtol, atol)


def _check_input(x: torch.Tensor) -> None:
    if x.dtype != torch.float64:
        raise ConfigError(
            f"gradient checks need float64 inputs (got {x.dtype}): in float32, finite differences "
            "lose about half their digits to rounding. Use x.double()."
        )
