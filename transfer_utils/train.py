"""``fit``: one training loop for every chapter, with checkpoints a Colab disconnect can't break.

Each epoch ends with a checkpoint (``last.safetensors``: the model, in safetensors, with
``last.state.pt`` beside it: optimizer, scheduler, history, read with
``torch.load(weights_only=True)``; ``best.safetensors``: the best model by validation accuracy). Calling
``fit`` again with the same ``checkpoint_dir`` resumes after the last finished epoch, and on the
CPU an interrupted-then-resumed run ends with exactly the weights of an uninterrupted one: the
random state of epoch ``e`` is derived from ``seed + e``, not carried over from earlier epochs.

Example::

    history = fit(model, train_loader, val_loader=val_loader, epochs=5,
                  optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3),
                  checkpoint_dir="checkpoints/ants-bees")
    history.best_val_accuracy
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .batches import (  # re-exported: train.to_device, train.forward_logits
    forward_logits,
    to_device,
)
from .data import check_labels
from .errors import ConfigError, DamagedFileError, NonFiniteLossError
from .fileio import atomic_path
from .models import frozen_batchnorm_eval


@dataclass
class EpochRecord:
    """Metrics of one epoch."""

    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float | None
    val_accuracy: float | None
    lr: float
    seconds: float


@dataclass
class History:
    """Everything ``fit`` measured, epoch by epoch."""

    epochs: list[EpochRecord] = field(default_factory=list)
    stopped_early: bool = False

    def column(self, name: str) -> list[Any]:
        """One metric over the epochs, e.g. ``history.column("val_accuracy")``."""
        return [getattr(r, name) for r in self.epochs]

    @property
    def best_val_accuracy(self) -> float | None:
        vals = [v for v in self.column("val_accuracy") if v is not None]
        return max(vals) if vals else None

    @property
    def seconds(self) -> float:
        return float(sum(self.column("seconds")))

    def to_dict(self) -> dict[str, Any]:
        return {"epochs": [asdict(r) for r in self.epochs], "stopped_early": self.stopped_early}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "History":
        return cls([EpochRecord(**r) for r in data["epochs"]], bool(data["stopped_early"]))


# ----------------------------------------------------------------------------------------------
# Checkpoints: the weights in safetensors, the training state beside them in a file that
# torch.load(weights_only=True) reads (tensors, numbers, strings, lists, dicts: never arbitrary
# objects, so loading one never runs code)
# ----------------------------------------------------------------------------------------------


def state_file(path: str | Path) -> Path:
    """Where :func:`save_checkpoint` keeps the training state of the checkpoint ``path``:
    ``last.safetensors`` -> ``last.state.pt``."""
    path = Path(path)
    return path.with_name(path.stem + ".state.pt")


def save_checkpoint(path: str | Path, model: nn.Module, **states: Any) -> Path:
    """Save ``model``'s weights to ``path`` (safetensors) and any extra state dicts (optimizer,
    scheduler, history, …) to :func:`state_file` (``torch.save``), each atomically.

    Both files carry the same random tag, so a reader can tell a pair written together from the
    weights of one epoch beside the state of another (a crash between the two writes).
    """
    import uuid

    path = Path(path)
    tag = uuid.uuid4().hex
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if states:
        with atomic_path(state_file(path)) as part:
            torch.save({"tag": tag, "states": states}, part)
    else:
        state_file(path).unlink(missing_ok=True)  # weights only: no stale state beside them
    with atomic_path(path) as part:  # ``path`` is the old file or the new one, never half of either
        save_file(tensors, part, metadata={"state": tag} if states else {})
    return path


def _state_mismatch(weights: Mapping[str, torch.Tensor], model: nn.Module) -> str:
    """What differs between saved ``weights`` and ``model``'s state dict ("" when they fit)."""
    expected = model.state_dict()
    problems = [f"{k} is {tuple(weights[k].shape)} in the file, {tuple(v.shape)} in the model"
                for k, v in expected.items() if k in weights and weights[k].shape != v.shape]
    missing = [k for k in expected if k not in weights]
    extra = [k for k in weights if k not in expected]

    def names(keys: list[str]) -> str:
        return ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")

    if missing:
        problems.append(f"missing from the file: {names(missing)}")
    if extra:
        problems.append(f"not in the model: {names(extra)}")
    return "; ".join(problems[:6])


