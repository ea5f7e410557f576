"""MobileNetV2 offline: the mirror's feature layers (another implementation's names) are mapped by
position onto torchvision's ``mobilenet_v2().features``, saved as safetensors, and loaded by
``create_backbone`` with a printed note; a mirror that does not fit is refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from transfer_utils import assets, models
from transfer_utils.errors import ChecksumMismatchError


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TL_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # torchvision's own file is not there
    return tmp_path


def test_seeded_features_load_offline_and_match_the_mirror(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = assets.seed_mobilenet_v2_features()
    assert out == assets.mirrored_features_file("mobilenet_v2") and out.suffix == ".safetensors"
    asset = assets.MODELS["mobilenet_v2"]
    mirror = assets._package_file(asset.mirror_package or "", asset.mirror_file or "")
    src = list(torch.load(mirror, map_location="cpu", weights_only=True).values())

    bb = models.create_backbone("mobilenet_v2", offline=True)
    assert "offline mirror" in capsys.readouterr().out and "offline mirror" in bb.source
    loaded = [v for k, v in bb.model.state_dict().items() if k.startswith("features.")]
    assert len(loaded) == len(src) and all(torch.equal(a, b) for a, b in zip(loaded, src))
    trunk = models.feature_extractor(bb.model).eval()
    with torch.no_grad():
        assert trunk(torch.randn(2, 3, 224, 224)).shape == (2, bb.num_features) == (2, 1280)


def test_offline_without_the_seeded_file_is_an_actionable_error(home: Path) -> None:
    with pytest.raises(models.AssetUnavailableError, match="assets seed"):
        models.create_backbone("mobilenet_v2", offline=True)


def test_a_mirror_that_does_not_fit_is_refused(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = home / "wrong.pt"
    torch.save(torchvision.models.mobilenet_v3_small().features.state_dict(), wrong)
    monkeypatch.setattr(assets, "_package_file", lambda package, relative: wrong)
    monkeypatch.setattr(assets, "verify_file", lambda *a, **k: None)
    with pytest.raises(ChecksumMismatchError, match="does not fit"):
        assets.seed_mobilenet_v2_features()
    assert not assets.mirrored_features_file("mobilenet_v2").exists()
