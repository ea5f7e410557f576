"""transfer_utils.text: truncation strategies, padded batches, text fine-tuning, ship and reload."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from transfer_utils import evaluate, features, models, recipes, text
from transfer_utils.errors import ConfigError, DamagedFileError, DataError


@pytest.fixture(scope="module")
def tok():
    tokenizer, _, _ = models.create_text_encoder("sentence-transformers/all-MiniLM-L6-v2", offline=True)
    return tokenizer


def _tiny_bert(tok, seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128, num_labels=2)
    return BertForSequenceClassification(cfg)


def test_truncation_strategies_keep_the_right_pieces() -> None:
    ids = list(range(100))
    assert text.truncate_ids(ids, 8, "head") == list(range(8))
    assert text.truncate_ids(ids, 8, "tail") == list(range(92, 100))
    assert text.truncate_ids(ids, 8, "head+tail") == [0, 1] + list(range(94, 100))
    assert text.truncate_ids(ids[:5], 8, "tail") == ids[:5]  # short texts are untouched
    with pytest.raises(ConfigError, match="truncation must be one of"):
        text.truncate_ids(ids, 8, "middle")


def test_encode_head_equals_the_tokenizer_and_pads_on_the_right(tok) -> None:
    texts = ["A gem of a film.", "", "word " * 300, "tedious and far too long"]
    ours = text.encode(tok, texts, max_length=32)
    theirs = tok(texts, truncation=True, max_length=32, padding=True, return_tensors="pt")
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        assert torch.equal(ours[key], theirs[key]), key
    mask = ours["attention_mask"]
    assert mask.shape == (4, 32)
    for row in mask:  # ones, then zeros: right padding
        n = int(row.sum())
        assert row[:n].all() and not row[n:].any()
    tail = text.encode(tok, ["one two three " + "filler " * 100 + "the ending"], max_length=16, truncation="tail")
    pieces = tok.convert_ids_to_tokens(tail["input_ids"][0].tolist())
    assert pieces[0] == "[CLS]" and pieces[-1] == "[SEP]" and pieces[-3:-1] == ["the", "ending"]
    both = text.encode(tok, ["one two three " + "filler " * 100 + "the ending"], max_length=16, truncation="head+tail")
    pieces = tok.convert_ids_to_tokens(both["input_ids"][0].tolist())
    assert pieces[1:4] == ["one", "two", "three"] and pieces[-3:-1] == ["the", "ending"] and len(pieces) == 16
    with pytest.raises(DataError, match="list of texts"):
        text.encode(tok, "a single string")


def test_collator_serves_fit_and_the_trainer(tok) -> None:
    batch = [("good", 1), ("a much longer and rather bad text", 0)]
    inputs, labels = text.TextCollator(tok, max_length=8)(batch)
    assert labels.tolist() == [1, 0] and inputs["input_ids"].shape == (2, 8)
    as_dict = text.TextCollator(tok, max_length=8, as_dict=True)(batch)
    assert set(as_dict) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
    with pytest.raises(DataError, match="3 texts but 2 labels"):
        text.TextClassificationDataset(["a", "b", "c"], [0, 1])


def test_finetune_trains_a_text_classifier_with_layerwise_lrs(tok) -> None:
    words = {1: ["wonderful", "superb", "moving", "brilliant"], 0: ["dull", "awful", "tedious", "boring"]}
    g = torch.Generator().manual_seed(0)
    texts, labels = [], []
    for i in range(96):
        y = i % 2
        picks = torch.randint(0, 4, (3,), generator=g).tolist()
        texts.append("the film was " + " and ".join(words[y][k] for k in picks))
        labels.append(y)
    ds = text.TextClassificationDataset(texts, labels)
    model = _tiny_bert(tok)
    collate = text.TextCollator(tok, max_length=24)
    cfg = recipes.FinetuneConfig(epochs=6, batch_size=16, head_lr=3e-3, backbone_lr=3e-3, lr_decay=0.5,
                                 decay="linear", weight_decay=0.0, clip_grad_norm=1.0)
    lrs = recipes.stage_learning_rates(model, cfg)
    assert set(lrs) == {"embeddings", "encoder.0", "encoder.1", "head"} and lrs["head"] == 3e-3
    assert lrs["encoder.1"] == 3e-3 and lrs["embeddings"] == pytest.approx(3e-3 * 0.25)
    history = recipes.finetune(model, ds, ds, cfg, collate_fn=collate)
    assert history.epochs[-1].lr == 0.0  # linear decay ends at zero
    result = evaluate.evaluate(model, DataLoader(ds, batch_size=32, collate_fn=collate))
    assert result.accuracy == 1.0


def test_set_dropout(tok) -> None:
    model = _tiny_bert(tok)
    n = text.set_dropout(model, 0.0)
    assert n > 0 and all(m.p == 0.0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    with pytest.raises(ConfigError):
        text.set_dropout(model, 1.0)


def test_pooled_embeddings_equal_unpadded_one_by_one(tok) -> None:
    """Batched (sorted, padded) embeddings equal each text's own unpadded forward pass, in input order."""
    encoder = _tiny_bert(tok).bert.eval()
    texts = ["a long and rambling sentence about a film", "short", "", "medium length text"]
    pooled = text.pooled_embeddings(tok, encoder, texts, max_length=16, batch_size=2)
    with torch.no_grad():
        for i, t in enumerate(texts):
            hidden = encoder(**tok([t], truncation=True, max_length=16, return_tensors="pt")).last_hidden_state[0]
            assert torch.allclose(pooled["cls"][i], hidden[0], atol=1e-5)
            assert torch.allclose(pooled["mean"][i], hidden.mean(0), atol=1e-5)
    # embed_texts is pooled_embeddings (one code path), here with the same batches. Equality up to
    # float32 rounding, not bitwise: the BLAS library may pick another kernel between two calls
    # (seen on a loaded machine and with transformers 4.44), which changes the last bits only.
    cls = features.embed_texts(tok, encoder, texts, pooling="cls", max_length=16, batch_size=2)
    torch.testing.assert_close(cls, pooled["cls"], rtol=1e-5, atol=1e-6)


