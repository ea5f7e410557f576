"""The feature cache: reused while nothing changed, recomputed when anything did."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn
from torchvision import transforms as T

from transfer_utils import data, features, models
from transfer_utils.errors import ConfigError, DataError, SkippedImagesWarning


def _dataset(root: Path) -> data.ImageFolderDataset:
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    return data.ImageFolderDataset(root, transform=T.Compose([T.ToTensor()]))


def _trunk() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def test_cache_reuse_and_invalidation(tmp_path: Path) -> None:
    ds, trunk, cache = _dataset(tmp_path / "imgs"), _trunk(), tmp_path / "cache"
    first = features.extract_features(trunk, ds, cache_dir=cache, tag="t")
    assert not first.from_cache and first.x.shape == (6, 4) and first.y.tolist() == [0, 0, 0, 1, 1, 1]
    again = features.extract_features(trunk, ds, cache_dir=cache, tag="t")
    assert again.from_cache and torch.equal(again.x, first.x) and again.key == first.key

    other_transform = ds.with_transform(T.Compose([T.ToTensor(), T.Normalize((0.5,) * 3, (0.5,) * 3)]))
    assert not features.extract_features(trunk, other_transform, cache_dir=cache, tag="t").from_cache

    with torch.no_grad():
        trunk[0].bias.add_(1.0)
    assert not features.extract_features(trunk, ds, cache_dir=cache, tag="t").from_cache

    path = ds.samples[0][0]
    Image.new("RGB", (20, 20), (1, 2, 3)).save(path)
    changed = features.extract_features(trunk, ds, cache_dir=cache, tag="t")
    assert not changed.from_cache
    assert not list(cache.glob("*.part"))


@pytest.mark.parametrize("keep", [0, 10, 0.5, -1])
def test_a_damaged_feature_cache_is_a_cache_miss(tmp_path: Path, keep: float) -> None:
    ds, trunk, cache = _dataset(tmp_path / "imgs"), _trunk(), tmp_path / "cache"
    first = features.extract_features(trunk, ds, cache_dir=cache, tag="t", progress=False)
    (path,) = cache.glob("t-*.safetensors")
    good = path.read_bytes()
    path.write_bytes(good[: int(len(good) * keep) if isinstance(keep, float) else keep])
    with pytest.warns(UserWarning, match=f"cache file .*{path.name} is damaged.*recomputing"):
        again = features.extract_features(trunk, ds, cache_dir=cache, tag="t", progress=False)
    assert not again.from_cache and torch.equal(again.x, first.x) and torch.equal(again.y, first.y)
    assert torch.equal(load_file(path)["x"], first.x), "the damaged file must be overwritten with the features"
    assert features.extract_features(trunk, ds, cache_dir=cache, tag="t", progress=False).from_cache
    assert not list(cache.glob("*.part"))


def test_a_cache_file_of_other_features_is_not_used(tmp_path: Path) -> None:
    ds, trunk, cache = _dataset(tmp_path / "imgs"), _trunk(), tmp_path / "cache"
    first = features.extract_features(trunk, ds, cache_dir=cache, tag="t", progress=False)
    (path,) = cache.glob("t-*.safetensors")
    other = features.extract_features(trunk, ds.subset([0, 1, 2]), cache_dir=tmp_path / "other", tag="t",
                                      progress=False)
    (other_path,) = (tmp_path / "other").glob("t-*.safetensors")
    path.write_bytes(other_path.read_bytes())  # e.g. copied in by hand under the wrong name
    with pytest.warns(UserWarning, match="holds other features"):
        again = features.extract_features(trunk, ds, cache_dir=cache, tag="t", progress=False)
    assert torch.equal(again.x, first.x) and len(other.x) == 3


def test_a_damaged_decoded_pixels_cache_is_a_cache_miss(tmp_path: Path) -> None:
    ds, cache = _dataset(tmp_path / "imgs"), tmp_path / "cache"
    first = data.decode_images(ds, 16, cache_dir=cache)
    (path,) = cache.glob("decoded-16px-*.safetensors")
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])
    with pytest.warns(UserWarning, match=f"{path.name} is damaged"):
        again = data.decode_images(ds, 16, cache_dir=cache)
    assert torch.equal(again.images, first.images) and again.targets == first.targets
    assert torch.equal(load_file(path)["x"], first.images)


def test_extraction_runs_in_eval_mode(tmp_path: Path) -> None:
    ds, trunk = _dataset(tmp_path / "imgs"), _trunk()
    trunk.train()
    before = trunk[1].running_mean.clone()
    features.extract_features(trunk, ds)
    assert torch.equal(trunk[1].running_mean, before), "BatchNorm statistics changed during extraction"


def test_mean_pool_ignores_padding() -> None:
    hidden = torch.tensor([[[1.0, 1.0], [3.0, 3.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert torch.equal(features.mean_pool(hidden, mask), torch.tensor([[2.0, 2.0]]))


@pytest.fixture(scope="module")
def minilm():
    tok, enc, _ = models.create_text_encoder("sentence-transformers/all-MiniLM-L6-v2", offline=True)
    return tok, enc


def test_embed_texts_keeps_input_order_and_handles_edge_cases(minilm) -> None:
    tok, enc = minilm
    texts = ["a long and rambling sentence about a film that goes on and on", "short", "", "medium length text"]
    batched = features.embed_texts(tok, enc, texts, batch_size=2)
    one_by_one = torch.cat([features.embed_texts(tok, enc, [t]) for t in texts])
    assert torch.allclose(batched, one_by_one, atol=1e-5)
    very_long = features.embed_texts(tok, enc, ["word " * 5000], max_length=32)
    assert very_long.shape == (1, 384) and torch.isfinite(very_long).all()
    with pytest.raises(DataError, match="text #1 is not valid UTF-8"):
        features.embed_texts(tok, enc, ["fine", "caf\xe9".encode("latin-1")])
    assert features.embed_texts(tok, enc, ["fine", "café".encode()]).shape == (2, 384)


def test_text_feature_cache(minilm, tmp_path: Path) -> None:
    tok, enc = minilm
    a = features.extract_text_features(tok, enc, ["good", "bad"], [1, 0], cache_dir=tmp_path, tag="x")
    b = features.extract_text_features(tok, enc, ["good", "bad"], [1, 0], cache_dir=tmp_path, tag="x")
    c = features.extract_text_features(tok, enc, ["good", "bad"], [1, 0], cache_dir=tmp_path, tag="x", pooling="cls")
    assert not a.from_cache and b.from_cache and not c.from_cache
    assert torch.equal(a.x, b.x) and not torch.allclose(a.x, c.x)


def test_text_features_need_one_label_per_text(minilm, tmp_path: Path) -> None:
    tok, enc = minilm
    for labels in ([1, 0, 1], [1]):
        with pytest.raises(DataError, match=rf"2 texts but {len(labels)} labels"):
            features.extract_text_features(tok, enc, ["good", "bad"], labels, cache_dir=tmp_path)
    # the old key zipped texts with labels: [1, 0, 1] then [1, 0] shared an entry and the second call
    # got the first call's three labels back. Each call now gets exactly the labels it passed.
    for labels in ([1, 0], [0, 1], [1.0, 1.0]):
        got = features.extract_text_features(tok, enc, ["good", "bad"], labels, cache_dir=tmp_path)
        assert got.y.tolist() == [int(v) for v in labels] and got.y.dtype == torch.int64 and len(got.x) == 2
    with pytest.raises(DataError, match=r"labels\[1\] is 0.7"):
        features.extract_text_features(tok, enc, ["good", "bad"], [1, 0.7])
    with pytest.raises(DataError, match=r"labels\[0\] is 'pos'.*not names"):
        features.extract_text_features(tok, enc, ["good", "bad"], ["pos", "neg"])
    with pytest.raises(DataError, match="text #0 is missing"):
        features.extract_text_features(tok, enc, [None, "bad"], [1, 0])
    with pytest.raises(DataError, match="wrap a single text"):
        features.extract_text_features(tok, enc, "good", [1, 0, 1, 1])   # would embed 4 characters


def test_text_feature_cache_key_covers_the_tokenizer(minilm, tmp_path: Path) -> None:
    # Same class, same vocabulary size, different ids: the old key (class name + vocabulary size)
    # served the lower-casing tokenizer's features to the case-keeping one.
    import copy

    from tokenizers import normalizers

    tok, enc = minilm
    cased = copy.deepcopy(tok)
    cased.backend_tokenizer.normalizer = normalizers.BertNormalizer(lowercase=False)
    assert tok("GREAT")["input_ids"] != cased("GREAT")["input_ids"] and len(tok) == len(cased)
    a = features.extract_text_features(tok, enc, ["GREAT film"], [1], cache_dir=tmp_path)
    b = features.extract_text_features(cased, enc, ["GREAT film"], [1], cache_dir=tmp_path)
    assert not b.from_cache and not torch.allclose(a.x, b.x)
    assert torch.equal(b.x, features.extract_text_features(cased, enc, ["GREAT film"], [1]).x)
    # a tokenizer call with truncation/padding does not change the key (no needless recomputation)
    tok(["a b c"], truncation=True, max_length=4, padding="max_length")
    assert features.extract_text_features(tok, enc, ["GREAT film"], [1], cache_dir=tmp_path).from_cache


def test_unreadable_images_stop_the_run_or_are_skipped_with_labels_aligned(tmp_path: Path) -> None:
    ds, trunk = _dataset(tmp_path / "imgs"), _trunk()
    clean = features.extract_features(trunk, ds, progress=False)
    bad = ds.samples[1][0]
    bad.write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"a/1\.png"):
        features.extract_features(trunk, ds, batch_size=2, progress=False)
    runs = [dict(batch_size=2, cache_dir=tmp_path / "c"), dict(batch_size=2, cache_dir=tmp_path / "c"),
            dict(batch_size=1, num_workers=2)]
    for i, kwargs in enumerate(runs):
        with pytest.warns(SkippedImagesWarning, match=r"a/1\.png"):
            got = features.extract_features(trunk, ds, on_error="skip", progress=False, **kwargs)
        assert got.from_cache == (i == 1)
        assert got.y.tolist() == [0, 0, 1, 1, 1]
        assert torch.allclose(got.x, clean.x[[0, 2, 3, 4, 5]], atol=1e-6), "each vector stays with its label"
        assert [(s.index, Path(s.path)) for s in got.skipped] == [(1, bad)]
    # The strict default never reuses the features of a skipping run.
    with pytest.raises(DataError, match=r"a/1\.png"):
        features.extract_features(trunk, ds, cache_dir=tmp_path / "c", batch_size=2, progress=False)


def test_extract_features_checks_its_arguments(tmp_path: Path) -> None:
    ds, trunk = _dataset(tmp_path / "imgs"), _trunk()
    with pytest.raises(ConfigError, match="batch_size"):
        features.extract_features(trunk, ds, batch_size=0)
    with pytest.raises(DataError, match="no images"):
        features.extract_features(trunk, ds.subset([]))
    with pytest.raises(ConfigError, match="num_workers"):
        features.extract_features(trunk, ds, num_workers=-1)
    with pytest.raises(ConfigError, match="on_error"):
        features.extract_features(trunk, ds, on_error="ignore")
    with pytest.raises(DataError, match="no transform"):
        features.extract_features(trunk, ds.with_transform(None))
    with pytest.raises(DataError, match="ImageFolderDataset or a TensorImageDataset"):
        features.extract_features(trunk, [(torch.zeros(3, 8, 8), 0)])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="nn.Module"):
        features.extract_features(lambda x: x, ds)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="is a file"):
        (tmp_path / "file").write_text("")
        features.extract_features(trunk, ds, cache_dir=tmp_path / "file")


def test_the_cache_key_sees_which_layers_a_wrapper_hooks(tmp_path) -> None:
    """Two wrappers with the same weights that pool different layers (through forward hooks, as
    chapter 3's per-stage features do) must not share cached features: the old key hashed the
    weights only and returned the first layout's features for the second."""
    from torch import nn

    from transfer_utils.cache import model_fingerprint

    class Pools(nn.Module):
        def __init__(self, net: nn.Sequential, hooked: list[int]) -> None:
            super().__init__()
            self.net, self.outs = net, []
            for i in hooked:
                net[i].register_forward_hook(lambda m, inp, out: self.outs.append(out))

        def forward(self, x):
            self.outs.clear()
            self.net(x)
            return torch.cat(self.outs, dim=1)

    def net() -> nn.Sequential:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))

    assert model_fingerprint(net()) == model_fingerprint(net())          # same model, same key
    assert model_fingerprint(Pools(net(), [0, 2])) != model_fingerprint(Pools(net(), [2]))
