"""Glued values are stored as text that myst-nb can format, whatever numeric type they came as."""

from __future__ import annotations

from typing import Any

import IPython.display
import numpy as np
import pytest
import torch

from transfer_utils import report


@pytest.mark.parametrize("value,text", [(np.float64(0.25), "0.25"), (torch.tensor(0.5), "0.5"), (np.int64(3), "3"),
                                        (0.75, "0.75")])
def test_scalars_are_glued_as_plain_numbers(value: Any, text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    shown: list[tuple[dict[str, str], dict[str, Any]]] = []
    monkeypatch.setattr(IPython.display, "display", lambda bundle, raw, metadata: shown.append((bundle, metadata)))
    report.glue("x", value, display=False)
    bundle, metadata = shown[0]
    assert bundle[report.GLUE_PREFIX + "text/plain"] == text
    assert float(bundle[report.GLUE_PREFIX + "text/plain"]) == pytest.approx(float(value))
    assert metadata["scrapbook"]["name"] == "x"
