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

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from .errors import DataError
from .loading import filename_of

__all__ = ["reference_normalize", "NonzeroPercentileNormalized", "BrainMaskd", "BinarizeMaskd", "LabelRegionsd"]


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


_CHUNK = 1 << 15  # voxels per block of the normalization: float64 temporaries stay in the L2 cache


def reference_normalize(
    volume: np.ndarray, lower: float = 1.0, upper: float = 99.0, name: str = "volume", dtype: Any = np.float64
) -> tuple[np.ndarray, float, float]:
    """The reference percentile clip + min-max to [0, 1]; returns (normalized, p_lo, p_hi).

    The arithmetic is the reference's, in float64: percentiles of the positive voxels (numpy, linear), then
    ``(clip(v, p_lo, p_hi) - lo) / (hi - lo)`` with lo, hi the clipped volume's min and max. The result is rounded
    once to ``dtype`` (float64 by default, i.e. unrounded). For speed (it was a third of a subject's preparation)
    lo and hi come from the unclipped extremes (clipping is monotone, so ``min(clip(v)) == clip(min(v))``) and
    the clip/shift/scale runs block by block in place, without whole-volume float64 temporaries; the values are
    bit-for-bit those of the straightforward formula. ``volume`` is never modified.
    """
    v = np.asarray(volume)
    if not np.issubdtype(v.dtype, np.floating) or v.dtype.itemsize > 8:
        v = v.astype(np.float64)
    positive = v[v > 0].astype(np.float64, copy=False)
    if positive.size == 0:
        raise DataError(f"{name}: no strictly positive voxel, so the 1-99 percentile normalization is undefined")
    p_lo, p_hi = np.percentile(positive, [lower, upper])
    lo, hi = (float(np.clip(np.float64(e), p_lo, p_hi)) for e in (v.min(), v.max()))
    if not hi > lo:
        raise DataError(
            f"{name}: the {lower:g} and {upper:g} percentiles of the positive voxels are equal ({p_lo:g}): "
            "a (near-)binary or constant image (e.g. random 0/1 test data) cannot be normalized; use real MRI"
        )
    span = hi - lo
    order = "F" if v.flags.f_contiguous and not v.flags.c_contiguous else "C"  # NIfTI data is Fortran-ordered
    flat = v.ravel(order=order)  # a view unless v is not contiguous
    out = np.empty(v.shape, dtype=dtype, order=order)
    flat_out = out.ravel(order=order)
    buf = np.empty(min(_CHUNK, flat.size), dtype=np.float64)
    for start in range(0, flat.size, _CHUNK):
        block = buf[: min(_CHUNK, flat.size - start)]
        np.maximum(flat[start : start + block.size], p_lo, out=block, dtype=np.float64)  # clip (NaN: checked)
        np.minimum(block, p_hi, out=block)
        np.subtract(block, lo, out=block)
        np.divide(block, span, out=block)
        flat_out[start : start + block.size] = block
    return out, float(p_lo), float(p_hi)


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
            dtype = arr.dtype if np.issubdtype(arr.dtype, np.floating) else np.float64
            out, p_lo, p_hi = reference_normalize(
                arr, self.lower, self.upper, name=f"{filename_of(img)} ({key!r})", dtype=dtype
            )
            d[key] = _like(out, img)
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


class LabelRegionsd(MapTransform):
    """Binary region masks from a label map, before it is binarized: ``{name: labels}`` -> ``d[name]`` = 1 where the
    label map holds any of ``labels`` (BraTS: whole tumour 1, 2, 4; tumour core 1, 4; enhancing tumour 4). A subject
    without the label map gets no region keys."""

    def __init__(self, regions: Mapping[str, Sequence[int]], key: str = "lesion") -> None:
        super().__init__([key], allow_missing_keys=True)
        self.regions = {str(name): tuple(int(v) for v in labels) for name, labels in regions.items()}

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            labels = np.rint(_as_numpy(d[key]))
            for name, values in self.regions.items():
                d[name] = _like(np.isin(labels, values).astype(np.float32), d[key])
        return d
