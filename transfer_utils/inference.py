"""Ship a fine-tuned image classifier: save it, load it in a fresh process, predict on any image.

A saved classifier is a folder with two files:

* ``model.safetensors`` — the weights (loading them never unpickles anything);
* ``classifier.json`` — the registry architecture, the class names and the preprocessing.

Example::

    save_classifier("ants-bees", model, architecture=backbone.name,
                    class_names=train_ds.classes, preprocessing=backbone.preprocessing)
    clf = load_classifier("ants-bees")
    predict(clf, ["photo.png"], tta=True)[0].label
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image, ImageOps
from safetensors.torch import load_file, save_file
from torch import nn

from .data import Preprocessing, SkippedImage, check_on_error, load_image, to_rgb, warn_skipped
from .errors import ConfigError, DamagedFileError, DataError
from .models import FrozenBackboneClassifier, attach_head, check_head, create_backbone, replace_head

FORMAT_VERSION = 1


@dataclass
class Classifier:
    """A loaded classifier: the network in eval mode plus what it needs to read an image."""

    model: nn.Module
    architecture: str
    class_names: list[str]
    preprocessing: Preprocessing


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
                    preprocessing: Preprocessing) -> Path:
    """Write ``model.safetensors`` and ``classifier.json`` into ``directory`` (each atomically).

    ``architecture`` is the registry name of the backbone actually used (``backbone.name``, which
    differs from the requested one after an offline substitution). A chapter-3 model — a
    :class:`~transfer_utils.models.FrozenBackboneClassifier` with a linear head — is saved as its
    backbone with that head (:func:`~transfer_utils.models.attach_head`); a head trained on cached
    features, torch or scikit-learn, is attached first: ``attach_head(backbone.model, head, mu, sigma)``.
    The weights must fit ``architecture`` exactly, or nothing is written.
    """
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
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / "model.safetensors"
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, weights.with_suffix(".part"))
    weights.with_suffix(".part").replace(weights)
    meta = {"format_version": FORMAT_VERSION, "architecture": architecture, "class_names": list(class_names),
            "preprocessing": asdict(preprocessing)}
    config = directory / "classifier.json"
    config.with_suffix(".part").write_text(json.dumps(meta, indent=2))
    config.with_suffix(".part").replace(config)
    return directory


def load_classifier(directory: str | Path, device: torch.device | str = "cpu") -> Classifier:
    """Rebuild the architecture (no pretrained download), load the saved weights, switch to eval."""
    directory = Path(directory)
    config, weights = directory / "classifier.json", directory / "model.safetensors"
    if not config.is_file() or not weights.is_file():
        raise ConfigError(f"{directory} is not a saved classifier: it needs classifier.json and model.safetensors "
                          "(written by transfer_utils.inference.save_classifier)")
    try:
        meta = json.loads(config.read_text())
        prep = meta["preprocessing"]
        preprocessing = Preprocessing(prep["input_size"], prep["resize_size"], prep["interpolation"],
                                      tuple(prep["mean"]), tuple(prep["std"]))
        architecture, class_names = meta["architecture"], list(meta["class_names"])
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ConfigError(f"{config} is damaged or from another program ({err!r}); save the model again") from None
    from safetensors import SafetensorError

    from .train import _state_mismatch

    try:
        state = load_file(weights)
    except (SafetensorError, OSError) as err:
        raise DamagedFileError(f"{weights} is damaged ({err}): it was cut short or overwritten. Copy the folder "
                               "again, or save the model again with save_classifier.", weights) from None
    model = replace_head(create_backbone(architecture, pretrained=False).model, len(class_names))
    differences = _state_mismatch(state, model)
    if differences:
        raise ConfigError(f"{weights} does not fit the {architecture} with {len(class_names)} classes that {config} "
                          f"describes ({differences}): the two files come from different saves. Save the model "
                          "again with save_classifier.")
    model.load_state_dict(state)
    return Classifier(model.eval().to(device), architecture, class_names, preprocessing)


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
    augmentation).

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
        probs = classifier.model(x).softmax(-1)
        if tta:
            probs = (probs + classifier.model(torch.flip(x, dims=[3])).softmax(-1)) / 2
        for (index, source), row in zip(kept, probs.cpu()):
            k = int(row.argmax())
            out.append(Prediction(classifier.class_names[k], float(row[k]),
                                  {c: float(p) for c, p in zip(classifier.class_names, row)}, index, source))
    warn_skipped(out.skipped, "predict")
    return out
