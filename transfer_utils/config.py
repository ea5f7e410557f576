"""Run-wide settings: device, seeding, scale and the offline switch.

A notebook starts with::

    from transfer_utils import config
    device = config.pick_device()
    config.seed_everything(0)
    OFFLINE = config.resolve_offline("auto")   # prints a banner if it turns itself on

``SCALE`` is either ``"full"`` (what a learner runs; the default in every notebook) or ``"ci"``
(a small subset so that continuous integration can execute every chapter on 2 CPU cores).
"""

from __future__ import annotations

import os
import random
import socket
import sys
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from .errors import ConfigError

Scale = Literal["full", "ci"]
OfflineSetting = bool | Literal["auto"]

#: Hosts the canonical assets come from; if none answers, we are offline.
HUB_HOSTS: tuple[tuple[str, int], ...] = (("huggingface.co", 443), ("download.pytorch.org", 443))


def pick_device(prefer: str | None = None) -> torch.device:
    """Return ``cuda`` if available (or ``mps`` on Apple silicon), else ``cpu``.

    Example::

        device = pick_device()          # cuda on Colab with a GPU runtime
        device = pick_device("cpu")     # force the CPU
    """
    if prefer is not None:
        return torch.device(prefer)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and PyTorch, and return a ``torch.Generator`` seeded the same way.

    Example::

        g = seed_everything(0)
        loader = DataLoader(ds, shuffle=True, generator=g)
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def check_scale(scale: str) -> Scale:
    """Validate a ``SCALE`` parameter (``"full"`` or ``"ci"``) and return it."""
    if scale not in ("full", "ci"):
        raise ConfigError(f"SCALE must be 'full' (a learner's run) or 'ci' (small CI run), got {scale!r}")
    return scale  # type: ignore[return-value]


def hub_reachable(timeout: float = 3.0) -> bool:
    """True if at least one of :data:`HUB_HOSTS` accepts a TCP connection within ``timeout`` s."""
    for host, port in HUB_HOSTS:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                return True
        except OSError:
            continue
    return False


@dataclass(frozen=True)
class OfflineState:
    """The resolved offline switch and why it has that value."""

    offline: bool
    reason: str

    def __bool__(self) -> bool:  # lets notebooks write ``if OFFLINE:``
        return self.offline


def _hub_offline() -> None:
    """Switch the Hugging Face libraries to their offline mode, also when they are already imported.

    ``HF_HUB_OFFLINE`` is read once, when ``huggingface_hub`` is imported, so exporting it later
    changes nothing in this process; the module constant is set too. Without it, ``from_pretrained``
    asks the hub for an ``adapter_config.json`` even with ``local_files_only=True`` (transformers
    5.x does not pass that flag to its adapter lookup), and each model load waits ~25 s for the
    retries of a hub that cannot be reached.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True


def resolve_offline(setting: OfflineSetting = "auto", *, verbose: bool = True) -> OfflineState:
    """Resolve the offline switch.

    * ``False``: never substitute; a missing canonical asset is an error.
    * ``True``: use only local caches and mirrors; substitutions are printed.
    * ``"auto"`` (default): offline if ``TL_OFFLINE=1`` or ``HF_HUB_OFFLINE=1`` is set, or if no
      model hub answers. When it turns itself on it says so.

    Offline, ``HF_HUB_OFFLINE=1`` is exported so that ``from_pretrained`` reads only the cache (and
    ``huggingface_hub``, if imported already, is told as well: it reads the variable at import).

    Example::

        OFFLINE = resolve_offline("auto")
        if OFFLINE: print(OFFLINE.reason)
    """
    if setting not in (True, False, "auto"):
        raise ConfigError(f"OFFLINE must be True, False or 'auto', got {setting!r}")
    if setting == "auto":
        env = os.environ.get("TL_OFFLINE", "") or os.environ.get("HF_HUB_OFFLINE", "")
        if env.strip().lower() in ("1", "true", "yes", "on"):
            state = OfflineState(True, "the environment sets TL_OFFLINE/HF_HUB_OFFLINE")
        elif not hub_reachable():
            state = OfflineState(True, "no model hub is reachable from this machine")
        else:
            state = OfflineState(False, "the model hubs are reachable")
    else:
        state = OfflineState(bool(setting), "set explicitly")
    if state.offline:
        _hub_offline()
        if verbose:
            print(
                f"[transfer_utils] OFFLINE MODE is ON ({state.reason}).\n"
                "  Assets come from the local caches and offline mirrors only; any substitute for an\n"
                "  unavailable canonical asset is announced below."
            )
    return state
