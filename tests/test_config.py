from __future__ import annotations

import os

import pytest
import torch

from transfer_utils import assets, config
from transfer_utils.errors import ConfigError


def test_check_scale() -> None:
    assert config.check_scale("ci") == "ci"
    assert config.check_scale("full") == "full"
    with pytest.raises(ConfigError, match="SCALE"):
        config.check_scale("small")


def test_seed_everything_is_reproducible() -> None:
    g1 = config.seed_everything(3)
    a = torch.rand(3), torch.rand(3, generator=g1)
    g2 = config.seed_everything(3)
    b = torch.rand(3), torch.rand(3, generator=g2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_pick_device_prefers_cuda_then_mps_then_cpu(monkeypatch) -> None:
    assert config.pick_device("cpu").type == "cpu"
    assert config.pick_device("meta").type == "meta"  # an explicit choice wins
    mps = torch.backends.mps
    for cuda, apple, expected in ((True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
        monkeypatch.setattr(mps, "is_available", lambda apple=apple: apple)
        assert config.pick_device().type == expected, (cuda, apple)


def test_offline_explicit_true_announces_and_sets_hub_offline(monkeypatch, capsys) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    state = config.resolve_offline(True)
    assert state and state.offline
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert "OFFLINE MODE is ON" in capsys.readouterr().out


def test_offline_auto_follows_environment(monkeypatch, capsys) -> None:
    monkeypatch.setenv("TL_OFFLINE", "1")
    state = config.resolve_offline("auto")
    assert state.offline and "TL_OFFLINE" in state.reason
    assert "OFFLINE MODE is ON" in capsys.readouterr().out


def test_offline_false_is_silent(capsys) -> None:
    assert not config.resolve_offline(False)
    assert capsys.readouterr().out == ""


def test_offline_rejects_nonsense() -> None:
    with pytest.raises(ConfigError):
        config.resolve_offline("maybe")  # type: ignore[arg-type]


def test_offline_reaches_libraries_imported_before_it(monkeypatch, capsys, hub_lookups, tmp_path) -> None:
    """transformers 5.x asks the hub for ``adapter_config.json`` even with ``local_files_only=True``;
    offline, that meant ~25 s of retries per model load. Once offline is resolved, loading an
    encoder by its hub id must not even resolve a host name — though ``huggingface_hub`` was imported
    (and read ``HF_HUB_OFFLINE``) before."""
    import huggingface_hub.constants as constants
    from transformers import AutoModel

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # as if imported before the switch
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # an empty Hugging Face cache
    config.resolve_offline(True)

    # A hub id: the adapter lookup comes first, so even a model the cache lacks exercised it.
    with pytest.raises(OSError):
        AutoModel.from_pretrained("sentence-transformers/all-MiniLM-L6-v2", local_files_only=True)
    assert hub_lookups == [], f"an offline model load looked up {hub_lookups}"
    # What the package passes offline (the mirror's folder): loaded, with no lookup either.
    AutoModel.from_pretrained(assets.pretrained_source("sentence-transformers/all-MiniLM-L6-v2", offline=True),
                              local_files_only=True)
    assert hub_lookups == [], f"an offline model load looked up {hub_lookups}"
