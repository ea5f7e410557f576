"""One shipping format for every classifier the book ships, images and text alike.

A shipped classifier is a folder with ``model.safetensors`` (the weights: loading them never
unpickles anything), whatever else its kind needs (a text classifier's tokenizer files and
``config.json``), and ``manifest.json``, which says what the folder is::

    {"format_version": 2, "kind": "image-classifier", "class_names": ["ants", "bees"],
     "architecture": "resnet18", "preprocessing": {"input_size": 224, ...}, "temperature": 1.0}

``kind`` is ``"image-classifier"`` (:func:`~transfer_utils.inference.save_classifier`) or
``"text-classifier"`` (:func:`~transfer_utils.text.save_text_classifier`); ``preprocessing`` is
how an input is prepared (an image's sizes and normalisation; a text's ``max_length`` and
truncation strategy); ``temperature`` divides the logits before the softmax (1.0: as trained; see
chapter 5's calibration section). :func:`write_classifier_folder` writes the folder atomically
(:func:`~transfer_utils.fileio.atomic_dir`); :func:`read_manifest` checks it and raises
:class:`~transfer_utils.errors.DamagedFileError`, naming the file and the remedy, for a missing,
damaged or wrong-kind manifest. Folders saved before this format (``classifier.json`` or
``text_classifier.json``, format 1) are still read, with a temperature of 1.

Example::

    manifest = read_manifest("ants-bees", "image-classifier")
    manifest.class_names, manifest.temperature
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, DamagedFileError
from .fileio import atomic_dir, atomic_write_json

MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "model.safetensors"
#: 2: one manifest for both kinds. 1: ``classifier.json`` / ``text_classifier.json`` (still read).
FORMAT_VERSION = 2


@dataclass(frozen=True)
class _Kind:
    writer: str  #: the function that writes this kind (named in every remedy)
    loader: str
    preprocessing: tuple[str, ...]  #: the keys ``preprocessing`` must have
    legacy_file: str  #: the settings file of format 1


KINDS: dict[str, _Kind] = {
    "image-classifier": _Kind("transfer_utils.inference.save_classifier", "transfer_utils.inference.load_classifier",
                              ("input_size", "resize_size", "interpolation", "mean", "std"), "classifier.json"),
    "text-classifier": _Kind("transfer_utils.text.save_text_classifier", "transfer_utils.text.load_text_classifier",
                             ("max_length", "truncation"), "text_classifier.json"),
}


@dataclass(frozen=True)
class Manifest:
    """What ``manifest.json`` holds (see the module docstring)."""

    kind: str
    class_names: tuple[str, ...]
    architecture: str  #: image: the registry name of the backbone; text: the base model's name
    preprocessing: dict[str, Any] = field(default_factory=dict)
    temperature: float = 1.0
    format_version: int = FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        return {"format_version": self.format_version, "kind": self.kind, "class_names": list(self.class_names),
                "architecture": self.architecture, "preprocessing": dict(self.preprocessing),
                "temperature": self.temperature, "weights": WEIGHTS_FILE}


def check_temperature(temperature: object) -> float:
    """``temperature`` as a float, or a :class:`ConfigError` if it is not a finite number > 0."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not math.isfinite(temperature) or temperature <= 0:
        raise ConfigError(f"temperature must be a finite number > 0 (1.0 leaves the probabilities as trained), "
                          f"got {temperature!r}; fit one with transfer_utils.evaluate.fit_temperature")
    return float(temperature)


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def write_classifier_folder(directory: str | os.PathLike[str], manifest: Manifest,
                            write_files: Callable[[Path], None]) -> Path:
    """Write a shipped classifier: ``write_files(folder)`` writes the weights (and whatever else
    the kind needs) into a fresh folder, then ``manifest.json`` is added and the folder takes
    ``directory``'s place, atomically.

    ``directory`` must be new, empty, or an earlier save (which is replaced as a whole); a folder
    holding other files is refused, and so is replacing a save that holds files the new one would
    not rewrite — nothing of the user's is ever deleted.
    """
    if manifest.kind not in KINDS:
        raise ConfigError(f"kind must be one of {sorted(KINDS)}, got {manifest.kind!r}")
    check_temperature(manifest.temperature)
    writer = _short(KINDS[manifest.kind].writer)
    directory = Path(directory)
    earlier = directory.is_dir() and any((directory / n).is_file()
                                         for n in (MANIFEST_FILE, *(k.legacy_file for k in KINDS.values())))
    if directory.exists() and (not directory.is_dir() or (any(directory.iterdir()) and not earlier)):
        raise ConfigError(f"{directory} exists and is not an earlier {writer}() folder; "
                          "save into a new or empty folder so that nothing in it is lost")
    with atomic_dir(directory) as staging:
        write_files(staging)
        if not (staging / WEIGHTS_FILE).is_file():
            raise ConfigError(f"{writer}() wrote no {WEIGHTS_FILE}: weights are shipped as safetensors only")
        atomic_write_json(staging / MANIFEST_FILE, manifest.to_json())
        if directory.exists():
            legacy = {k.legacy_file for k in KINDS.values()}
            extra = sorted({f.name for f in directory.iterdir()} - {f.name for f in staging.iterdir()} - legacy)
            if extra:
                raise ConfigError(f"{directory} also holds {extra[:5]}, which this save would not rewrite: "
                                  "move them elsewhere or save into a new folder, so that nothing is lost")
    return directory