@pytest.fixture()
def shipped(tok, tmp_path: Path) -> Path:
    model = _tiny_bert(tok, seed=3)
    return text.save_text_classifier(tmp_path / "clf", model, tok, label_names=("negative", "positive"),
                                     max_length=16, truncation="head+tail", base_model="tiny-bert")


def test_predict_batched_equals_one_by_one_and_reloads_in_a_fresh_process(shipped: Path) -> None:
    clf = text.load_text_classifier(shipped)
    assert (clf.label_names, clf.max_length, clf.truncation) == (("negative", "positive"), 16, "head+tail")
    texts = ["fine", "an utterly charming film with a great cast", "no", "word " * 50, "bof, pas terrible"]
    batched = text.predict_texts(clf, texts, batch_size=4)
    single = [text.predict_texts(clf, [t])[0] for t in texts]
    for a, b in zip(batched, single):  # padding must not change any prediction
        assert a.label == b.label and a.probability == pytest.approx(b.probability, abs=1e-5)
    assert [p.truncated for p in batched] == [False, False, False, True, False]
    assert batched[3].n_pieces == 50
    code = ("import json,sys; from transfer_utils import text; "
            "c=text.load_text_classifier(sys.argv[1]); "
            "print(json.dumps([p.probabilities for p in text.predict_texts(c, json.loads(sys.argv[2]))]))")
    out = subprocess.run([sys.executable, "-c", code, str(shipped), json.dumps(texts)], capture_output=True,
                         text=True, check=True)
    fresh = json.loads(out.stdout.strip().splitlines()[-1])
    for a, b in zip(batched, fresh):
        assert a.probabilities == pytest.approx(b, abs=1e-5)


def test_predict_rejects_bad_input_clearly(shipped: Path) -> None:
    clf = text.load_text_classifier(shipped)
    with pytest.raises(DataError, match=r"position\(s\) \[1, 2\].*empty"):
        text.predict_texts(clf, ["ok", "", "   "])
    with pytest.raises(DataError, match="list of texts"):
        text.predict_texts(clf, "a bare string")
    with pytest.raises(DataError, match="text #1 is not valid UTF-8"):
        text.predict_texts(clf, [b"fine", "naïve".encode("latin-1")])
    emoji = text.predict_texts(clf, ["🎬🍿", "fine"])
    assert emoji[0].unknown_fraction == 1.0 and emoji[1].unknown_fraction == 0.0


