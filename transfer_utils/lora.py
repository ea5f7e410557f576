"""Parameter-efficient fine-tuning, by hand: LoRA layers, merging, bottleneck adapters, a simulated
4-bit (NF4) base, and what a training step holds.

The parameter-efficient chapter (``notebooks/09_parameter_efficient.ipynb``) builds
:class:`LoRALinear` in a notebook cell and then uses ``peft``; this module keeps
the same class (a test checks that the chapter's cell is this code), the merge, Houlsby et al.'s
:class:`Adapter` (``peft`` has none), NF4 quantisation for the QLoRA section, and the
measurements the chapter's comparison table needs.

Example::

    wrapped = add_lora(model, targets=("query", "value"), r=8, alpha=16)   # BERT-family names
    train_only(model, lambda name: name.endswith((".A", ".B")) or name.startswith("classifier"))
    ...                                                                 # train
    merge_lora(model)                                                   # back to plain nn.Linear layers
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .batches import forward_logits, to_device
from .errors import ConfigError


def lora_delta(A: torch.Tensor, B: torch.Tensor, alpha: float, r: int) -> torch.Tensor:
    """The weight update a LoRA pair stands for, ``(alpha / r) · B A``, shaped like the frozen weight
    (``out_features × in_features``): ``A`` is ``r × in_features``, ``B`` is ``out_features × r``."""
    return (alpha / r) * (B @ A)


class LoRALinear(nn.Module):
    """y = W x + b + (alpha / r) · B A x, with W and b frozen and only A (r × in) and B (out × r) trained."""

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16, dropout: float = 0.0) -> None:
        super().__init__()
        self.base, self.r, self.alpha, self.scaling = base, r, alpha, alpha / r
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.A = nn.Parameter(torch.empty(r, base.in_features))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))             # random, like nn.Linear's (and peft's) init
        self.B = nn.Parameter(torch.zeros(base.out_features, r))     # zero: the model starts as the pretrained one
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (self.dropout(x) @ self.A.T @ self.B.T) * self.scaling


def add_lora(model: nn.Module, targets: Iterable[str] = ("query", "value"), r: int = 8, alpha: float = 16,
             dropout: float = 0.0, layer: type[nn.Module] = LoRALinear) -> list[str]:
    """Wrap every ``nn.Linear`` whose own name is in ``targets`` in ``layer`` (in place); return
    the wrapped modules' full names. BERT-family attention calls them ``query``, ``key``, ``value``."""
    targets = set(targets)
    wrapped = []
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            if name in targets and isinstance(child, nn.Linear):
                setattr(parent, name, layer(child, r=r, alpha=alpha, dropout=dropout))
                wrapped.append(f"{parent_name}.{name}" if parent_name else name)
    if not wrapped:
        raise ConfigError(f"no nn.Linear named {sorted(targets)} in {type(model).__name__}: "
                          "print [n for n, _ in model.named_modules()] to find the projection names")
    return wrapped


def _is_lora(module: nn.Module) -> bool:
    return all(hasattr(module, a) for a in ("base", "A", "B", "alpha", "r")) and isinstance(module.base, nn.Linear)


def merge_lora(model: nn.Module) -> int:
    """Replace every LoRA layer by one ``nn.Linear`` holding ``W + (alpha / r) · B A`` (in place);
    return how many were merged. After it the model has no extra module and no extra cost."""
    merged = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if _is_lora(child):
                base = child.base
                linear = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None)
                linear.to(device=base.weight.device, dtype=base.weight.dtype)
                with torch.no_grad():
                    linear.weight.copy_(base.weight + lora_delta(child.A, child.B, child.alpha, child.r))
                    if base.bias is not None:
                        linear.bias.copy_(base.bias)
                linear.requires_grad_(False)
                setattr(parent, name, linear)
                merged += 1
    return merged


def train_only(model: nn.Module, trainable: Callable[[str], bool]) -> int:
    """Freeze every parameter whose name ``trainable(name)`` rejects and unfreeze the rest; return
    the number of trainable parameters."""
    for name, p in model.named_parameters():
        p.requires_grad_(bool(trainable(name)))
    return count_trainable(model)


def count_trainable(model: nn.Module) -> int:
    """Number of parameters with ``requires_grad`` (what the optimizer updates and a task must save)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def save_trainable(model: nn.Module, path: str | Path) -> int:
    """Write only the trainable tensors to a safetensors file; return its size in bytes."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}, str(path))
    return path.stat().st_size


@dataclass
class StepMemory:
    """What one AdamW training step holds, in bytes, counted from the tensors themselves."""

    weights: int        #: every parameter, trainable or frozen
    gradients: int      #: one gradient per trainable parameter
    optimizer: int      #: AdamW's two moments per trainable parameter
    activations: int    #: tensors autograd saved for the backward pass (parameters excluded)
    cuda_peak: int | None = None  #: on a CUDA device: the allocator's peak during the step, minus what it held before

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations


