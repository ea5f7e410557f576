"""Grad-CAM: which parts of an image drove a convolutional classifier's decision.

Grad-CAM (Selvaraju et al., 2017) weights the feature maps :math:`A^k` of a convolutional layer
by the average gradient of the class score :math:`y^c` over each map, sums, and keeps the
positive part:

.. math:: L^c = \\operatorname{ReLU}\\Big(\\sum_k \\alpha_k^c A^k\\Big),\\qquad
          \\alpha_k^c = \\frac{1}{HW}\\sum_{i,j} \\frac{\\partial y^c}{\\partial A^k_{ij}}

Example::

    heat = grad_cam(model, images, target_layer=model.layer4)   # [N, H, W] in [0, 1]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def grad_cam(model: nn.Module, images: torch.Tensor, target_layer: nn.Module,
             class_index: int | torch.Tensor | None = None) -> torch.Tensor:
    """Grad-CAM maps for a batch ``[N, 3, H, W]``, upsampled to ``[N, H, W]`` and scaled to [0, 1].

    ``class_index``: the class to explain (an int or one per image); default, the predicted one.
    The model is put in eval mode; its hooks are removed afterwards, even on error.
    """
    model.eval()
    captured: dict[str, torch.Tensor] = {}
    handle = target_layer.register_forward_hook(lambda m, i, o: captured.__setitem__("a", o))
    try:
        x = images.detach().clone().requires_grad_(True)  # gradients flow even through a frozen model
        with torch.enable_grad():
            logits = model(x)
            if class_index is None:
                idx = logits.argmax(1)
            else:
                idx = torch.as_tensor(class_index, device=logits.device).expand(logits.shape[0])
            score = logits.gather(1, idx.view(-1, 1)).sum()
            activations = captured["a"]
            (grads,) = torch.autograd.grad(score, activations)
    finally:
        handle.remove()
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * activations).sum(1, keepdim=True)).detach()
    cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False).squeeze(1)
    peak = cam.flatten(1).max(1).values.clamp(min=1e-12).view(-1, 1, 1)
    return cam / peak