def load_checkpoint(path: str | Path, model: nn.Module | None = None) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`; restore ``model`` in place if given.

    Returns the extra states by name; ``"model"`` holds the raw weights. A file that is
    cut short or corrupt (the weights or the training state beside them) raises :class:`~transfer_utils.errors.DamagedFileError` naming it; weights
    of another architecture raise :class:`~transfer_utils.errors.ConfigError` saying what differs.
    """
    path = Path(path)
    state = _read_checkpoint(path, "Delete it and train again, or load another checkpoint.")
    if model is not None:
        _restore_weights(path, state["model"], model)
    return state


def _read_checkpoint(path: Path, remedy: str) -> dict[str, Any]:
    """The weights and every state of the checkpoint ``path``; ``remedy`` ends the message of a
    damaged file."""
    import pickle

    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise ConfigError(f"there is no checkpoint {path}: check the path (fit writes last.safetensors "
                          "and best.safetensors into its checkpoint_dir)")
    try:
        tensors = load_file(path)
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise DamagedFileError(f"the checkpoint {path} is damaged ({err}): it was cut short (a full disk, an "
                               f"interrupted copy or sync) or overwritten. {remedy}", path) from None
    out: dict[str, Any] = {"model": {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}}
    if "state" not in metadata:
        return out  # weights only (best.safetensors)
    states = state_file(path)
    try:
        saved = torch.load(states, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DamagedFileError(f"the checkpoint {path} is incomplete: its training state {states.name} is "
                               f"missing (copied without it?). {remedy}", states) from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as err:
        raise DamagedFileError(f"the training state {states} of the checkpoint {path} is damaged or holds "
                               f"something other than tensors, numbers and strings ({type(err).__name__}: "
                               f"{str(err).splitlines()[0] if str(err) else ''}). {remedy}", states) from None
    if not isinstance(saved, dict) or saved.get("tag") != metadata["state"] or not isinstance(saved.get("states"), dict):
        raise DamagedFileError(f"the checkpoint {path} and its training state {states.name} were not written "
                               f"together (one is from another epoch or run). {remedy}", states)
    out.update(saved["states"])
    return out


def _restore_weights(path: Path, weights: dict[str, torch.Tensor], model: nn.Module, check_only: bool = False) -> None:
    """Load ``weights`` (read from ``path``) into ``model``, or say exactly why they do not fit."""
    differences = _state_mismatch(weights, model)
    if differences:
        raise ConfigError(f"the checkpoint {path} does not fit this model: {differences}. It was saved from a "
                          "different architecture or head: delete it or use another checkpoint_dir.")
    if not check_only:
        model.load_state_dict(weights)


def _resume(last: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
            scaler: torch.amp.GradScaler | None) -> tuple[History, float, int]:
    """Restore a run from ``last``: the model, optimizer, scheduler and scaler in place; return
    the history and the early-stopping progress. A damaged or foreign file stops with advice,
    before anything is changed."""
    best = last.with_name("best.safetensors")
    remedy = ("Cannot resume. "
              + (f"The best weights so far are in {best}: load_checkpoint({str(best)!r}, model). " if best.is_file()
                 else "")
              + "To start over, pass another checkpoint_dir, or resume=False (which overwrites this folder).")
    state = _read_checkpoint(last, remedy)
    try:
        history = History.from_dict(state["history"])
        best_acc, since_best = float(state["progress"]["best_acc"]), int(state["progress"]["since_best"])
        if not isinstance(state["optimizer"], dict):
            raise TypeError("the optimizer state is not a dict")
    except (KeyError, TypeError, ValueError) as err:
        raise DamagedFileError(f"the checkpoint {last} is damaged or was not written by fit: its training state "
                               f"is incomplete ({type(err).__name__}: {err}). {remedy}", last) from None
    _restore_weights(last, state["model"], model, check_only=True)
    try:
        optimizer.load_state_dict(state["optimizer"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise ConfigError(f"the optimizer state in {last} does not fit this optimizer ({err}): it was saved "
                          f"with other parameter groups or another optimizer class. {remedy}") from None
    _restore_weights(last, state["model"], model)
    if scheduler is not None and "scheduler" in state:
        scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and "scaler" in state:
        scaler.load_state_dict(state["scaler"])
    return history, best_acc, since_best


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------


def _reseed(seed: int, epoch: int, loader: DataLoader) -> None:
    torch.manual_seed(seed + epoch)
    if loader.generator is not None:
        loader.generator.manual_seed(seed + epoch)


def _run_epoch(model: nn.Module, loader: DataLoader, loss_fn: Callable[..., torch.Tensor], device: torch.device, *,
               optimizer: torch.optim.Optimizer | None, scaler: torch.amp.GradScaler | None,
               amp_dtype: torch.dtype | None, clip_grad_norm: float | None,
               scheduler_per_step: Any, num_classes: int | None, desc: str, progress: bool,
               frozen_bn_eval: bool = False) -> tuple[float, float]:
    training = optimizer is not None
    model.train(training)
    if training and frozen_bn_eval:
        frozen_batchnorm_eval(model)
    total_loss, correct, seen = 0.0, 0, 0
    with torch.set_grad_enabled(training), tqdm(total=len(loader), desc=desc, leave=False, disable=not progress) as bar:
        for inputs, labels in loader:
            bar.update()
            inputs, labels = to_device(inputs, device), labels.to(device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = forward_logits(model, inputs)
                if num_classes is not None and logits.shape[-1] != num_classes:
                    raise ConfigError(
                        f"the model outputs {logits.shape[-1]} scores per example but the data has "
                        f"{num_classes} classes: replace the head with replace_head(model, {num_classes})."
                    )
                labels = check_labels(labels, logits.shape[-1])
                loss = loss_fn(logits, labels)
            if not math.isfinite(loss.item()):  # before backward and step: this batch changes no weight
                raise NonFiniteLossError(
                    "the loss became NaN/inf (the weights are those before this batch): lower the learning rate, "
                    "enable clip_grad_norm, or check the inputs."
                )
            if training:
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)
                else:
                    loss.backward()
                if clip_grad_norm is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
                stepped = True
                if scaler is not None:
                    scale = scaler.get_scale()
                    scaler.step(optimizer)  # skipped when the float16 gradients overflowed
                    scaler.update()
                    stepped = scaler.get_scale() >= scale  # the scale only drops after a skipped step
                else:
                    optimizer.step()
                if scheduler_per_step is not None and stepped:  # as the Trainer: one schedule step per update
                    scheduler_per_step.step()
            total_loss += loss.item() * labels.shape[0]
            correct += int((logits.argmax(-1) == labels).sum())
            seen += labels.shape[0]
    return total_loss / max(seen, 1), correct / max(seen, 1)


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    *,
    epochs: int,
    optimizer: torch.optim.Optimizer,
    val_loader: DataLoader | None = None,
    loss_fn: Callable[..., torch.Tensor] | None = None,
    scheduler: Any = None,
    scheduler_interval: str = "epoch",
    device: torch.device | str = "cpu",
    amp: bool = False,
    clip_grad_norm: float | None = None,
    early_stopping_patience: int | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    seed: int = 0,
    num_classes: int | None = None,
    on_epoch_start: Callable[[int], None] | None = None,
    on_epoch_end: Callable[[EpochRecord], None] | None = None,
    frozen_bn_eval: bool = False,
    progress: bool = True,
) -> History:
    """Train ``model`` for ``epochs`` epochs and return its :class:`History`.

    * ``amp=True`` uses mixed precision (bfloat16 autocast where supported, else float16 with a
      gradient scaler) on CUDA; on the CPU it is ignored.
    * ``scheduler`` steps once per epoch, or once per batch with ``scheduler_interval="step"``.
    * ``early_stopping_patience``: stop once validation accuracy has not improved for that many
      epochs; the best weights are then in ``checkpoint_dir/best.safetensors``.
    * ``checkpoint_dir``: save after every epoch; with ``resume=True`` a later call continues
      from the last finished epoch (a finished run returns at once with its history).
    * ``num_classes``: checked against the model's output size on the first batch.
    * ``frozen_bn_eval=True`` keeps BatchNorm layers of frozen stages in eval mode while the
      rest trains (see :func:`~transfer_utils.models.frozen_batchnorm_eval`).
    * ``on_epoch_start(epoch)`` runs before each epoch (0-based; also after a resume), e.g. a
      :class:`~transfer_utils.schedules.GradualUnfreezer`; ``on_epoch_end(record)`` after it.
    """
    if epochs < 1:
        raise ConfigError(f"epochs must be >= 1, got {epochs}")
    if scheduler_interval not in ("epoch", "step"):
        raise ConfigError("scheduler_interval must be 'epoch' or 'step'")
    device = torch.device(device)
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    model.to(device)
    use_amp = amp and device.type == "cuda"
    amp_dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if use_amp else None
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None

    history, start_epoch, best_acc, since_best = History(), 0, -1.0, 0
    last = Path(checkpoint_dir) / "last.safetensors" if checkpoint_dir is not None else None
    if last is not None and resume and last.is_file():
        history, best_acc, since_best = _resume(last, model, optimizer, scheduler, scaler)
        start_epoch = len(history.epochs)
        print(f"[fit] resumed from {last} after epoch {start_epoch}/{epochs}")  # never silent
        if history.stopped_early:
            return history

    for epoch in range(start_epoch, epochs):
        if on_epoch_start is not None:
            on_epoch_start(epoch)
        _reseed(seed, epoch, train_loader)
        t0 = time.perf_counter()
        common = dict(loss_fn=loss_fn, device=device, amp_dtype=amp_dtype, num_classes=num_classes, progress=progress)
        train_loss, train_acc = _run_epoch(
            model, train_loader, optimizer=optimizer, scaler=scaler, clip_grad_norm=clip_grad_norm,
            scheduler_per_step=scheduler if scheduler_interval == "step" else None,
            desc=f"epoch {epoch + 1}/{epochs}", frozen_bn_eval=frozen_bn_eval, **common)
        val_loss = val_acc = None
        if val_loader is not None:
            val_loss, val_acc = _run_epoch(model, val_loader, optimizer=None, scaler=None, clip_grad_norm=None,
                                           scheduler_per_step=None, desc="validate", **common)
        if scheduler is not None and scheduler_interval == "epoch":
            scheduler.step()
        record = EpochRecord(epoch + 1, train_loss, train_acc, val_loss, val_acc,
                             optimizer.param_groups[0]["lr"], time.perf_counter() - t0)
        history.epochs.append(record)
        improved = val_acc is not None and val_acc > best_acc
        if improved:
            best_acc, since_best = float(val_acc), 0
        else:
            since_best += 1
        if early_stopping_patience is not None and val_acc is not None and since_best >= early_stopping_patience:
            history.stopped_early = True
        if checkpoint_dir is not None:
            extra: dict[str, Any] = {"optimizer": optimizer.state_dict(), "history": history.to_dict(),
                                     "progress": {"best_acc": best_acc, "since_best": since_best}}
            if scheduler is not None:
                extra["scheduler"] = scheduler.state_dict()
            if scaler is not None:
                extra["scaler"] = scaler.state_dict()
            if improved:
                save_checkpoint(Path(checkpoint_dir) / "best.safetensors", model)
            save_checkpoint(last, model, **extra)  # type: ignore[arg-type]
        if progress:
            val = f" val_loss {val_loss:.4f} val_acc {val_acc:.3f}" if val_acc is not None else ""
            print(f"epoch {epoch + 1:3d}/{epochs}  train_loss {train_loss:.4f} train_acc {train_acc:.3f}{val}"
                  f"  ({record.seconds:.1f}s)")
        if on_epoch_end is not None:
            on_epoch_end(record)
        if history.stopped_early:
            if progress:
                print(f"[fit] early stop: no val-accuracy gain for {early_stopping_patience} epochs")
            break
    return history
