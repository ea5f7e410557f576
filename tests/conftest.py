"""Shared fixtures. The notebooks are executed once per session and the book is built from
those executions, so the notebook tests and the book tests never run a chapter twice."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tools import book

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def executed_notebooks() -> dict[str, Path]:
    """Execute every chapter at CI scale (papermill), two side by side (``BOOK_JOBS``; 611 s against
    801 s one at a time in a fresh clone on 2 cores); a failing cell fails the session fixture."""
    results = book.execute("ci", jobs=int(os.environ.get("BOOK_JOBS", "2")))
    return {r.notebook: Path(r.output) for r in results}


@pytest.fixture(scope="session")
def built_site(executed_notebooks: dict[str, Path]) -> Path:
    """Build the book with -W from the executed notebooks; return the html folder."""
    index = book.build("ci", strict=True)
    return index.parent


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _restore_hub_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """``config.resolve_offline`` switches the Hugging Face libraries offline for the whole process
    (environment and ``huggingface_hub.constants``): undo it after each test, so that a test that
    turns it on cannot hide the hub from a later one (tests/test_online.py serves a loopback hub)."""
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", constants.HF_HUB_OFFLINE)
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if name in os.environ:
            monkeypatch.setenv(name, os.environ[name])
        else:
            monkeypatch.delenv(name, raising=False)


@pytest.fixture
def timm_param_groups_weight_decay():
    """timm's own weight-decay grouping, the reference for ours: ``timm.optim.param_groups_weight_decay``
    in newer timm; ``timm.optim.optim_factory``'s in timm 1.0.3 (the floor pyproject allows), which
    newer timm still re-exports, with a FutureWarning (hence the first choice)."""
    import timm.optim

    found = getattr(timm.optim, "param_groups_weight_decay", None)
    if found is None:
        from timm.optim.optim_factory import param_groups_weight_decay as found
    return found


@pytest.fixture
def hub_lookups(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Host names looked up while the test runs (none can be reached: each lookup fails at once,
    and retries do not sleep). huggingface_hub's one user-agent probe is not counted."""
    import socket
    import traceback

    lookups: list[object] = []

    def no_network(host, *args, **kwargs):
        files = {frame.filename for frame in traceback.extract_stack()}
        if not any(f.endswith("_detect_agent.py") for f in files):
            lookups.append(host)
        raise socket.gaierror(f"test: no network ({host})")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr("time.sleep", lambda s: None)
    return lookups
