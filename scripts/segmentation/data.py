"""Slices for the downstream segmentation: the four contrasts as channels, the BraTS regions as targets.

The subjects go through the synthesis pipeline (``scripts.data.build_volume_transforms``: same orientation,
normalization and slicing), so a synthesized contrast reaches the segmentation network exactly as the real one
would. ``image``: (4, H, W) in [-1, 1], channels ``SEG_CONTRASTS``; ``label``: (3, H, W) in {0, 1}, channels
``REGIONS`` (whole tumour, tumour core, enhancing tumour, the BraTS evaluation regions).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from scripts.data import DataError, build_volume_transforms, prepare_subject
from scripts.data.contrasts import BRATS_CONTRASTS

__all__ = ["REGIONS", "SEG_CONTRASTS", "SegmentationSlices", "segmentation_transform", "subject_stack", "with_target"]

#: Input channels, in this order (a task's inputs then its target, so the pipeline loads all four)
SEG_CONTRASTS: tuple[str, ...] = BRATS_CONTRASTS
#: BraTS evaluation regions -> labels (1 necrotic/non-enhancing core, 2 oedema, 4 enhancing tumour)
REGIONS: dict[str, tuple[int, ...]] = {"wt": (1, 2, 4), "tc": (1, 4), "et": (4,)}
#: Value of an empty (missing) channel: the background of the [-1, 1] inputs
EMPTY = -1.0


def segmentation_transform(
    spatial_size: int = 128, num_slices: int = 80, slice_mode: str = "reference", reader: str = "nibabel"
):
    """The subject pipeline: ``t1, t1ce, t2 -> flair`` stacks (all four contrasts) plus the region masks."""
    task = f"{','.join(SEG_CONTRASTS[:-1])}->{SEG_CONTRASTS[-1]}"
    return build_volume_transforms(
        task=task,
        mode=slice_mode,
        num_slices=num_slices,
        spatial_size=spatial_size,
        reader=reader,
        label_regions=REGIONS,
    )


def with_target(item: Mapping[str, Any], contrast: str, source: str | None) -> dict[str, Any]:
    """``item`` with ``contrast`` read from ``source`` (a synthesis, or another contrast's file for the copy
    baseline); ``source=None`` marks the contrast missing (its channel is left empty by ``subject_stack``)."""
    if contrast not in SEG_CONTRASTS:
        raise DataError(f"segmentation inputs are {list(SEG_CONTRASTS)}, not {contrast!r}")
    out = dict(item)
    out[contrast] = source if source is not None else item[SEG_CONTRASTS[0]]
    if source is None:
        out["_empty"] = contrast
    return out


def subject_stack(item: Mapping[str, Any], transform: Any) -> dict[str, Any]:
    """One subject: ``image`` (N, 4, H, W), ``label`` (N, 3, H, W) when it has a lesion file, ``brain_mask``."""
    subject = str(item.get("subject"))
    data = prepare_subject({k: v for k, v in item.items() if k != "_empty"}, transform)
    image = np.concatenate([np.asarray(data["image"]), np.asarray(data["label"])], axis=1).astype(np.float32)
    empty = item.get("_empty")
    if empty:
        image[:, SEG_CONTRASTS.index(str(empty))] = EMPTY
    out: dict[str, Any] = {"subject": subject, "image": image, "brain_mask": np.asarray(data["brain_mask"])}
    if all(name in data for name in REGIONS):
        out["label"] = np.concatenate([np.asarray(data[name]) for name in REGIONS], axis=1).astype(np.float32)
    out["geometry"] = data.get("geometry")
    return out


class SegmentationSlices(torch.utils.data.Dataset):
    """Every slice of ``items`` (processed once, kept in memory: about 6 MB per subject at 128x128) for training.

    Subjects without a lesion file are refused: the segmentation learns from expert labels only. ``augment`` is
    applied to each ``{"image", "label"}`` slice (training augmentation).
    """

    def __init__(
        self, items: Sequence[Mapping[str, Any]], transform: Any, augment: Callable[[dict], dict] | None = None
    ) -> None:
        if not items:
            raise DataError("segmentation: the datalist split is empty")
        images, labels = [], []
        for item in items:
            stack = subject_stack(item, transform)
            if "label" not in stack:
                raise DataError(f"subject {stack['subject']}: no 'lesion' (BraTS label) file to learn from")
            images.append(stack["image"])
            labels.append(stack["label"])
        self.image = torch.from_numpy(np.concatenate(images))
        self.label = torch.from_numpy(np.concatenate(labels))
        self.augment = augment

    def __len__(self) -> int:
        return int(self.image.shape[0])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = {"image": self.image[i], "label": self.label[i]}
        return self.augment(item) if self.augment is not None else item
