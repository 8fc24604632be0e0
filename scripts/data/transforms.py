"""Intensity normalization and masks, reproducing the reference pre-processing (spec 5.1).

Normalization, per volume and per contrast (``reference_normalize``):
    p_lo, p_hi = 1st and 99th percentile (numpy, linear interpolation) of the strictly positive voxels
    v = clip(volume, p_lo, p_hi);  v = (v - v.min()) / (v.max() - v.min())      -> [0, 1]
Background (0) is clipped up to p_lo and lands on exactly 0. Real skull-stripped data carry small negative values
from interpolation at the brain border; they are below p_lo too, so they also become 0 (as in the reference).
They are NOT treated as background by the brain mask, which is "non-zero in any contrast" of the raw data.
Networks see ``2 * v - 1`` (background -1); that last step happens in ``TaskStackd``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from .errors import DataError
from .loading import filename_of

__all__ = ["reference_normalize", "NonzeroPercentileNormalized", "BrainMaskd", "BinarizeMaskd"]


def _as_numpy(img: Any) -> np.ndarray:
    if isinstance(img, torch.Tensor):
        return img.detach().cpu().numpy()
    return np.asarray(img)


def _like(values: np.ndarray, img: Any) -> Any:
    """Wrap ``values`` like ``img`` (MetaTensor keeps its metadata and affine)."""
    if isinstance(img, MetaTensor):
        return MetaTensor(torch.from_numpy(np.ascontiguousarray(values)), meta=dict(img.meta))
    if isinstance(img, torch.Tensor):
        return torch.from_numpy(np.ascontiguousarray(values))
    return values


def reference_normalize(
    volume: np.ndarray, lower: float = 1.0, upper: float = 99.0, name: str = "volume"
) -> tuple[np.ndarray, float, float]:
    """The reference percentile clip + min-max to [0, 1] (float64); returns (normalized, p_lo, p_hi)."""
    v = np.asarray(volume, dtype=np.float64)
    positive = v[v > 0]
    if positive.size == 0:
        raise DataError(f"{name}: no strictly positive voxel, so the 1-99 percentile normalization is undefined")
    p_lo, p_hi = np.percentile(positive, [lower, upper])
    clipped = np.clip(v, p_lo, p_hi)
    lo, hi = clipped.min(), clipped.max()
    if not hi > lo:
        raise DataError(
            f"{name}: the {lower:g}th and {upper:g}th percentiles of the positive voxels are equal ({p_lo:g}); "
            "a (near-)binary or constant image cannot be normalized"
        )
    return (clipped - lo) / (hi - lo), float(p_lo), float(p_hi)


class NonzeroPercentileNormalized(MapTransform):
    """Apply ``reference_normalize`` to each key; the percentiles are kept in ``meta['percentile_range']``.

    Unlike MONAI's ``ScaleIntensityRangePercentilesd`` the percentiles are taken over strictly positive voxels
    only, which is what the published model was trained with.
    """

    def __init__(self, keys: KeysCollection, lower: float = 1.0, upper: float = 99.0) -> None:
        super().__init__(keys, allow_missing_keys=False)
        if not 0.0 <= lower < upper <= 100.0:
            raise DataError(f"percentiles must satisfy 0 <= lower < upper <= 100, got {lower}, {upper}")
        self.lower = lower
        self.upper = upper

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            arr = _as_numpy(img)
            out, p_lo, p_hi = reference_normalize(arr, self.lower, self.upper, name=f"{filename_of(img)} ({key!r})")
            d[key] = _like(out.astype(arr.dtype, copy=False), img)
            if isinstance(d[key], MetaTensor):
                d[key].meta["percentile_range"] = [p_lo, p_hi]
        return d


class BrainMaskd(MapTransform):
    """Provide a binary ``brain_mask`` (1, X, Y, Z): binarize the given one, or derive it from the raw contrasts.

    The derived mask is "non-zero in any of ``keys``" (negative interpolation residue counts as brain), computed
    before normalization; put this transform after the grid check and before ``NonzeroPercentileNormalized``.
    """

    def __init__(self, keys: KeysCollection, mask_key: str = "brain_mask") -> None:
        super().__init__(keys, allow_missing_keys=False)
        self.mask_key = mask_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.mask_key in d:
            src = d[self.mask_key]
            mask = _as_numpy(src) > 0
            if not mask.any():
                raise DataError(f"{filename_of(src)}: brain mask ({self.mask_key!r}) is empty")
            d[self.mask_key] = _like(mask.astype(np.float32), src)
            return d
        keys = list(self.key_iterator(d))
        if not keys:
            raise DataError(f"cannot derive {self.mask_key!r}: none of {list(self.keys)} is loaded")
        mask = np.zeros(_as_numpy(d[keys[0]]).shape, dtype=bool)
        for key in keys:
            mask |= _as_numpy(d[key]) != 0
        out = _like(mask.astype(np.float32), d[keys[0]])
        if isinstance(out, MetaTensor):
            out.meta["filename_or_obj"] = f"derived: non-zero in any of {keys}"
        d[self.mask_key] = out
        return d


class BinarizeMaskd(MapTransform):
    """Turn label maps (e.g. BraTS labels 1, 2, 4) into a {0, 1} float mask: 1 where the label is > 0."""

    def __init__(self, keys: KeysCollection = ("lesion",), allow_missing_keys: bool = True) -> None:
        super().__init__(keys, allow_missing_keys=allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = _like((_as_numpy(d[key]) > 0).astype(np.float32), d[key])
        return d
