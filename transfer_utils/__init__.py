"""Helpers for the book *Transfer Learning with PyTorch*.

Each module is taught in the chapter that first needs it and reused afterwards. This docstring is
the package's one module index (the README and the book's package page point here); the modules
are arranged in layers, and a module imports only from layers below its own
(``tests/test_layers.py`` checks both).

1. Core — :mod:`~transfer_utils.errors` (the error hierarchy), :mod:`~transfer_utils.report`
   (``glue``), :mod:`~transfer_utils.fileio` (the one atomic write)
2. Plumbing — :mod:`~transfer_utils.config` (device, seeding, scale, the offline switch),
   :mod:`~transfer_utils.cache` (the on-disk cache of computed tensors),
   :mod:`~transfer_utils.batches` (batches to a device, logits from any model),
   :mod:`~transfer_utils.manifest` (the one shipping format of image and text classifiers)
3. :mod:`~transfer_utils.assets` — the registry of datasets and weights, checksums, mirrors
4. :mod:`~transfer_utils.data` — image folders with the backbone's preprocessing, labels, text datasets
5. :mod:`~transfer_utils.text` (tokenisation, pooling, shipping a text classifier) and
   :mod:`~transfer_utils.models` (backbones, heads, stages, freezing, parameter groups)
6. :mod:`~transfer_utils.features` (cached embeddings of a frozen backbone),
   :mod:`~transfer_utils.train` (``fit``, checkpoints), :mod:`~transfer_utils.evaluate`,
   :mod:`~transfer_utils.schedules` (warm-up, gradual unfreezing), :mod:`~transfer_utils.regularization` (L2-SP)
7. :mod:`~transfer_utils.recipes` (fine-tuning recipes), :mod:`~transfer_utils.inference` (save, reload,
   predict), :mod:`~transfer_utils.plots`, :mod:`~transfer_utils.transferability` (LogME)
8. Chapter methods — :mod:`~transfer_utils.gradcheck`, :mod:`~transfer_utils.forgetting`,
   :mod:`~transfer_utils.explain` (Grad-CAM), :mod:`~transfer_utils.adaptation` (DANN, AdaBN),
   :mod:`~transfer_utils.distill`, :mod:`~transfer_utils.fewshot`, :mod:`~transfer_utils.distributed`,
   :mod:`~transfer_utils.lora` (LoRA by hand, adapters, NF4; chapter 9), :mod:`~transfer_utils.weightspace`
   (LP-FT, WiSE-FT, model soups; chapter 4)
9. :mod:`~transfer_utils.checks` — the self-checks of the exercises

The book's own tooling (execute the chapters and build the book, the benchmarks appendix, the
web assets of the rendered pages) is not here: it is the top-level ``tools`` package of the
repository, which ``pip install .`` does not install and nothing here imports.
"""

__version__ = "0.1.0"

#: The layers above, bottom first: a module may import only from an earlier layer.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "report", "fileio"),
    ("config", "cache", "batches", "manifest"),
    ("assets",),
    ("data",),
    ("text", "models"),
    ("features", "train", "evaluate", "schedules", "regularization"),
    ("recipes", "inference", "plots", "transferability"),
    ("gradcheck", "forgetting", "explain", "adaptation", "distill", "fewshot", "distributed", "lora", "weightspace"),
    ("checks",),
)
