"""Exceptions that say what went wrong *and what to do about it*.

Every error a learner can trigger with bad input derives from :class:`TransferUtilsError`,
so a notebook can catch the whole family in one ``except`` if it wants to.

Example::

    try:
        fetch_dataset("hymenoptera")
    except AssetUnavailableError as err:
        print(err)        # explains how to provide the archive offline
"""

from __future__ import annotations


class TransferUtilsError(Exception):
    """Base class of every error raised on purpose by ``transfer_utils``."""


class AssetUnavailableError(TransferUtilsError):
    """An asset (dataset or weights) is neither cached nor downloadable right now."""


class ChecksumMismatchError(TransferUtilsError):
    """A file or folder did not hash to the value the registry expects."""


class DataError(TransferUtilsError, ValueError):
    """A dataset on disk (or a batch of inputs) cannot be used as it is."""


class ConfigError(TransferUtilsError, ValueError):
    """An argument combination that cannot work (e.g. head size != number of classes)."""


class SkippedImagesWarning(UserWarning):
    """Unreadable images were left out because the caller asked for ``on_error="skip"``.

    The warning names the files; the function that skipped them also returns them (``.skipped``).
    """
