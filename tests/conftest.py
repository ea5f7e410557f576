"""Shared fixtures. The notebooks are executed once per session and the book is built from
those executions, so the notebook tests and the book tests never run a chapter twice."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from transfer_utils import book

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def executed_notebooks() -> dict[str, Path]:
    """Execute every chapter at CI scale (papermill); a failing cell fails the session fixture."""
    results = book.execute("ci")
    return {r.notebook: Path(r.output) for r in results}


@pytest.fixture(scope="session")
def built_site(executed_notebooks: dict[str, Path]) -> Path:
    """Build the book with -W from the executed notebooks; return the html folder."""
    index = book.build("ci", strict=True)
    return index.parent


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
