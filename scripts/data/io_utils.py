"""Atomic writers: every output goes to a temporary file in the destination folder, then ``os.replace``.

Why: an interrupted run must never leave a half-written datalist, array or volume that a later run trusts.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from typing import Any

import nibabel as nib
import numpy as np

__all__ = ["atomic_write", "write_json", "save_npy", "save_nifti"]

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | os.PathLike, writer: Callable[[str], None], suffix: str = "") -> str:
    """Call ``writer(tmp_path)`` on a temp file next to ``path`` and move it into place; returns ``path``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=suffix, dir=folder)
    os.close(fd)
    try:
        writer(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def write_json(path: str | os.PathLike, obj: Any) -> str:
    """Write ``obj`` as indented JSON (4 spaces, key order kept) atomically."""

    def _w(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=4)
            f.write("\n")

    return atomic_write(path, _w, suffix=".json")


def save_npy(path: str | os.PathLike, array: np.ndarray) -> str:
    """``np.save`` atomically (the temp file keeps the ``.npy`` suffix so numpy does not append one)."""
    return atomic_write(path, lambda tmp: np.save(tmp, array), suffix=".npy")


def save_nifti(path: str | os.PathLike, img: nib.Nifti1Image) -> str:
    """Save a nibabel image atomically; the temp name keeps the extension so gzip is applied for .nii.gz."""
    path = os.fspath(path)
    suffix = ".nii.gz" if path.endswith(".nii.gz") else os.path.splitext(path)[1]
    return atomic_write(path, lambda tmp: nib.save(img, tmp), suffix=suffix)
