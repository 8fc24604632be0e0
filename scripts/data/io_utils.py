"""Atomic writers: every output goes to a temporary file in the destination folder, then ``os.replace``.

Why: an interrupted run must never leave a half-written datalist, array, volume or checkpoint that a later run
trusts. This module is the one home of that mechanism: ``staged_files`` commits several files together (a synthesis
and its uncertainty map, a report's CSVs and JSON), ``atomic_write`` is the one-file case, and every temporary file
starts with ``TMP_PREFIX`` so readers can skip it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Hashable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import nibabel as nib
import numpy as np

__all__ = [
    "TMP_PREFIX",
    "ensure_writable_dir",
    "staged_files",
    "atomic_write",
    "write_json",
    "write_text",
    "save_npy",
    "save_nifti",
]

#: Every temporary file of this bundle starts with this prefix (a reader seeing one skips it)
TMP_PREFIX = ".tmp_"
K = TypeVar("K", bound=Hashable)

_UMASK = os.umask(0)
os.umask(_UMASK)


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` if needed and prove it is writable now (a probe file), before any work is done."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=TMP_PREFIX, dir=folder)
        os.close(fd)
        os.remove(probe)
    except OSError as error:
        raise PermissionError(f"output folder {folder} is not writable: {error.strerror or error}") from None
    return folder


def _suffix(path: str) -> str:
    """The extension a writer may rely on (``nib.save`` gzips by ``.nii.gz``, ``np.save`` appends ``.npy``)."""
    name = os.path.basename(path)
    return ".nii.gz" if name.endswith(".nii.gz") else os.path.splitext(name)[1]


@contextmanager
def staged_files(targets: Mapping[K, str | os.PathLike], mode: int | None = None) -> Iterator[dict[K, str]]:
    """Temporary files beside each target, yielded as ``{key: temp path}``; when the block ends without an error all
    of them replace their targets, otherwise none does and the temporary files are removed.

    ``mode``: file permissions (default: what the umask gives a new file, not ``mkstemp``'s 0600).
    """
    temps: dict[K, str] = {}
    try:
        for key, target in targets.items():
            target = os.fspath(target)
            folder = os.path.dirname(os.path.abspath(target))
            os.makedirs(folder, exist_ok=True)
            fd, temps[key] = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=_suffix(target), dir=folder)
            os.close(fd)
        yield dict(temps)
        for key, tmp in temps.items():
            if os.path.isfile(tmp) and not os.path.islink(tmp):
                os.chmod(tmp, (0o666 & ~_UMASK) if mode is None else mode)
            os.replace(tmp, os.fspath(targets[key]))
    finally:
        for tmp in temps.values():
            if os.path.lexists(tmp):
                os.remove(tmp)


def atomic_write(path: str | os.PathLike, writer: Callable[[str], None]) -> str:
    """Call ``writer(tmp_path)`` on a temp file next to ``path`` (it keeps the target's extension) and move it into
    place; returns ``path``."""
    with staged_files({0: path}) as temps:
        writer(temps[0])
    return os.fspath(path)


def write_json(path: str | os.PathLike, obj: Any) -> str:
    """Write ``obj`` as indented JSON (4 spaces, key order kept) atomically."""

    def _w(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=4)
            f.write("\n")

    return atomic_write(path, _w)


def write_text(path: str | os.PathLike, text: str) -> str:
    """Write UTF-8 text atomically."""

    def _w(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return atomic_write(path, _w)


def save_npy(path: str | os.PathLike, array: np.ndarray) -> str:
    """``np.save`` atomically (the temp file keeps the ``.npy`` suffix so numpy does not append one)."""

    def _w(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save appends no ".npy" to it
            np.save(f, array)

    return atomic_write(path, _w)


def save_nifti(path: str | os.PathLike, img: nib.Nifti1Image) -> str:
    """Save a nibabel image atomically; the temp name keeps the extension so gzip is applied for .nii.gz."""
    return atomic_write(path, lambda tmp: nib.save(img, tmp))
