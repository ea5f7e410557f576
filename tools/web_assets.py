"""Files the rendered book loads in the browser, taken verified from a package registry's archive.

Book tooling, not part of the learner's package: only the book's Sphinx extension
(``book/_ext/mermaid_offline.py``) needs mermaid.js. Downloads go through
:func:`transfer_utils.assets.download` (atomic, sha256-checked) into the package's cache.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from pathlib import Path

from transfer_utils.assets import canonical_url, data_home, download, verify_file
from transfer_utils.errors import AssetUnavailableError, ChecksumMismatchError
from transfer_utils.fileio import atomic_path


@dataclass(frozen=True)
class WebAsset:
    """A file the rendered book needs in the browser, taken from a package registry's archive."""

    name: str
    url: str  #: the archive (an npm tarball)
    sha256: str  #: of that archive
    member: str  #: the file inside it
    license: str


WEB_ASSETS: dict[str, WebAsset] = {
    "mermaid": WebAsset(
        name="mermaid",
        url="https://registry.npmjs.org/mermaid/-/mermaid-11.12.1.tgz",
        sha256="3bd65ddefe97fb2e01d976a01d4078f8d773bfc56c6a75a9abf08b564ce0f8b2",
        member="package/dist/mermaid.min.js",  # the non-module bundle: it also runs from file:// pages
        license="MIT",
    ),
}


def fetch_web_asset(name: str) -> Path:
    """Download (once, verified, atomically) the archive of ``WEB_ASSETS[name]`` and return its
    extracted member, cached under ``data_home()/web/``."""
    asset = WEB_ASSETS[name]
    archive = data_home() / "downloads" / asset.url.rsplit("/", 1)[-1]
    final = data_home() / "web" / archive.name.removesuffix(".tgz") / Path(asset.member).name
    if final.is_file():
        return final
    if not archive.is_file():
        try:
            download(canonical_url(asset.url), archive, asset.sha256)
        except OSError as err:
            raise AssetUnavailableError(
                f"could not download {asset.url} ({err}). The book's diagrams need it at build time: "
                f"fetch it with network access, or place the file at {archive}") from None
    verify_file(archive, asset.sha256, f"archive {archive.name}")
    with tarfile.open(archive) as tar:
        member = tar.extractfile(asset.member)
        if member is None:
            raise ChecksumMismatchError(f"{archive.name} has no {asset.member}")
        with atomic_path(final) as part:
            part.write_bytes(member.read())
    return final
