"""Batch plumbing shared by every loop: move a batch to a device, get logits from any model.

Images arrive as tensors, tokenised texts as dicts of tensors; torchvision/timm models return
logits, Hugging Face models an output object with ``.logits``. These two functions hide the
difference, so that :mod:`transfer_utils.train`, :mod:`transfer_utils.evaluate` and
:mod:`transfer_utils.text` run the same code for both.

Example::

    logits = forward_logits(model, to_device(batch_inputs, "cuda"))
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["to_device", "forward_logits"]


def to_device(inputs: Any, device: torch.device | str) -> Any:
    """Move a batch's inputs to ``device``: a tensor, or a dict of tensors (a tokenised text batch)."""
    if isinstance(inputs, Mapping):
        return {k: v.to(device) for k, v in inputs.items()}
    return inputs.to(device)


def forward_logits(model: nn.Module, inputs: Any) -> torch.Tensor:
    """``model(inputs)`` for tensors, ``model(**inputs).logits`` for a Hugging Face model fed a dict."""
    out = model(**inputs) if isinstance(inputs, Mapping) else model(inputs)
    return out.logits if hasattr(out, "logits") else out
