"""Atomic writers: every output goes to a temporary file in the destination folder, then ``os.replace``.

Why: an interrupted run must never leave a half-written datalist, array, volume or checkpoint that a later run
trusts. This module is the one home of that mechanism: ``staged_files`` commits several files together (a synthesis
and its uncertainty map, a report's CSVs and JSON), ``atomic_write`` is the one-file case, and every temporary file
starts with ``TMP_PREFIX`` so readers can skip it. A temporary file is removed when its block fails, when the process
gets SIGTERM (turned into ``SystemExit`` so the cleanup runs), and, after a SIGKILL, by the next run that checks the
folder (``ensure_writable_dir`` sweeps the temporary files of processes that no longer exist: their names carry the
writer's process id).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import nibabel as nib
import numpy as np

__all__ = [
    "TMP_PREFIX",
    "ensure_writable_dir",
    "sweep_stale_temporaries",
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

#: A temporary file without a live writer's process id in its name is removed once it is this old (seconds)
STALE_AFTER = 3600.0
logger = logging.getLogger(__name__)

_UMASK = os.umask(0)
os.umask(_UMASK)


def _prefix() -> str:
    return f"{TMP_PREFIX}{os.getpid()}_"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    return True


def sweep_stale_temporaries(folder: str | os.PathLike) -> list[str]:
    """Remove the temporary files a killed run left in ``folder`` (those of processes that no longer exist, and any
    older than ``STALE_AFTER``); returns their paths. Another live run's temporary files are left alone."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(TMP_PREFIX) or not entry.is_file(follow_symlinks=False):
            continue
        pid_text = entry.name[len(TMP_PREFIX) :].split("_", 1)[0]
        try:
            stale = not _alive(int(pid_text)) if pid_text.isdigit() else False
            stale = stale or time.time() - entry.stat(follow_symlinks=False).st_mtime > STALE_AFTER
            if stale:
                os.remove(entry.path)
                removed.append(entry.path)
        except OSError:
            continue
    if removed:
        logger.info("%s: removed %d temporary file(s) left by an interrupted run", folder, len(removed))
    return removed


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _clean_up_on_sigterm() -> None:
    """SIGTERM ends the process without running ``finally`` blocks; as ``SystemExit`` it runs them (main thread,
    and only where nobody installed a handler of their own)."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminate)


def ensure_writable_dir(path: str | os.PathLike, what: str = "output folder", fix: str = "") -> Path:
    """Create ``path`` if needed and prove it is writable now (a probe file), before any work is done; temporary
    files a killed run left there are removed. The error names the folder as ``what`` and ends with ``fix``."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=_prefix(), dir=folder)
        os.close(fd)
        os.remove(probe)
    except OSError as error:
        blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
        reason = f"{blocker} is a file, not a folder" if blocker is not None else (error.strerror or str(error))
        raise PermissionError(f"{what} {folder} is not writable: {reason}" + (f"; {fix}" if fix else "")) from None
    sweep_stale_temporaries(folder)
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
    _clean_up_on_sigterm()
    try:
        for key, target in targets.items():
            target = os.fspath(target)
            folder = os.path.dirname(os.path.abspath(target))
            os.makedirs(folder, exist_ok=True)
            fd, temps[key] = tempfile.mkstemp(prefix=_prefix(), suffix=_suffix(target), dir=folder)
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
