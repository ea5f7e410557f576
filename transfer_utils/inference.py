"""Ship a fine-tuned image classifier: save it, load it in a fresh process, predict on any image.

A saved classifier is a folder in the book's one shipping format (:mod:`~transfer_utils.manifest`):

* ``model.safetensors`` — the weights (loading them never unpickles anything);
* ``manifest.json`` — ``kind: "image-classifier"``, the registry architecture, the class names,
  the preprocessing and the temperature that :func:`predict` divides the logits by.

Example::

    save_classifier("ants-bees", model, architecture=backbone.name,
                    class_names=train_ds.classes, preprocessing=backbone.preprocessing)
    clf = load_classifier("ants-bees")
    predict(clf, ["photo.png"], tta=True)[0].label
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image, ImageOps
from safetensors.torch import load_file, save_file
from torch import nn

from .data import (
    Preprocessing,
    SkippedImage,
    check_on_error,
    load_image,
    to_rgb,
    warn_skipped,
)
from .errors import ConfigError, DamagedFileError, DataError
from .manifest import (
    MANIFEST_FILE,
    WEIGHTS_FILE,
    Manifest,
    check_temperature,
    read_manifest,
    write_classifier_folder,
)
from .models import (
    FrozenBackboneClassifier,
    attach_head,
    check_head,
    create_backbone,
    replace_head,
)

KIND = "image-classifier"


@dataclass
class Classifier:
    """A loaded classifier: the network in eval mode plus what it needs to read an image.

    ``temperature`` divides the logits before the softmax (1.0: the probabilities as trained)."""

    model: nn.Module
    architecture: str
    class_names: list[str]
    preprocessing: Preprocessing
    temperature: float = 1.0


@dataclass
class Prediction:
    """The predicted class of one image, its probability and all class probabilities.

    ``index`` is the image's position in the list given to :func:`predict` and ``source`` its
    path (or ``<image #i>`` for an in-memory image), so predictions stay matched to their images
    even when unreadable ones were skipped."""

    label: str
    probability: float
    probabilities: dict[str, float]
    index: int = -1
    source: str = ""


class Predictions(list):  # type: ignore[type-arg]
    """The list :func:`predict` returns: one :class:`Prediction` per image it read, in input
    order, plus ``skipped``: the images left out under ``on_error="skip"``."""

    def __init__(self, items: Sequence[Prediction] = (), skipped: Sequence[SkippedImage] = ()) -> None:
        super().__init__(items)
        self.skipped: list[SkippedImage] = list(skipped)


def save_classifier(directory: str | Path, model: nn.Module, *, architecture: str, class_names: Sequence[str],
                    preprocessing: Preprocessing, temperature: float = 1.0) -> Path:
    """Write ``model.safetensors`` and ``manifest.json`` into ``directory``, atomically (a failed
    save leaves an earlier one intact; see :func:`~transfer_utils.manifest.write_classifier_folder`).

    ``architecture`` is the registry name of the backbone actually used (``backbone.name``, which
    differs from the requested one after an offline substitution). A chapter-3 model — a
    :class:`~transfer_utils.models.FrozenBackboneClassifier` with a linear head — is saved as its
    backbone with that head (:func:`~transfer_utils.models.attach_head`); a head trained on cached
    features, torch or scikit-learn, is attached first: ``attach_head(backbone.model, head, mu, sigma)``.
    ``temperature`` (from :func:`~transfer_utils.evaluate.fit_temperature`) is stored and applied by
    :func:`predict`. The weights must fit ``architecture`` exactly, or nothing is written.
    """
    temperature = check_temperature(temperature)
    if isinstance(model, FrozenBackboneClassifier):
        model = attach_head(model.trunk, model.head, model.mean, model.std)
    check_head(model, len(class_names))
    expected = replace_head(create_backbone(architecture, pretrained=False).model, len(class_names)).state_dict()
    state = model.state_dict()
    wrong = sorted(set(expected) ^ set(state)) or [k for k in expected if expected[k].shape != state[k].shape]
    if wrong:
        raise ConfigError(f"the model's weights do not fit architecture {architecture!r} (e.g. {wrong[:3]}), so "
                          "load_classifier could not rebuild it: pass the registry name of the backbone it was "
                          "built from (backbone.name)")
    manifest = Manifest(kind=KIND, class_names=tuple(class_names), architecture=architecture,
                        preprocessing=asdict(preprocessing), temperature=temperature)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    return write_classifier_folder(directory, manifest, lambda folder: save_file(tensors, folder / WEIGHTS_FILE))


def load_classifier(directory: str | Path, device: torch.device | str = "cpu") -> Classifier:
    """Rebuild the architecture (no pretrained download), load the saved weights, switch to eval.

    A folder that is not a saved image classifier, or is damaged, raises
    :class:`~transfer_utils.errors.DamagedFileError` naming the file and what to do."""
    directory = Path(directory)
    manifest = read_manifest(directory, KIND)
    config, weights = directory / MANIFEST_FILE, directory / WEIGHTS_FILE
    again = "Copy the folder again, or save the model again with save_classifier."
    try:
        prep = manifest.preprocessing
        preprocessing = Preprocessing(int(prep["input_size"]), int(prep["resize_size"]), str(prep["interpolation"]),
                                      tuple(map(float, prep["mean"])), tuple(map(float, prep["std"])))
    except (TypeError, ValueError) as err:
        raise DamagedFileError(f"{config} is damaged: its preprocessing cannot be read ({err!r}). {again}",
                               config) from None
    architecture, class_names = manifest.architecture, list(manifest.class_names)
    from safetensors import SafetensorError

    from .train import _state_mismatch

    try:
        state = load_file(weights)
    except (SafetensorError, OSError) as err:
        raise DamagedFileError(f"{weights} is damaged ({err}): it was cut short or overwritten. {again}",
                               weights) from None
    try:
        model = replace_head(create_backbone(architecture, pretrained=False).model, len(class_names))
    except (KeyError, ConfigError) as err:
        raise DamagedFileError(f"{config} names architecture {architecture!r}, which this transfer_utils cannot "
                               f"build ({err}). {again}", config) from None
    differences = _state_mismatch(state, model)
    if differences:
        raise DamagedFileError(f"{weights} does not fit the {architecture} with {len(class_names)} classes that "
                               f"{config.name} describes ({differences}): the two files come from different saves. "
                               f"{again}", weights)
    model.load_state_dict(state)
    return Classifier(model.eval().to(device), architecture, class_names, preprocessing, manifest.temperature)


def _read(item: str | Path | Image.Image) -> Image.Image:
    if isinstance(item, Image.Image):  # upright and RGB exactly as a file would be read
        try:
            return to_rgb(ImageOps.exif_transpose(item) or item)
        except DataError:
            raise
        except (OSError, SyntaxError, ValueError) as err:  # a lazily opened, corrupt file
            name = getattr(item, "filename", "") or "an in-memory image"
            raise DataError(f"cannot decode {name} ({err}); the image data is corrupt or truncated") from None
    if not isinstance(item, (str, Path)):
        raise DataError(f"cannot read {type(item).__name__} as an image: pass file paths or PIL images")
    return load_image(item)


@torch.no_grad()
def predict(classifier: Classifier, images: Sequence[str | Path | Image.Image], *, tta: bool = False,
            batch_size: int = 16, on_error: str = "raise") -> Predictions:
    """Classify images (paths or PIL images) of any mode and size, read exactly as training read
    them (:func:`~transfer_utils.data.load_image`: upright, 16-bit and float images scaled) and
    resized by the classifier's own :class:`~transfer_utils.data.Preprocessing`. With
    ``tta=True``, average the probabilities of each image and its mirror image (test-time
    augmentation). The probabilities are ``softmax(logits / classifier.temperature)``: a
    temperature fitted on held-out data (chapter 5) is meant to make them honest (check it on other
    held-out data). It never changes the label of one view; with ``tta=True`` and more than two classes
    the label of the averaged probabilities can depend on it (with two classes it cannot).

    An unreadable image raises :class:`DataError` naming it (``on_error="raise"``, the default).
    With ``on_error="skip"`` it is left out: the result holds the other images' predictions
    (each with its ``index`` and ``source``), ``result.skipped`` lists the left-out ones and a
    :class:`~transfer_utils.errors.SkippedImagesWarning` names them.
    """
    if not isinstance(classifier, Classifier):
        raise ConfigError(f"classifier must be a Classifier (from load_classifier), got {type(classifier).__name__}")
    if isinstance(images, (str, Path, Image.Image)) or not isinstance(images, Sequence):
        raise DataError(f"images must be a list of paths or PIL images, got {type(images).__name__}; "
                        "for one image pass [image]")
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    check_on_error(on_error)
    temperature = check_temperature(classifier.temperature)
    transform = classifier.preprocessing.eval_transform()
    device = next(classifier.model.parameters()).device
    out = Predictions()
    for start in range(0, len(images), batch_size):
        batch, kept = [], []
        for index, item in enumerate(images[start:start + batch_size], start):
            source = str(item) if isinstance(item, (str, Path)) else f"<image #{index}>"
            try:
                img = _read(item)
            except DataError as err:
                if on_error == "raise":
                    raise
                out.skipped.append(SkippedImage(index, source, str(err)))
                continue
            batch.append(transform(img))
            kept.append((index, source))
        if not batch:
            continue
        x = torch.stack(batch).to(device)
        probs = (classifier.model(x) / temperature).softmax(-1)
        if tta:
            probs = (probs + (classifier.model(torch.flip(x, dims=[3])) / temperature).softmax(-1)) / 2
        for (index, source), row in zip(kept, probs.cpu()):
            k = int(row.argmax())
            out.append(Prediction(classifier.class_names[k], float(row[k]),
                                  {c: float(p) for c, p in zip(classifier.class_names, row)}, index, source))
    warn_skipped(out.skipped, "predict")
    return out
