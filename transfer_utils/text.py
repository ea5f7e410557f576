"""Sentiment classification with BERT-family encoders, the pieces chapter 6 builds.

* :func:`truncate_ids` / :func:`encode`: word pieces → ``[CLS] … [SEP]`` with a truncation
  strategy (``"head"``, ``"tail"`` or ``"head+tail"``) and right padding with an attention mask.
* :class:`TextClassificationDataset` + :class:`TextCollator`: ``(text, label)`` pairs batched with
  *dynamic* padding (each batch is padded to its own longest text), for a plain PyTorch loop
  (:func:`~transfer_utils.recipes.finetune`) and for the Hugging Face ``Trainer`` alike.
* :func:`pooled_embeddings`: the ``[CLS]`` vector and the mean of the token vectors, from one pass.
* :func:`save_text_classifier` / :func:`load_text_classifier` / :func:`predict_texts`: ship a
  fine-tuned model in the book's one shipping format (:mod:`~transfer_utils.manifest`:
  safetensors, tokenizer, ``manifest.json`` of kind ``"text-classifier"``) and classify new
  texts, with clear errors for bad input.

Example::

    tok, model, _ = create_text_classifier("sentence-transformers/all-MiniLM-L6-v2", 2, offline=True)
    collate = TextCollator(tok, max_length=64)
    inputs, labels = collate([("a gem of a film", 1), ("tedious", 0)])
    logits = model(**inputs).logits
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from .batches import to_device
from .data import as_labels, ensure_text
from .errors import ConfigError, DamagedFileError, DataError
from .manifest import (
    MANIFEST_FILE,
    WEIGHTS_FILE,
    Manifest,
    check_temperature,
    read_manifest,
    write_classifier_folder,
)

#: Which word pieces to keep when a text is longer than ``max_length``.
TRUNCATION_STRATEGIES = ("head", "tail", "head+tail")
#: The settings file of a shipped text classifier: the one manifest of every shipped classifier.
META_FILE = MANIFEST_FILE
KIND = "text-classifier"


# ----------------------------------------------------------------------------------------------
# Tokenising with a truncation strategy
# ----------------------------------------------------------------------------------------------


def truncate_ids(ids: Sequence[int], max_tokens: int, strategy: str = "head") -> list[int]:
    """Keep at most ``max_tokens`` ids: the first ones (``"head"``), the last ones (``"tail"``),
    or the first quarter and the last three quarters of the budget (``"head+tail"``; Sun et al.
    2019 kept 128 + 382 of BERT's 510 for IMDB)."""
    if strategy not in TRUNCATION_STRATEGIES:
        raise ConfigError(f"truncation must be one of {TRUNCATION_STRATEGIES}, got {strategy!r}")
    if max_tokens < 1:
        raise ConfigError(f"max_tokens must be >= 1, got {max_tokens}")
    ids = list(ids)
    if len(ids) <= max_tokens:
        return ids
    if strategy == "head":
        return ids[:max_tokens]
    if strategy == "tail":
        return ids[-max_tokens:]
    n_head = max_tokens // 4
    return ids[:n_head] + ids[len(ids) - (max_tokens - n_head):]


def _special_ids(tokenizer: Any) -> tuple[int, int, int]:
    cls, sep, pad = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
    if cls is None or sep is None or pad is None:
        raise ConfigError(f"{type(tokenizer).__name__} has no [CLS]/[SEP]/[PAD] tokens: "
                          "encode() is written for BERT-family tokenizers")
    return cls, sep, pad


def word_pieces(tokenizer: Any, texts: Sequence[str | bytes]) -> list[list[int]]:
    """The word-piece ids of each text, without special tokens and without truncation."""
    if isinstance(texts, (str, bytes)):
        raise DataError("pass a list of texts, not a single text (iterating it would split it into characters); "
                        "wrap it as [text]")
    clean = [ensure_text(t, where=f"text #{i}") for i, t in enumerate(texts)]
    return tokenizer(clean, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]


def encode(tokenizer: Any, texts: Sequence[str | bytes], *, max_length: int = 128,
           truncation: str = "head") -> dict[str, torch.Tensor]:
    """Tokenise ``texts`` into one right-padded batch: ``input_ids``, ``token_type_ids`` and
    ``attention_mask`` (1 for real tokens, 0 for padding), each ``[len(texts), longest]``.

    Every row is ``[CLS] pieces [SEP]`` with at most ``max_length`` ids in all; longer texts
    lose pieces according to ``truncation`` (see :func:`truncate_ids`). With ``"head"`` this is
    exactly ``tokenizer(texts, truncation=True, max_length=max_length, padding=True)``.
    """
    if isinstance(texts, (str, bytes)):
        raise DataError("encode() takes a list of texts; wrap a single text as [text]")
    return batch_from_pieces(tokenizer, word_pieces(tokenizer, texts), max_length=max_length, truncation=truncation)


def batch_from_pieces(tokenizer: Any, pieces: Sequence[Sequence[int]], *, max_length: int = 128,
                      truncation: str = "head") -> dict[str, torch.Tensor]:
    """:func:`encode` for texts already split by :func:`word_pieces` (so that callers who also
    need the pieces, to sort by length or count them, tokenise only once)."""
    if max_length < 3:
        raise ConfigError(f"max_length must leave room for [CLS], one piece and [SEP]; got {max_length}")
    cls, sep, pad = _special_ids(tokenizer)
    rows = [[cls, *truncate_ids(ids, max_length - 2, truncation), sep] if ids else [cls, sep] for ids in pieces]
    width = max((len(r) for r in rows), default=2)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):  # right padding: real tokens first, then [PAD]s
        input_ids[i, :len(row)] = torch.tensor(row)
        attention_mask[i, :len(row)] = 1
    return {"input_ids": input_ids, "token_type_ids": torch.zeros_like(input_ids), "attention_mask": attention_mask}


