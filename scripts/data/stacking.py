"""Assemble per-contrast slice stacks into the tensors the networks and trainers consume.

Output (N slices of one subject):
- ``image``: (N, len(inputs), H, W) float32 in [-1, 1], channels in the task's input order (c1, c2, c3);
- ``label``: (N, 1, H, W) float32 in [-1, 1], the target (absent when the target was not loaded);
- ``brain_mask`` / ``lesion``: (N, 1, H, W) float32 in {0, 1} (lesion only when the subject has one).
The [0, 1] -> [-1, 1] map is the reference loader's ``(x - 0.5) / 0.5`` on float32.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.transforms import MapTransform

from .errors import DataError
from .tasks import Task, resolve_task

__all__ = ["TaskStackd", "to_symmetric"]


def to_symmetric(x: np.ndarray) -> np.ndarray:
    """[0, 1] -> [-1, 1] exactly as the reference loader (float32)."""
    return (np.asarray(x, dtype=np.float32) - np.float32(0.5)) / np.float32(0.5)


class TaskStackd(MapTransform):
    """Stack the task's contrast slices into ``image``/``label`` and add a channel axis to the masks.

    Args:
        task: a task name, ``Task`` or mapping (see ``resolve_task``).
        require_target: raise if the target is missing (training); False for inference without a target.
        mask_keys: masks passed through as (N, 1, H, W).
        keep_contrasts: keep the per-contrast (N, H, W) stacks (in [0, 1]) next to ``image``/``label``.
    """

    def __init__(
        self,
        task: str | Task | Mapping,
        require_target: bool = True,
        mask_keys: Sequence[str] = ("brain_mask", "lesion"),
        keep_contrasts: bool = False,
        image_key: str = "image",
        label_key: str = "label",
    ) -> None:
        self.task = resolve_task(task)
        super().__init__(self.task.contrasts, allow_missing_keys=not require_target)
        self.require_target = require_target
        self.mask_keys = tuple(mask_keys)
        self.keep_contrasts = keep_contrasts
        self.image_key = image_key
        self.label_key = label_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        missing = [c for c in self.task.inputs if c not in d]
        if missing:
            raise DataError(f"task {self.task.describe()}: input stacks {missing} are missing")
        d[self.image_key] = to_symmetric(np.stack([d[c] for c in self.task.inputs], axis=1))
        if self.task.target in d:
            d[self.label_key] = to_symmetric(np.asarray(d[self.task.target])[:, None])
        elif self.require_target:
            raise DataError(f"task {self.task.describe()}: target {self.task.target!r} is missing")
        for key in self.mask_keys:
            if key in d:
                d[key] = np.asarray(d[key], dtype=np.float32)[:, None]
        if not self.keep_contrasts:
            for c in self.task.contrasts:
                d.pop(c, None)
        return d
