"""The one shipping format: image and text classifiers share manifest.json (with ``kind``), one
reader and one error type; the temperature is stored and applied; format-1 folders still load.
And the calibration helpers the chapters use with it (ECE against torchmetrics, the temperature)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.test_text import _tiny_bert
from transfer_utils import evaluate, inference, manifest, models, text
from transfer_utils.errors import ConfigError, DamagedFileError, TransferUtilsError

NAMES = ["ant", "bee", "wasp"]


@pytest.fixture(scope="module")
def tok():
    tokenizer, _, _ = models.create_text_encoder("sentence-transformers/all-MiniLM-L6-v2", offline=True)
    return tokenizer


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    bb = models.create_backbone("resnet18", pretrained=False)
    out = tmp_path_factory.mktemp("image") / "clf"
    return inference.save_classifier(out, models.replace_head(bb.model, 3), architecture="resnet18",
                                     class_names=NAMES, preprocessing=bb.preprocessing, temperature=2.5)


@pytest.fixture(scope="module")
def text_dir(tok, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("text") / "clf"
    return text.save_text_classifier(out, _tiny_bert(tok, seed=3), tok, label_names=("negative", "positive"),
                                     max_length=16, base_model="tiny-bert", temperature=0.5)


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 60, 3), dtype=np.uint8)).save(path)
    return path


def test_both_kinds_write_the_same_manifest(image_dir: Path, text_dir: Path) -> None:
    image, txt = (json.loads((d / "manifest.json").read_text()) for d in (image_dir, text_dir))
    for meta, kind in ((image, "image-classifier"), (txt, "text-classifier")):
        assert meta["kind"] == kind and meta["format_version"] == manifest.FORMAT_VERSION
        assert set(meta) == {"format_version", "kind", "class_names", "architecture", "preprocessing",
                             "temperature", "weights"}
    assert (image["class_names"], image["temperature"], image["preprocessing"]["input_size"]) == (NAMES, 2.5, 224)
    assert txt["preprocessing"] == {"max_length": 16, "truncation": "head"} and txt["temperature"] == 0.5
    for d in (image_dir, text_dir):  # weights as safetensors, no pickle, no settings file of the old formats
        names = {p.name for p in d.iterdir()}
        assert "model.safetensors" in names and not names & {"pytorch_model.bin", "classifier.json",
                                                             "text_classifier.json"}


def test_a_missing_manifest_is_the_same_error_for_either_kind(image_dir: Path, text_dir: Path,
                                                              tmp_path: Path) -> None:
    # Before the shared manifest: ConfigError for an image folder, DataError for a text folder.
    for load, src, writer in ((inference.load_classifier, image_dir, "save_classifier"),
                              (text.load_text_classifier, text_dir, "save_text_classifier")):
        copy = tmp_path / writer
        shutil.copytree(src, copy)
        (copy / "manifest.json").unlink()
        with pytest.raises(DamagedFileError, match=f"{copy / 'manifest.json'} is missing.*{writer}") as info:
            load(copy)
        assert info.value.path == copy / "manifest.json"
        with pytest.raises(DamagedFileError, match=f"{tmp_path / 'empty'}.*{writer}"):
            load(tmp_path / "empty")


@pytest.mark.parametrize("damage", ["not JSON", "a list", "no kind", "kind a list", "future version", "bad temperature",
                                    "no class names", "preprocessing incomplete"])
def test_a_damaged_manifest_is_named_with_the_remedy(image_dir: Path, tmp_path: Path, damage: str) -> None:
    copy = tmp_path / "clf"
    shutil.copytree(image_dir, copy)
    path = copy / "manifest.json"
    meta = json.loads(path.read_text())
    changed = {"not JSON": None, "a list": [meta], "no kind": {k: v for k, v in meta.items() if k != "kind"},
               "kind a list": {**meta, "kind": ["image-classifier"]},
               "future version": {**meta, "format_version": 99}, "bad temperature": {**meta, "temperature": -1},
               "no class names": {**meta, "class_names": []},
               "preprocessing incomplete": {**meta, "preprocessing": {"input_size": 224}}}[damage]
    path.write_text("{cut sho" if changed is None else json.dumps(changed))
    with pytest.raises(DamagedFileError, match=f"{path} is damaged.*save_classifier"):
        inference.load_classifier(copy)


def test_the_wrong_kind_is_refused_and_the_right_loader_named(image_dir: Path, text_dir: Path) -> None:
    with pytest.raises(DamagedFileError, match="'image-classifier', not a 'text-classifier'.*load_classifier"):
        text.load_text_classifier(image_dir)
    with pytest.raises(DamagedFileError, match="'text-classifier', not a 'image-classifier'.*load_text_classifier"):
        inference.load_classifier(text_dir)
    with pytest.raises(TransferUtilsError):  # one family for a notebook's except
        manifest.read_manifest(text_dir, "image-classifier")


def test_the_temperature_round_trips_and_predict_applies_it(image_dir: Path, text_dir: Path, photo: Path) -> None:
    clf = inference.load_classifier(image_dir)
    assert clf.temperature == 2.5
    x = clf.preprocessing.eval_transform()(Image.open(photo).convert("RGB"))[None]
    with torch.no_grad():
        logits = clf.model(x)[0]
    got = inference.predict(clf, [photo])[0]
    assert list(got.probabilities.values()) == pytest.approx((logits / 2.5).softmax(-1).tolist(), abs=1e-6)
    plain = inference.predict(inference.Classifier(clf.model, clf.architecture, clf.class_names, clf.preprocessing),
                              [photo])[0]
    assert plain.label == got.label and plain.probability > got.probability  # T > 1 softens, never relabels
    tclf = text.load_text_classifier(text_dir)
    assert tclf.temperature == 0.5
    batch = text.encode(tclf.tokenizer, ["a fine film"], max_length=16)
    with torch.no_grad():
        t_logits = tclf.model(**batch).logits[0]
    p = text.predict_texts(tclf, ["a fine film"])[0]
    assert list(p.probabilities.values()) == pytest.approx((t_logits / 0.5).softmax(-1).tolist(), abs=1e-5)
    with pytest.raises(ConfigError, match="temperature must be a finite number > 0"):
        inference.save_classifier(image_dir.parent / "bad", clf.model, architecture="resnet18", class_names=NAMES,
                                  preprocessing=clf.preprocessing, temperature=0.0)
    assert not (image_dir.parent / "bad").exists()


def test_format_1_folders_are_still_read(image_dir: Path, text_dir: Path, tmp_path: Path, photo: Path) -> None:
    image, txt = tmp_path / "image", tmp_path / "text"
    shutil.copytree(image_dir, image)
    shutil.copytree(text_dir, txt)
    meta = json.loads((image / "manifest.json").read_text())
    (image / "classifier.json").write_text(json.dumps({"format_version": 1, "architecture": "resnet18",
                                                      "class_names": NAMES, "preprocessing": meta["preprocessing"]}))
    (txt / "text_classifier.json").write_text(json.dumps({"label_names": ["negative", "positive"], "max_length": 16,
                                                          "truncation": "head", "base_model": "tiny-bert",
                                                          "format": 1}))
    for d in (image, txt):
        (d / "manifest.json").unlink()
    old = inference.load_classifier(image)
    assert (old.class_names, old.temperature) == (NAMES, 1.0)
    assert inference.predict(old, [photo])[0].label == inference.predict(inference.load_classifier(image_dir),
                                                                         [photo])[0].label
    old_text = text.load_text_classifier(txt)
    assert (old_text.label_names, old_text.max_length, old_text.temperature) == (("negative", "positive"), 16, 1.0)
    with pytest.raises(DamagedFileError, match="'text-classifier', not a 'image-classifier'"):
        inference.load_classifier(txt)
    # saving over a format-1 folder replaces it with a format-2 one
    inference.save_classifier(image, old.model, architecture="resnet18", class_names=NAMES,
                              preprocessing=old.preprocessing)
    assert sorted(p.name for p in image.iterdir()) == ["manifest.json", "model.safetensors"]


def test_a_failed_image_save_keeps_the_earlier_one(image_dir: Path, tmp_path: Path, monkeypatch) -> None:
    copy = tmp_path / "clf"
    shutil.copytree(image_dir, copy)
    before = {p.name: p.read_bytes() for p in copy.iterdir()}
    clf = inference.load_classifier(copy)

    def full_disk(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(inference, "save_file", full_disk)
    with pytest.raises(OSError, match="disk full"):
        inference.save_classifier(copy, clf.model, architecture="resnet18", class_names=["a", "b", "c"],
                                  preprocessing=clf.preprocessing)
    assert {p.name: p.read_bytes() for p in copy.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clf"]   # no staging folder left behind
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="not an earlier save_classifier"):
        inference.save_classifier(tmp_path / "notes", clf.model, architecture="resnet18", class_names=NAMES,
                                  preprocessing=clf.preprocessing)
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"


def test_ece_equals_torchmetrics() -> None:
    from torchmetrics.classification import MulticlassCalibrationError

    g = torch.Generator().manual_seed(0)
    for n, k, scale in ((500, 2, 3.0), (300, 5, 1.0), (7, 3, 0.5)):
        probs = (scale * torch.randn(n, k, generator=g)).softmax(-1)
        labels = torch.randint(0, k, (n,), generator=g)
        want = float(MulticlassCalibrationError(num_classes=k, n_bins=15, norm="l1")(probs, labels))
        assert evaluate.expected_calibration_error(probs, labels) == pytest.approx(want, abs=1e-6)
    r = evaluate.reliability(torch.tensor([[0.95, 0.05], [0.85, 0.15], [0.25, 0.75]]), [0, 1, 1], n_bins=10)
    assert r.lower.tolist() == pytest.approx([0.7, 0.8, 0.9]) and r.count.tolist() == [1, 1, 1]
    assert r.ece == pytest.approx((0.25 + 0.85 + 0.05) / 3)   # right at 0.75, wrong at 0.85, right at 0.95


def test_fit_temperature_recovers_the_temperature_that_made_the_labels() -> None:
    g = torch.Generator().manual_seed(0)
    logits = 4 * torch.randn(4000, 3, generator=g)
    labels = torch.multinomial((logits / 2.0).softmax(-1), 1, generator=g).flatten()   # the truth: T = 2
    t = evaluate.fit_temperature(logits, labels)
    assert t == pytest.approx(2.0, rel=0.1)
    before = evaluate.expected_calibration_error(logits.softmax(-1), labels)
    after = evaluate.expected_calibration_error((logits / t).softmax(-1), labels)
    assert after < before / 2
    assert torch.equal((logits / t).argmax(1), logits.argmax(1))   # accuracy never changes
    # all held-out examples right: the loss falls towards T = 0, the bound keeps T finite
    # (in float64 the loss is flat below about 0.1: any T there is as good)
    assert 0.05 <= evaluate.fit_temperature(torch.tensor([[5.0, 0.0], [0.0, 5.0]]), [0, 1]) < 0.2