# ----------------------------------------------------------------------------------------------
# Datasets and batches
# ----------------------------------------------------------------------------------------------


class TextClassificationDataset(Dataset[tuple[str, int]]):
    """``(text, label)`` pairs; tokenising happens per batch, in :class:`TextCollator`.

    Checked once, here, naming the first bad example: one label per text; texts are ``str`` or
    UTF-8 ``bytes`` (decoded here) and not empty or whitespace only (nothing to learn from);
    labels are class indices (see :func:`~transfer_utils.data.as_labels`), in
    ``[0, num_labels)`` when ``num_labels`` is given — pass it: a label the model has no output
    for would otherwise stop training with an ``IndexError`` deep inside the loss.
    """

    def __init__(self, texts: Sequence[str | bytes], labels: Sequence[int], num_labels: int | None = None) -> None:
        if isinstance(texts, (str, bytes)):
            raise DataError("texts must be a list of texts, not a single text; wrap it as [text]")
        if len(texts) != len(labels):
            raise DataError(f"{len(texts)} texts but {len(labels)} labels")
        self.texts = [ensure_text(t, where=f"text #{i}") for i, t in enumerate(texts)]
        empty = [i for i, t in enumerate(self.texts) if not t.strip()]
        if empty:
            raise DataError(f"text(s) at position(s) {empty[:10]} are empty or whitespace only; drop them and "
                            "their labels first, e.g. keep = [i for i, t in enumerate(texts) if t.strip()]")
        self.num_labels = num_labels
        self.labels = as_labels(labels, num_labels).tolist()

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> tuple[str, int]:
        return self.texts[index], self.labels[index]


@dataclass
class TextCollator:
    """Turn a list of ``(text, label)`` into a padded batch (dynamic padding).

    Returns ``(inputs, labels)`` for :func:`~transfer_utils.train.fit`, or with ``as_dict=True``
    one dict with a ``labels`` entry, the form the Hugging Face ``Trainer`` expects. Labels are
    checked with :func:`~transfer_utils.data.as_labels`; with ``num_labels`` (the model's
    ``config.num_labels``) a label outside ``[0, num_labels)`` is a :class:`DataError` naming it,
    not an ``IndexError`` from inside the model's loss (or a CUDA device-side assert).
    """

    tokenizer: Any
    max_length: int = 128
    truncation: str = "head"
    as_dict: bool = False
    num_labels: int | None = None

    def __call__(self, batch: Sequence[tuple[str, int]]) -> Any:
        texts = [t for t, _ in batch]
        labels = as_labels([y for _, y in batch], self.num_labels, where="batch labels")
        inputs = encode(self.tokenizer, texts, max_length=self.max_length, truncation=self.truncation)
        return {**inputs, "labels": labels} if self.as_dict else (inputs, labels)


def set_dropout(model: nn.Module, p: float) -> int:
    """Set the drop probability of every ``nn.Dropout`` in ``model``; returns how many changed."""
    if not 0.0 <= p < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {p}")
    layers = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    for m in layers:
        m.p = p
    return len(layers)


# ----------------------------------------------------------------------------------------------
# Frozen embeddings
# ----------------------------------------------------------------------------------------------


