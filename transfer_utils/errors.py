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


class LaunchError(TransferUtilsError, RuntimeError):
    """A launched multi-process run (``torchrun``, ``accelerate launch``) failed."""


class LaunchTimeoutError(LaunchError, TimeoutError):
    """A launched run did not finish in time; it was stopped, all its processes killed."""


class DamagedFileError(DataError):
    """A file on disk (a checkpoint, a saved model) is truncated, corrupt or incomplete.

    The message names the file and says how to recover; ``path`` holds it.
    """

    def __init__(self, message: str, path: object = None) -> None:
        super().__init__(message)
        self.path = path


class NonFiniteLossError(TransferUtilsError, FloatingPointError):
    """The loss became NaN or infinite; training stopped before that batch changed any weight."""


class SkippedImagesWarning(UserWarning):
    """Unreadable images were left out because the caller asked for ``on_error="skip"``.

    The warning names the files; the function that skipped them also returns them (``.skipped``).
    """
