"""Regularisers for fine-tuning: L2-SP keeps the weights near their pretrained values.

L2-SP (Li et al., 2018) replaces weight decay towards zero with a penalty on the distance to
the *starting point* :math:`w^0` — the pretrained weights:

.. math:: \\Omega(w) = \\frac{\\alpha}{2} \\lVert w_S - w_S^0 \\rVert^2 + \\frac{\\beta}{2} \\lVert w_{\\bar S} \\rVert^2

where :math:`S` are the layers that exist in the pretrained model and :math:`\\bar S` the new ones
(the head). Its gradient on a pretrained weight is :math:`\\alpha (w - w^0)`.

Example::

    start = snapshot(model)                       # right after loading pretrained weights
    loss = task_loss + l2_sp_penalty(model, start, alpha=0.01, beta=0.01)
"""

from __future__ import annotations

import torch
from torch import nn


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of every parameter, by name: the starting point for L2-SP."""
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def l2_sp_penalty(model: nn.Module, start: dict[str, torch.Tensor], alpha: float, beta: float = 0.0) -> torch.Tensor:
    """alpha/2 * ||w - w0||^2 over parameters present in ``start`` with the same shape, plus
    beta/2 * ||w||^2 over the others (new layers). Frozen parameters are skipped."""
    near_start = torch.zeros(())
    new_layers = torch.zeros(())
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        ref = start.get(name)
        if ref is not None and ref.shape == p.shape:
            near_start = near_start + (p - ref.to(p.device)).pow(2).sum()
        else:
            new_layers = new_layers + p.pow(2).sum()
    return 0.5 * alpha * near_start + 0.5 * beta * new_layers