def step_memory(model: nn.Module, inputs: dict[str, torch.Tensor], labels: torch.Tensor) -> StepMemory:
    """Run one AdamW step on a copy of ``model`` and count what it held (the model is not changed).

    Activations are counted with ``torch.autograd.graph.saved_tensors_hooks`` (each storage once);
    on a CUDA device ``torch.cuda.max_memory_allocated`` gives the allocator's view as well. The
    inputs are moved to the model's device.
    """
    device = next(model.parameters()).device
    inputs, labels = to_device(inputs, device), labels.to(device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    model = copy.deepcopy(model).train()
    param_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in param_storages:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(forward_logits(model, inputs), labels)
    loss.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    optimizer.step()
    cuda_peak = torch.cuda.max_memory_allocated(device) - before if cuda else None
    nbytes = lambda ts: sum(t.numel() * t.element_size() for t in ts)  # noqa: E731
    return StepMemory(
        weights=nbytes(model.parameters()),
        gradients=nbytes(p.grad for p in trainable if p.grad is not None),
        optimizer=nbytes(v for s in optimizer.state.values() for v in s.values()
                         if isinstance(v, torch.Tensor) and v.dim() > 0),
        activations=sum(saved.values()), cuda_peak=cuda_peak)


class Adapter(nn.Module):
    """Houlsby et al.'s bottleneck adapter: ``h + up(gelu(down(h)))``, ``down`` from ``dim`` to
    ``bottleneck`` features and ``up`` back. ``up`` starts at zero, so the adapter starts as the identity."""

    def __init__(self, dim: int, bottleneck: int = 16) -> None:
        super().__init__()
        self.down, self.up = nn.Linear(dim, bottleneck), nn.Linear(bottleneck, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(F.gelu(self.down(h)))


class AdaptedLinear(nn.Module):
    """A frozen ``nn.Linear`` followed by a trainable :class:`Adapter`: ``adapter(base(x))``."""

    def __init__(self, base: nn.Linear, bottleneck: int = 16) -> None:
        super().__init__()
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.adapter = Adapter(base.out_features, bottleneck)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.base(x))


def add_adapters(model: nn.Module, targets: Iterable[str] = ("output.dense",), bottleneck: int = 16) -> list[str]:
    """Insert an :class:`Adapter` after every ``nn.Linear`` whose full name ends with one of
    ``targets`` (in place); return the full names. In BERT-family models ``output.dense`` matches
    both places Houlsby et al. put one: the attention's output projection (``attention.output.dense``)
    and the feed-forward block's (``output.dense``), each before its residual sum and LayerNorm."""
    suffixes = tuple(targets)
    wrapped = []
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            full = f"{parent_name}.{name}" if parent_name else name
            if isinstance(child, nn.Linear) and any(full == s or full.endswith("." + s) for s in suffixes):
                setattr(parent, name, AdaptedLinear(child, bottleneck))
                wrapped.append(full)
    if not wrapped:
        raise ConfigError(f"no nn.Linear whose name ends with {list(suffixes)} in {type(model).__name__}: "
                          "print [n for n, _ in model.named_modules()] to find the output projections")
    return wrapped


#: The 16 levels of QLoRA's 4-bit NormalFloat (NF4) data type, as bitsandbytes stores them: quantiles
#: of a normal distribution scaled to [-1, 1], with an exact zero.
NF4_LEVELS = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0])


def quantize_nf4(weight: torch.Tensor, block: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Store ``weight`` in 4 bits: per block of ``block`` values one float32 absmax scale, and per
    value the index of the nearest NF4 level, two indices packed in each byte. Returns
    ``(packed uint8 codes, absmax scales)``; :func:`dequantize_nf4` inverts it up to rounding."""
    if weight.numel() % (2 * block):
        raise ConfigError(f"quantize_nf4 needs a size divisible by {2 * block}, got {tuple(weight.shape)}")
    blocks = weight.detach().float().reshape(-1, block)
    absmax = blocks.abs().amax(dim=1).clamp_min(1e-12)
    levels = NF4_LEVELS.to(weight.device)
    midpoints = (levels[1:] + levels[:-1]) / 2                      # nearest level = bucket between midpoints
    codes = torch.bucketize(blocks / absmax[:, None], midpoints).to(torch.uint8).reshape(-1)
    return codes[0::2] | (codes[1::2] << 4), absmax


def dequantize_nf4(packed: torch.Tensor, absmax: torch.Tensor, shape: torch.Size | tuple[int, ...],
                   block: int = 64) -> torch.Tensor:
    """The float32 weight that :func:`quantize_nf4`'s codes stand for, shaped ``shape``."""
    codes = torch.stack([packed & 0xF, packed >> 4], dim=1).reshape(-1).long()
    levels = NF4_LEVELS.to(packed.device)
    return (levels[codes].reshape(-1, block) * absmax[:, None]).reshape(shape)


def nf4_round_trip_(model: nn.Module, block: int = 64) -> tuple[int, int]:
    """Replace every ``nn.Linear`` weight of ``model`` by its NF4 round trip (in place) and return
    ``(bytes in float32, bytes in NF4)`` of those weights. This *simulates* a 4-bit base: the layers
    compute exactly what a layer de-quantising its NF4 weights on the fly computes, while memory
    still holds float32 (``bitsandbytes`` stores the codes, on a GPU)."""
    fp32 = nf4 = 0
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                packed, absmax = quantize_nf4(module.weight, block)
                module.weight.copy_(dequantize_nf4(packed, absmax, module.weight.shape, block))
                fp32 += module.weight.numel() * 4
                nf4 += packed.numel() * packed.element_size() + absmax.numel() * absmax.element_size()
    return fp32, nf4
