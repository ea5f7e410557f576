"""Helpers for the book *Transfer Learning with PyTorch*.

Each module is taught in the chapter that first needs it and reused afterwards:

* :mod:`~transfer_utils.config` — device, seeding, scale, the offline switch
* :mod:`~transfer_utils.assets` — the registry of datasets and weights, checksums, mirrors
* :mod:`~transfer_utils.data` — image folders with the backbone's preprocessing; text datasets
* :mod:`~transfer_utils.models` — backbones, heads, freezing by stage, parameter groups
* :mod:`~transfer_utils.features` — cached embeddings of a frozen backbone
* :mod:`~transfer_utils.train` / :mod:`~transfer_utils.evaluate` — ``fit`` and ``evaluate``
* :mod:`~transfer_utils.plots` — curves, image grids, confusion matrices, 2-D embeddings
* :mod:`~transfer_utils.gradcheck` / :mod:`~transfer_utils.regularization` — checked derivations, L2-SP
* :mod:`~transfer_utils.schedules` — warm-up + cosine, gradual unfreezing
* :mod:`~transfer_utils.inference` / :mod:`~transfer_utils.explain` — save, reload, predict; Grad-CAM
"""

__version__ = "0.1.0"
