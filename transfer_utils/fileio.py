"""One atomic write for the whole package.

Every file the package writes (a cache entry, a checkpoint, a shipped classifier, a download, a
benchmark record) goes through :func:`atomic_path`: the bytes are written to a ``.part`` sibling
and renamed over the target only when the writer returns without an error. A reader therefore sees
the old file or the new one, never half of either, and a crash leaves no ``.part`` behind.
A folder that must appear whole (an unpacked dataset, a set of sample photos) goes through
:func:`atomic_dir`, the same idea for a directory. ``tests/test_fileio.py`` checks that no other
module renames a ``.part`` into place by hand.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "atomic_dir", "atomic_write_text", "atomic_write_json"]


@contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling of ``target`` to write to; on success rename it onto ``target``.

    The sibling's name ends in ``.part`` (and carries a random tag, so two writers of the same
    target never share one). On an exception the sibling is removed and the exception propagates;
    ``target`` keeps its old content. The parent folder is created if missing.

    >>> with atomic_path("model.safetensors") as part:   # doctest: +SKIP
    ...     save_file(tensors, part)
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        yield part
        part.replace(target)
    finally:
        part.unlink(missing_ok=True)


@contextmanager
def atomic_dir(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a new, empty sibling folder of ``target`` to fill; on success it replaces ``target``.

    The folder version of :func:`atomic_path`: ``target`` is the old folder or the complete new
    one, never a half-filled one. A folder cannot be renamed over a non-empty one, so an existing
    ``target`` is first renamed aside, the new folder renamed in, and only then the old one deleted
    (if the second rename fails, the old folder is put back). On an exception inside the block the
    sibling is deleted and the exception propagates; ``target`` is untouched.

    >>> with atomic_dir(cache / "datasets" / "flowers17") as part:   # doctest: +SKIP
    ...     unpack(archive, part)
    ...     check_digest(part)            # raising here leaves the old folder (or none) in place
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    part = target.with_name(f".{target.name}.{tag}.part")
    part.mkdir()
    try:
        yield part
        old = target.with_name(f".{target.name}.{tag}.old")
        had_old = target.exists()
        if had_old:
            target.replace(old)
        try:
            part.replace(target)
        except BaseException:
            if had_old:
                old.replace(target)
            raise
        if had_old:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(part, ignore_errors=True)


def atomic_write_text(target: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``target`` atomically and return the path."""
    with atomic_path(target) as part:
        part.write_text(text, encoding="utf-8")
    return Path(target)


def atomic_write_json(target: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``target`` atomically and return the path."""
    return atomic_write_text(target, json.dumps(obj, indent=2) + "\n")
