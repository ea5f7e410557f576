"""The book's web assets (tooling in tools/, not in the learner's package)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tools import web_assets
from transfer_utils import assets
from transfer_utils.errors import ChecksumMismatchError


def test_web_asset_is_extracted_from_a_verified_archive(tmp_path: Path, monkeypatch) -> None:
    """The book's mermaid.js: the registry's tarball, checked, one member extracted atomically."""
    import io
    import tarfile

    payload = b"window.mermaid = {};\n"
    archive = tmp_path / "lib-1.0.0.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("package/dist/lib.min.js")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    good = web_assets.WebAsset("lib", archive.as_uri(), assets.sha256_file(archive), "package/dist/lib.min.js", "MIT")
    monkeypatch.setenv("TL_DATA_HOME", str(tmp_path / "home"))
    monkeypatch.setitem(web_assets.WEB_ASSETS, "lib", dataclasses.replace(good, sha256="0" * 64))
    with pytest.raises(ChecksumMismatchError):
        web_assets.fetch_web_asset("lib")
    assert not list((tmp_path / "home").rglob("*.js")) and not list((tmp_path / "home").rglob("*.tgz"))
    monkeypatch.setitem(web_assets.WEB_ASSETS, "lib", good)
    js = web_assets.fetch_web_asset("lib")
    assert js.read_bytes() == payload and js.name == "lib.min.js"
    assert web_assets.WEB_ASSETS["mermaid"].member.endswith("mermaid.min.js")
