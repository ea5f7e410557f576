"""Save, reload in a fresh process, predict on any image; Grad-CAM on ResNet-18/50."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from transfer_utils import data, explain, inference, models
from transfer_utils.data import Preprocessing
from transfer_utils.errors import ConfigError, DamagedFileError, DataError, SkippedImagesWarning


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, list[Path]]:
    torch.manual_seed(0)
    bb = models.create_backbone("resnet18", pretrained=False)
    model = models.replace_head(bb.model, 3)
    out = tmp_path_factory.mktemp("clf")
    inference.save_classifier(out / "model", model, architecture="resnet18",
                              class_names=["ant", "bee", "wasp"], preprocessing=bb.preprocessing)
    rng = np.random.default_rng(0)
    imgs = out / "imgs"
    imgs.mkdir()
    paths = []
    for name, mode, size in (("rgba.png", "RGBA", (300, 200)), ("grey.png", "L", (64, 64)),
                             ("tiny.jpg", "RGB", (10, 7)), ("huge.jpg", "RGB", (3000, 2000)),
                             ("cmyk.jpg", "CMYK", (120, 90))):
        arr = rng.integers(0, 255, (size[1], size[0], len(mode)), dtype=np.uint8)
        img = Image.fromarray(arr.squeeze(), mode=mode) if mode != "CMYK" else Image.new("CMYK", size, (10, 200, 30, 0))
        img.save(imgs / name)
        paths.append(imgs / name)
    return out / "model", paths


def test_reload_in_a_fresh_process_gives_identical_predictions(saved) -> None:
    folder, paths = saved
    here = inference.predict(inference.load_classifier(folder), paths)
    code = ("import json, sys; from transfer_utils import inference; "
            "clf = inference.load_classifier(sys.argv[1]); "
            "print(json.dumps([p.probabilities for p in inference.predict(clf, sys.argv[2:])]))")
    proc = subprocess.run([sys.executable, "-c", code, str(folder), *map(str, paths)],
                          capture_output=True, text=True, check=True)
    there = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(here) == len(paths) == len(there)
    for a, b in zip(here, there):
        assert a.probabilities == pytest.approx(b, abs=1e-6)
        assert a.label in ("ant", "bee", "wasp") and abs(sum(a.probabilities.values()) - 1) < 1e-5


def test_tta_averages_the_mirror_image(saved) -> None:
    folder, paths = saved
    clf = inference.load_classifier(folder)
    from transfer_utils.data import load_image

    x = clf.preprocessing.eval_transform()(load_image(paths[0]))[None]
    with torch.no_grad():
        expected = (clf.model(x).softmax(-1) + clf.model(torch.flip(x, dims=[3])).softmax(-1))[0] / 2
    tta = inference.predict(clf, paths[:1], tta=True)[0].probabilities
    plain = inference.predict(clf, paths[:1])[0].probabilities
    assert list(tta.values()) == pytest.approx(expected.tolist(), abs=1e-6)
    assert list(tta.values()) != pytest.approx(list(plain.values()), abs=1e-6)


def test_bad_inputs(saved, tmp_path: Path) -> None:
    folder, _ = saved
    clf = inference.load_classifier(folder)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    with pytest.raises(DataError, match="bad.jpg"):
        inference.predict(clf, [bad])
    with pytest.raises(DamagedFileError, match="manifest.json is missing.*not written by save_classifier"):
        inference.load_classifier(tmp_path)
    (tmp_path / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    (tmp_path / "manifest.json").write_text("{broken")
    with pytest.raises(DamagedFileError, match="manifest.json is damaged.*save_classifier"):
        inference.load_classifier(tmp_path)
    with pytest.raises(ConfigError, match="outputs 3 classes but the data has 2"):
        inference.save_classifier(tmp_path / "x", clf.model, architecture="resnet18",
                                  class_names=["a", "b"], preprocessing=clf.preprocessing)


def test_a_damaged_saved_classifier_is_named(saved, tmp_path: Path) -> None:
    folder, _ = saved
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    weights, config = copy / "model.safetensors", copy / "manifest.json"
    good = weights.read_bytes()
    for cut in (100, len(good) // 2):
        weights.write_bytes(good[:cut])
        with pytest.raises(DamagedFileError, match=f"{weights} is damaged.*save_classifier"):
            inference.load_classifier(copy)
    weights.write_bytes(good)
    meta = json.loads(config.read_text())
    config.write_text(json.dumps({**meta, "class_names": ["ant", "bee"]}))  # from another save
    with pytest.raises(DamagedFileError, match=r"fc\.weight is \(3, 512\) in the file, \(2, 512\) in the model"):
        inference.load_classifier(copy)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_grad_cam_on_layer4(arch: str) -> None:
    torch.manual_seed(0)
    model = models.replace_head(models.create_backbone(arch, pretrained=False).model, 2)
    models.freeze(model, until="all")
    x = torch.randn(2, 3, 96, 128)
    cam = explain.grad_cam(model, x, model.layer4)
    assert cam.shape == (2, 96, 128) and float(cam.min()) >= 0 and float(cam.max()) <= 1 + 1e-6
    assert not model.layer4._forward_hooks, "hooks must be removed"
    other = explain.grad_cam(model, x, model.layer4, class_index=1)
    assert other.shape == cam.shape


def test_grad_cam_points_at_the_evidence() -> None:
    """A model that scores class 1 by how bright the image is: the map peaks on the bright patch."""
    conv = nn.Conv2d(3, 4, 3, padding=1)
    with torch.no_grad():
        conv.weight.fill_(0.1)
        conv.bias.zero_()
    head = nn.Linear(4, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[0.0] * 4, [1.0] * 4]))
        head.bias.zero_()
    model = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)
    x = torch.zeros(1, 3, 32, 32)
    x[:, :, 2:10, 20:28] = 1.0
    cam = explain.grad_cam(model, x, conv, class_index=1)[0]
    row, col = divmod(int(cam.argmax()), 32)
    assert 2 <= row < 10 and 20 <= col < 28
    assert float(cam[25, 5]) < 0.05


def test_a_chapter3_model_ships_and_reloads_with_identical_predictions(tmp_path: Path) -> None:
    # Chapter 3's cheapest good model: a frozen trunk's standardised features + a linear head, trained
    # with scikit-learn or torch. save_classifier used to refuse it ("no linear head named 'fc'").
    from sklearn.linear_model import LogisticRegression

    from transfer_utils.data import load_image

    torch.manual_seed(0)
    bb = models.create_backbone("resnet18", pretrained=False)
    trunk = models.feature_extractor(bb.model).eval()
    rng = np.random.default_rng(0)
    paths = []
    for i in range(9):
        paths.append(tmp_path / f"img{i}.png")
        Image.fromarray(rng.integers(0, 255, (40 + 7 * i, 48, 3), dtype=np.uint8)).save(paths[-1])
    x = torch.stack([bb.preprocessing.eval_transform()(load_image(p)) for p in paths])
    with torch.no_grad():
        z = trunk(x)
    mu, sigma = z.mean(0), z.std(0) + 1e-6
    y = np.arange(9) % 3
    logreg = LogisticRegression(C=10.0, max_iter=2000).fit(((z - mu) / sigma).numpy(), y)
    want = logreg.predict_proba(((z - mu) / sigma).numpy())
    names = ["ant", "bee", "wasp"]
    inference.save_classifier(tmp_path / "logreg", models.attach_head(bb.model, logreg, mu, sigma),
                              architecture="resnet18", class_names=names, preprocessing=bb.preprocessing)
    got = inference.predict(inference.load_classifier(tmp_path / "logreg"), paths)
    assert np.allclose([[p.probabilities[c] for c in names] for p in got], want, atol=1e-5)
    assert [p.label for p in got] == [names[k] for k in want.argmax(1)]
    # a torch head inside FrozenBackboneClassifier is saved as it is
    head = nn.Linear(z.shape[1], 3)
    clf = models.FrozenBackboneClassifier(trunk, head, mu, sigma).eval()
    with torch.no_grad():
        in_memory = clf(x).softmax(-1)
    inference.save_classifier(tmp_path / "torch", clf, architecture="resnet18", class_names=names,
                              preprocessing=bb.preprocessing)
    got = inference.predict(inference.load_classifier(tmp_path / "torch"), paths)
    assert torch.allclose(torch.tensor([[p.probabilities[c] for c in names] for p in got]), in_memory, atol=1e-5)
    # what cannot be shipped faithfully is refused before anything is written
    with pytest.raises(ConfigError, match="do not fit architecture 'resnet50'"):
        inference.save_classifier(tmp_path / "wrong", clf, architecture="resnet50", class_names=names,
                                  preprocessing=bb.preprocessing)
    assert not (tmp_path / "wrong").exists()
    with pytest.raises(ConfigError, match=r"classes \[0, 2\]"):
        models.attach_head(bb.model, LogisticRegression().fit(z.numpy(), y * (y != 1)), mu, sigma)


def _tiny_classifier(interpolation: str = "bicubic") -> inference.Classifier:
    """A small random network: predict's reading and preprocessing are what is under test."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 2))
    prep = Preprocessing(21, 26, interpolation, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    return inference.Classifier(model.eval(), "tiny", ["a", "b"], prep)


def test_predict_reads_a_16_bit_image_like_its_8_bit_version(tmp_path: Path) -> None:
    clf = _tiny_classifier()
    rng = np.random.default_rng(0)
    a16 = (np.linspace(0, 65535, 64)[None, :] * np.ones((48, 1)) * 0.5
           + rng.integers(0, 30000, (48, 64))).astype(np.uint16)
    Image.fromarray(a16).save(tmp_path / "deep.png")
    Image.fromarray(np.rint(a16 / 257).astype(np.uint8)).save(tmp_path / "flat.png")
    with Image.open(tmp_path / "deep.png") as deep:
        # a 16-bit file: Pillow 10.0.0 (compat/min.txt) opens it as "I", the pinned Pillow as "I;16"
        assert deep.mode in ("I;16", "I") and np.asarray(deep).max() > 255
        deep.load()
        p16, p8, in_memory = inference.predict(clf, [tmp_path / "deep.png", tmp_path / "flat.png", deep])
    assert list(p16.probabilities.values()) == pytest.approx(list(p8.probabilities.values()), abs=1e-5)
    assert list(in_memory.probabilities.values()) == pytest.approx(list(p8.probabilities.values()), abs=1e-5)


def test_predict_can_skip_unreadable_images_and_says_which(tmp_path: Path) -> None:
    clf = _tiny_classifier()
    rng = np.random.default_rng(1)
    good = tmp_path / "good.png"
    Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(good)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    img = Image.fromarray(rng.integers(0, 255, (30, 30, 3), dtype=np.uint8))
    with pytest.raises(DataError, match="bad.jpg"):
        inference.predict(clf, [good, bad, img])
    with pytest.warns(SkippedImagesWarning, match="bad.jpg"):
        out = inference.predict(clf, [good, bad, img], on_error="skip", batch_size=2)
    assert [(p.index, p.source) for p in out] == [(0, str(good)), (2, "<image #2>")]
    assert [(s.index, s.path) for s in out.skipped] == [(1, str(bad))]
    alone = inference.predict(clf, [good, img])
    assert [p.probabilities for p in out] == [p.probabilities for p in alone], "each prediction stays with its image"
    with pytest.warns(SkippedImagesWarning):
        assert list(inference.predict(clf, [bad], on_error="skip")) == []
    with pytest.raises(DataError, match="list of paths"):
        inference.predict(clf, str(good))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="batch_size"):
        inference.predict(clf, [good], batch_size=0)
    with pytest.raises(ConfigError, match="on_error"):
        inference.predict(clf, [good], on_error="ignore")


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_training_pixels_and_predict_agree(tmp_path: Path, interpolation: str) -> None:
    """decode_images + tensor_transform (training, evaluation) and predict (serving) give the
    same network input, so the same probabilities, for every file."""
    clf = _tiny_classifier(interpolation)
    rng = np.random.default_rng(2)
    for cls, sizes in (("a", [(61, 45), (45, 61)]), ("b", [(77, 40), (40, 33)])):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i, (w, h) in enumerate(sizes):
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / "imgs" / cls / f"{i}.jpg")
    folder = data.ImageFolderDataset(tmp_path / "imgs")
    decoded = data.decode_images(folder, preprocessing=clf.preprocessing)
    val = decoded.with_transform(clf.preprocessing.tensor_transform(train=False))
    with torch.no_grad():
        trained_view = clf.model(torch.stack([val[i][0] for i in range(len(val))])).softmax(-1)
    served = inference.predict(clf, [p for p, _ in folder.samples])
    assert torch.allclose(trained_view, torch.tensor([list(p.probabilities.values()) for p in served]), atol=1e-5)
