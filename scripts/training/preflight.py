"""Checks run in a training config's ``initialize``, before any network or dataset is built.

``python -m monai.bundle run`` wraps every exception raised while a config is evaluated in several layers of
``RuntimeError("Failed to evaluate ...")``, so the user's real mistake ends up far above the last line.
These checks raise :class:`TrainingSetupError`, a ``SystemExit`` subclass: MONAI does not wrap it, and the
command ends with exit status 1 and one readable line naming the file and the problem.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import nibabel as nib
from scripts.data.datalist import load_datalist
from scripts.data.errors import DataError
from scripts.data.io_utils import ensure_writable_dir
from scripts.data.tasks import resolve_task

from .checkpoint import ResumeCheckpoint, ResumeCheckpointError


class TrainingSetupError(SystemExit):
    """A training run cannot start as configured; ``str(err)`` says why, naming the file or key."""

    def __init__(self, message: str) -> None:
        super().__init__(f"error: {message}")
        self.message = message

    def __str__(self) -> str:
        return self.message


def _check_items(path: str, split: str, items: Sequence[Mapping[str, Any]], contrasts: Sequence[str]) -> None:
    for index, item in enumerate(items):
        subject = item.get("subject", f"item {index}")
        missing = [c for c in contrasts if c not in item]
        if missing:
            raise TrainingSetupError(
                f"{path}: subject {subject!r} in split {split!r} lacks contrast(s) {missing} "
                f"(the task needs {list(contrasts)}; it has {sorted(k for k in item if k != 'subject')})"
            )
        for key in [*contrasts, *(k for k in ("lesion", "brain_mask") if k in item)]:
            file = item[key]
            if not os.path.isfile(file):
                raise TrainingSetupError(f"{path}: subject {subject!r}: {key} file not found: {file}")
            try:
                nib.load(file)
            except Exception as exc:  # nibabel raises several types for unreadable headers
                raise TrainingSetupError(f"{file}: cannot read the NIfTI header of {key} ({exc})") from None


def check_training_inputs(
    datalist: str,
    task: Any,
    splits: Sequence[str] = ("training", "validation"),
    resume_ckpt: str | None = None,
    fingerprint: Mapping[str, Any] | None = None,
    finetune_ckpt: str | None = None,
    ckpt_dir: str | None = None,
) -> bool:
    """Fail fast on a missing or incomplete dataset, an incompatible resume checkpoint, a missing weight file, a
    checkpoint folder that cannot be written (else found only at the first save, after a whole epoch).

    Returns True so the config expression has a value; raises :class:`TrainingSetupError` otherwise.
    """
    try:
        contrasts = resolve_task(task).contrasts
        for split in splits:
            items = load_datalist(datalist, split)
            if not items:
                raise TrainingSetupError(f"{datalist}: split {split!r} is empty")
            _check_items(datalist, split, items, contrasts)
    except DataError as exc:
        raise TrainingSetupError(str(exc)) from None
    if ckpt_dir is not None:
        try:
            ensure_writable_dir(ckpt_dir, "checkpoint folder (ckpt_dir)", "set --ckpt_dir to a writable folder")
        except PermissionError as exc:  # (the check also removes temporary files a killed run left there)
            raise TrainingSetupError(str(exc)) from None
    if finetune_ckpt is not None and not os.path.isfile(finetune_ckpt):
        raise TrainingSetupError(f"finetune_ckpt not found: {finetune_ckpt}")
    if resume_ckpt is not None:
        try:
            ResumeCheckpoint(resume_ckpt, {}, fingerprint=fingerprint).check()
        except ResumeCheckpointError as exc:
            raise TrainingSetupError(str(exc)) from None
    return True