def mean_pool(last_hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average token vectors, ignoring padding (the pooling all-MiniLM-L6-v2 was trained with)."""
    mask = attention_mask.unsqueeze(-1).to(last_hidden.dtype)
    return (last_hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)



@torch.no_grad()
def pooled_embeddings(tokenizer: Any, encoder: nn.Module, texts: Sequence[str | bytes], *,
                      max_length: int = 128, truncation: str = "head", batch_size: int = 64,
                      device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """``{"cls": …, "mean": …}``: the ``[CLS]`` token's last hidden state and the mean of the
    real tokens' (padding excluded), ``[len(texts), hidden]`` each, from one forward pass.

    Texts are batched in order of length (less padding) and returned in input order.
    """
    encoder.eval().to(device)
    pieces = word_pieces(tokenizer, texts)
    order = sorted(range(len(pieces)), key=lambda i: len(pieces[i]))
    size = encoder.config.hidden_size
    out = {"cls": torch.empty(len(pieces), size), "mean": torch.empty(len(pieces), size)}
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = to_device(batch_from_pieces(tokenizer, [pieces[i] for i in idx], max_length=max_length,
                                            truncation=truncation), device)
        hidden = encoder(**batch).last_hidden_state.float()
        out["cls"][idx] = hidden[:, 0].cpu()
        out["mean"][idx] = mean_pool(hidden, batch["attention_mask"]).cpu()
    return out


# ----------------------------------------------------------------------------------------------
# Shipping a classifier
# ----------------------------------------------------------------------------------------------


@dataclass
class TextClassifier:
    """A fine-tuned model with everything needed to use it: tokenizer, labels, max length, and the
    temperature that divides the logits before the softmax (1.0: the probabilities as trained)."""

    model: nn.Module
    tokenizer: Any
    label_names: tuple[str, ...]
    max_length: int
    truncation: str
    base_model: str
    device: torch.device
    temperature: float = 1.0


@dataclass
class TextPrediction:
    """One text's prediction. ``truncated``: the text had more word pieces than fit and some
    were dropped; ``unknown_fraction``: share of its pieces the vocabulary maps to ``[UNK]``
    (high for scripts the tokenizer does not cover: a sign the prediction means little)."""

    label: str
    probability: float
    probabilities: dict[str, float]
    n_pieces: int
    truncated: bool
    unknown_fraction: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def save_text_classifier(directory: str | Path, model: nn.Module, tokenizer: Any, *,
                         label_names: Sequence[str], max_length: int, truncation: str = "head",
                         base_model: str = "", temperature: float = 1.0) -> Path:
    """Save weights (``model.safetensors``), tokenizer and ``manifest.json`` (kind
    ``"text-classifier"``: label names, ``max_length``, truncation strategy, temperature) to ``directory``.

    Atomic (:func:`~transfer_utils.manifest.write_classifier_folder`): everything is written to a
    temporary folder next to ``directory``, which then takes its place, so a failed or
    interrupted save leaves a previous save there intact (and no half-written folder).
    ``directory`` must be new, empty, or an earlier save (which is replaced); a folder holding
    any other file is refused rather than overwritten. ``temperature`` (from
    :func:`~transfer_utils.evaluate.fit_temperature`) is applied by :func:`predict_texts`.
    Reload with :func:`load_text_classifier`, in any process, without this notebook.
    """
    if truncation not in TRUNCATION_STRATEGIES:
        raise ConfigError(f"truncation must be one of {TRUNCATION_STRATEGIES}, got {truncation!r}")
    n_out = model.config.num_labels
    if len(label_names) != n_out:
        raise ConfigError(f"{len(label_names)} label names for a model with {n_out} outputs")
    manifest = Manifest(kind=KIND, class_names=tuple(label_names), architecture=base_model,
                        preprocessing={"max_length": int(max_length), "truncation": truncation},
                        temperature=check_temperature(temperature))

    def write(folder: Path) -> None:
        model.config.id2label = dict(enumerate(label_names))
        model.config.label2id = {name: i for i, name in enumerate(label_names)}
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)

    return write_classifier_folder(directory, manifest, write)


def load_text_classifier(directory: str | Path, device: torch.device | str = "cpu") -> TextClassifier:
    """Load what :func:`save_text_classifier` wrote. Only safetensors weights are read (a pickled
    ``pytorch_model.bin`` can run code when loaded, so it is refused). A folder that is not a
    saved text classifier, or is damaged, raises :class:`DamagedFileError` naming the file."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    directory = Path(directory)
    manifest = read_manifest(directory, KIND)
    meta_path = directory / META_FILE
    again = "Copy the folder again, or save the model again with save_text_classifier()."
    label_names = manifest.class_names
    try:
        max_length, truncation = int(manifest.preprocessing["max_length"]), manifest.preprocessing["truncation"]
        if truncation not in TRUNCATION_STRATEGIES:
            raise ValueError(f"truncation {truncation!r} is not one of {TRUNCATION_STRATEGIES}")
    except (TypeError, ValueError) as err:
        raise DamagedFileError(f"{meta_path} is damaged ({type(err).__name__}: {err}). {again}", meta_path) from None
    from safetensors import SafetensorError

    try:
        model, loading = AutoModelForSequenceClassification.from_pretrained(
            directory, local_files_only=True, use_safetensors=True, output_loading_info=True,
            ignore_mismatched_sizes=True)  # reported in ``loading`` and refused below, with names
    except SafetensorError as err:
        weights = directory / WEIGHTS_FILE
        raise DamagedFileError(f"{weights} is damaged ({err}): it was cut short or overwritten. {again}",
                               weights) from None
    except (OSError, ValueError) as err:  # e.g. config.json is not valid JSON
        raise DamagedFileError(f"{directory}: config.json and model.safetensors cannot be loaded together "
                               f"({str(err).splitlines()[0]}). {again}", directory) from None
    missing = sorted(loading["missing_keys"]) + [  # (name, shape in the file, shape config.json implies)
        f"{m[0]} is {tuple(m[1])} in the file, {tuple(m[2])} in config.json" if isinstance(m, tuple) else str(m)
        for m in sorted(loading["mismatched_keys"])]
    if missing:  # transformers would start these weights from random values and only log it
        raise DamagedFileError(f"{directory / WEIGHTS_FILE} lacks {len(missing)} of the tensors config.json "
                               f"describes, or holds them in another shape ({'; '.join(missing[:4])}). "
                               f"{again}", directory / WEIGHTS_FILE)
    if len(label_names) != model.config.num_labels:
        raise DamagedFileError(f"{meta_path} names {len(label_names)} labels but the model has "
                               f"{model.config.num_labels} outputs: the files come from different saves. {again}",
                               meta_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except Exception as err:  # noqa: BLE001 - tokenizer.json cut short: tokenizers raises a bare Exception (transformers 4.x)
        raise DamagedFileError(f"the tokenizer files in {directory} are damaged ({type(err).__name__}: "
                               f"{str(err).splitlines()[0]}). {again}", directory) from None
    device = torch.device(device)
    return TextClassifier(model=model.eval().to(device), tokenizer=tokenizer, label_names=label_names,
                          max_length=max_length, truncation=truncation, base_model=manifest.architecture,
                          device=device, temperature=manifest.temperature)


@torch.no_grad()
def predict_texts(classifier: TextClassifier, texts: Sequence[str | bytes], *,
                  batch_size: int = 32) -> list[TextPrediction]:
    """Classify ``texts`` (a list), in batches of similar length, returning one
    :class:`TextPrediction` per text in input order.

    * a bare string is refused (iterating it would classify single characters);
    * bytes must be UTF-8 (the error says which text and byte is not);
    * empty or whitespace-only texts are refused with their positions: there is nothing to
      classify, and a confident-looking answer for them would be noise;
    * long texts are truncated with the strategy the model was trained with (``truncated=True``);
    * probabilities are ``softmax(logits / classifier.temperature)`` (the label never changes with it).
    """
    if isinstance(texts, (str, bytes)):
        raise DataError("predict_texts() takes a list of texts; wrap a single text as [text]")
    clean = [ensure_text(t, where=f"text #{i}") for i, t in enumerate(texts)]
    empty = [i for i, t in enumerate(clean) if not t.strip()]
    if empty:
        raise DataError(f"text(s) at position(s) {empty[:10]} are empty or whitespace only; "
                        "drop them first, e.g. texts = [t for t in texts if t.strip()]")
    tok, model = classifier.tokenizer, classifier.model
    temperature = check_temperature(classifier.temperature)
    model.eval()
    pieces = word_pieces(tok, clean)
    budget = classifier.max_length - 2
    order = sorted(range(len(clean)), key=lambda i: len(pieces[i]))
    probs = torch.empty(len(clean), len(classifier.label_names))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = batch_from_pieces(tok, [pieces[i] for i in idx], max_length=classifier.max_length,
                                  truncation=classifier.truncation)
        logits = model(**to_device(batch, classifier.device)).logits
        probs[idx] = (logits.float() / temperature).softmax(-1).cpu()
    out = []
    for i, p in enumerate(probs):
        k = int(p.argmax())
        n = len(pieces[i])
        unk = sum(1 for t in pieces[i] if t == tok.unk_token_id) / max(n, 1)
        out.append(TextPrediction(
            label=classifier.label_names[k], probability=float(p[k]),
            probabilities={name: float(v) for name, v in zip(classifier.label_names, p)},
            n_pieces=n, truncated=n > budget, unknown_fraction=round(unk, 4)))
    return out