def _legacy(meta: dict[str, Any], kind: str) -> dict[str, Any]:
    """A format-1 settings file as a format-2 manifest (temperature 1: those saves had none)."""
    if kind == "image-classifier":
        return {"format_version": 1, "kind": kind, "class_names": meta["class_names"],
                "architecture": meta["architecture"], "preprocessing": meta["preprocessing"], "temperature": 1.0}
    return {"format_version": 1, "kind": kind, "class_names": meta["label_names"],
            "architecture": meta.get("base_model", ""), "temperature": 1.0,
            "preprocessing": {"max_length": meta["max_length"], "truncation": meta["truncation"]}}


def read_manifest(directory: str | os.PathLike[str], kind: str) -> Manifest:
    """Read and check ``directory/manifest.json`` for a classifier of ``kind``.

    A missing, unreadable, incomplete or wrong-kind manifest, or a missing ``model.safetensors``,
    raises :class:`DamagedFileError` naming the file and saying what to do.
    """
    if kind not in KINDS:
        raise ConfigError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    spec = KINDS[kind]
    writer, loader = _short(spec.writer), _short(spec.loader)
    directory = Path(directory)
    again = f"Copy the folder again, or save the model again with {writer}()."
    path = directory / MANIFEST_FILE
    if not path.is_file():
        legacy = [(k, directory / s.legacy_file) for k, s in KINDS.items() if (directory / s.legacy_file).is_file()]
        if not legacy:
            raise DamagedFileError(f"{path} is missing: {directory} was not written by {writer}() (or was copied "
                                   f"without it). Save the model with {spec.writer}(directory, ...) first, "
                                   "then load that folder.", path)
        path = legacy[0][1]
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(meta, dict):
            raise TypeError(f"a JSON {type(meta).__name__}, not an object")
        if path.name != MANIFEST_FILE:
            meta = _legacy(meta, next(k for k, s in KINDS.items() if s.legacy_file == path.name))
        version = meta["format_version"]
        if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
            raise ValueError(f"format_version {version!r}: this transfer_utils reads 1 to {FORMAT_VERSION} "
                             "(a newer one wrote it? upgrade transfer_utils)")
        found = meta["kind"]
        if not isinstance(found, str):
            raise TypeError(f"kind is {found!r}, not one of {sorted(KINDS)}")
        class_names = meta["class_names"]
        if not isinstance(class_names, list) or not class_names or not all(isinstance(c, str) for c in class_names):
            raise ValueError(f"class_names must be a non-empty list of strings, got {class_names!r}")
        preprocessing = meta["preprocessing"]
        if not isinstance(preprocessing, dict):
            raise TypeError(f"preprocessing is a {type(preprocessing).__name__}, not an object")
        architecture = meta["architecture"]
        temperature = check_temperature(meta.get("temperature", 1.0))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError, ConfigError) as err:
        raise DamagedFileError(f"{path} is damaged ({type(err).__name__}: {err}). {again}", path) from None
    if found != kind:
        other = _short(KINDS[found].loader) if found in KINDS else None
        raise DamagedFileError(f"{path} describes a {found!r}, not a {kind!r}: "
                               + (f"load it with {other}() instead." if other else
                                  f"it was not written by {writer}(). {again}"), path)
    missing = [k for k in spec.preprocessing if k not in preprocessing]
    if missing:
        raise DamagedFileError(f"{path} is damaged: its preprocessing lacks {missing}. {again}", path)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise DamagedFileError(f"{weights} is missing, so {directory} cannot be loaded; refusing to unpickle other "
                               f"weight files. Save the model again with {writer}() (it writes safetensors).", weights)
    return Manifest(kind=found, class_names=tuple(class_names), architecture=str(architecture),
                    preprocessing=preprocessing, temperature=temperature, format_version=version)