def test_load_refuses_what_it_should_not_unpickle(shipped: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not written by save_text_classifier"):
        text.load_text_classifier(tmp_path)
    (shipped / "model.safetensors").rename(shipped / "pytorch_model.bin")
    with pytest.raises(DataError, match="refusing to unpickle"):
        text.load_text_classifier(shipped)


def _drop_the_head(weights: Path) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(weights)
    del state["classifier.weight"]
    save_file(state, weights, metadata={"format": "pt"})


@pytest.mark.parametrize("damage, file, message", [
    ("weights cut short", "model.safetensors", "is damaged"),
    ("weights without the head", "model.safetensors", "lacks 1 of the tensors config.json describes"),
    ("settings cut short", "manifest.json", "is damaged"),
    ("settings with a third label", "manifest.json", "names 3 labels but the model has 2 outputs"),
    ("tokenizer cut short", "", "tokenizer files in .* are damaged"),
])
def test_a_damaged_text_classifier_is_named(shipped: Path, damage: str, file: str, message: str) -> None:
    if damage == "weights cut short":
        (shipped / file).write_bytes((shipped / file).read_bytes()[:5000])
    elif damage == "weights without the head":
        _drop_the_head(shipped / file)  # transformers alone would start the head from random values
    elif damage == "settings cut short":
        (shipped / file).write_text((shipped / file).read_text()[:25])
    elif damage == "settings with a third label":
        meta = json.loads((shipped / file).read_text())
        (shipped / file).write_text(json.dumps({**meta, "class_names": ["negative", "positive", "mixed"]}))
    else:
        tokenizer = shipped / "tokenizer.json"
        tokenizer.write_bytes(tokenizer.read_bytes()[:2000])
    with pytest.raises(DamagedFileError, match=f"{shipped / file if file else ''}.*{message}") as info:
        text.load_text_classifier(shipped)
    assert "save_text_classifier" in str(info.value)


def test_save_checks_label_names(tok, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="3 label names for a model with 2 outputs"):
        text.save_text_classifier(tmp_path, _tiny_bert(tok), tok, label_names=("a", "b", "c"), max_length=8)


def test_text_dataset_checks_texts_and_labels_where_they_enter(tok) -> None:
    ds = text.TextClassificationDataset(["good", "café".encode(), "bad"], [1, 1.0, np.int64(0)], num_labels=2)
    assert ds.texts == ["good", "café", "bad"] and ds.labels == [1, 1, 0]   # bytes decoded, whole floats kept
    for labels, message in (([1, 0.7, 0], r"labels\[1\] is 0.7"), ([1, "1", 0], r"labels\[1\] is '1'"),
                            ([1, None, 0], r"labels\[1\] is None"), ([1, 2, 0], r"labels\[1\] is 2.*\[0, 2\)")):
        with pytest.raises(DataError, match=message):
            text.TextClassificationDataset(["a", "b", "c"], labels, num_labels=2)
    for texts, message in ((["a", None, "c"], "text #1 is missing"), (["a", 3, "c"], "text #1 must be str"),
                           (["a", " ", "c"], r"position\(s\) \[1\]"),
                           (["a", b"\xe9t\xe9", "c"], "text #1 is not valid UTF-8")):
        with pytest.raises(DataError, match=message):
            text.TextClassificationDataset(texts, [0, 1, 0])
    with pytest.raises(DataError, match=r"batch labels\[1\] is 0.7"):   # was silently class 0
        text.TextCollator(tok)([("a", 0), ("b", 0.7)])


def test_trainer_with_a_label_the_model_has_no_output_for_stops_with_a_clear_error(tok, tmp_path: Path) -> None:
    # Chapter 6's Trainer path: a label >= num_labels used to surface as an IndexError from
    # torch.nn.functional (a device-side assert on a GPU), after the run had started.
    from transformers import Trainer, TrainingArguments

    texts, labels = ["good", "bad", "fine", "awful"], [1, 0, 2, 0]
    with pytest.raises(DataError, match=r"labels\[2\] is 2.*\[0, 2\)"):
        text.TextClassificationDataset(texts, labels, num_labels=2)
    model = _tiny_bert(tok)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=4, use_cpu=True,
                             save_strategy="no", logging_strategy="no", report_to="none", disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=text.TextClassificationDataset(texts, labels),
                      data_collator=text.TextCollator(tok, max_length=8, as_dict=True,
                                                      num_labels=model.config.num_labels))
    with pytest.raises(DataError, match=r"batch labels\[\d\] is 2.*\[0, 2\)"):
        trainer.train()


def test_save_is_atomic_and_loses_nothing(tok, shipped: Path, monkeypatch) -> None:
    before = text.predict_texts(text.load_text_classifier(shipped), ["fine", "dull"])
    other = _tiny_bert(tok, seed=7)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(type(tok), "save_pretrained", broken)
    with pytest.raises(OSError, match="disk full"):   # fails after the weights were written
        text.save_text_classifier(shipped, other, tok, label_names=("negative", "positive"), max_length=16)
    with pytest.raises(OSError, match="disk full"):
        text.save_text_classifier(shipped.parent / "new", other, tok, label_names=("no", "yes"), max_length=16)
    monkeypatch.undo()
    after = text.predict_texts(text.load_text_classifier(shipped), ["fine", "dull"])
    assert [p.probabilities for p in after] == [p.probabilities for p in before]   # the earlier save is intact
    assert sorted(p.name for p in shipped.parent.iterdir()) == [shipped.name]       # no half-written folder left
    # a successful save replaces an earlier one as a whole; a folder of other files is refused
    text.save_text_classifier(shipped, other, tok, label_names=("no", "yes"), max_length=16)
    assert text.load_text_classifier(shipped).label_names == ("no", "yes")
    assert sorted(p.name for p in shipped.parent.iterdir()) == [shipped.name]
    (shipped / "README.md").write_text("my notes")   # an earlier save with a file of the user's in it
    with pytest.raises(ConfigError, match=r"README.md"):
        text.save_text_classifier(shipped, other, tok, label_names=("no", "yes"), max_length=16)
    assert (shipped / "README.md").read_text() == "my notes"
    assert sorted(p.name for p in shipped.parent.iterdir()) == [shipped.name]
    (shipped.parent / "notes").mkdir()
    (shipped.parent / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not an earlier save_text_classifier"):
        text.save_text_classifier(shipped.parent / "notes", other, tok, label_names=("no", "yes"), max_length=16)
    assert (shipped.parent / "notes" / "todo.txt").read_text() == "keep me"
