"""Validate loaded volumes and bring the contrasts of a subject onto one voxel grid.

Why: silently mixing grids (a FLAIR with 5 mm slices next to a 2 mm DWI) or normalizing a NaN-filled volume
gives plausible-looking but wrong training data. Every problem here raises a ``DataError`` naming the file.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, ResampleToMatch

from .errors import DataError
from .loading import filename_of

__all__ = ["CheckVolumesd", "EnsureSameGridd", "RecordGridd", "affine_of", "same_grid"]


def affine_of(img: Any) -> np.ndarray:
    """4x4 voxel-to-world (RAS) affine of a MetaTensor as float64 numpy."""
    aff = getattr(img, "affine", None)
    if aff is None:
        raise DataError(f"{filename_of(img)}: no affine in the image metadata")
    return np.asarray(aff.detach().cpu().numpy() if isinstance(aff, torch.Tensor) else aff, dtype=np.float64)


def same_grid(a: Any, b: Any, atol: float) -> tuple[bool, str]:
    """Compare spatial shape and affine of two channel-first images; returns (same, human-readable difference)."""
    sa, sb = tuple(a.shape[1:]), tuple(b.shape[1:])
    diff = float(np.abs(affine_of(a) - affine_of(b)).max())
    if sa != sb:
        return False, f"shape {sa} vs {sb}, max affine difference {diff:.3g}"
    if diff > atol:
        return False, f"same shape {sa} but affines differ by up to {diff:.3g} (tolerance {atol:g})"
    return True, ""


class CheckVolumesd(MapTransform):
    """Reject non-finite voxels in any volume and constant (blank) image volumes.

    Args:
        keys: image keys (must contain finite, non-constant data).
        mask_keys: mask keys (must be finite; an all-zero lesion mask is allowed).
    """

    def __init__(self, keys: KeysCollection, mask_keys: Sequence[str] = ("lesion", "brain_mask")) -> None:
        super().__init__(keys, allow_missing_keys=False)
        self.mask_keys = tuple(mask_keys)

    @staticmethod
    def _check_finite(key: Hashable, img: Any, extremes: tuple[float, float] | None = None) -> None:
        """Raise on NaN/Inf. ``extremes`` (min, max) are enough when given: min and max propagate NaN and are
        infinite when any voxel is, so a full ``isfinite`` pass (a third of the check's time) is only needed
        to count the bad voxels for the message."""
        arr = img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(img)
        if extremes is not None and all(np.isfinite(extremes)):
            return
        finite = torch.isfinite(arr)
        if not bool(finite.all()):
            n_nan = int(torch.isnan(arr).sum())
            n_inf = int((~finite).sum()) - n_nan
            raise DataError(
                f"{filename_of(img)}: {n_nan} NaN and {n_inf} Inf voxels ({key!r}); "
                "replace them (e.g. by 0 outside the brain) before using this file"
            )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            arr = img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(img)
            if arr.dtype == torch.bool:
                arr = arr.to(torch.uint8)
            lo, hi = (float(v) for v in torch.aminmax(arr)) if arr.numel() else (0.0, 0.0)
            self._check_finite(key, img, (lo, hi))
            if lo == hi:
                raise DataError(
                    f"{filename_of(img)}: constant volume (every voxel = {lo:g}, {key!r}); "
                    "an empty or blank scan cannot be intensity-normalized"
                )
        for key in self.mask_keys:
            if key in d:
                mask = d[key].as_tensor() if isinstance(d[key], MetaTensor) else torch.as_tensor(d[key])
                if mask.is_floating_point() and mask.numel():
                    self._check_finite(key, d[key], tuple(float(v) for v in torch.aminmax(mask)))
        return d


class EnsureSameGridd(MapTransform):
    """Check that all volumes share the grid of ``reference_key``; optionally resample images onto it.

    Resampling is done in world coordinates with MONAI's ``ResampleToMatch`` (trilinear, zeros outside the
    source field of view), which is what a FLAIR acquired on its own grid needs. Masks are never resampled:
    a mask on another grid is an error, because interpolating a label silently changes what it marks.

    Args:
        keys: image keys to check (``reference_key`` must be one of them or present in the data).
        reference_key: the key whose grid every other volume must share (default: first of ``keys``).
        mask_keys: optional mask keys that must already be on the reference grid.
        resample: resample images that are on another grid instead of raising.
        atol: tolerance on affine entries (mm / direction cosines) for "same grid".
    """

    def __init__(
        self,
        keys: KeysCollection,
        reference_key: str | None = None,
        mask_keys: Sequence[str] = ("lesion", "brain_mask"),
        resample: bool = False,
        atol: float = 1e-3,
    ) -> None:
        super().__init__(keys, allow_missing_keys=False)
        self.reference_key = reference_key or self.keys[0]
        self.mask_keys = tuple(mask_keys)
        self.resample = resample
        self.atol = atol
        self._resampler = ResampleToMatch(mode="bilinear", padding_mode="zeros", dtype=np.float64)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.reference_key not in d:
            raise DataError(f"grid reference {self.reference_key!r} is not among the loaded volumes {sorted(d)}")
        ref = d[self.reference_key]
        ref_name = filename_of(ref)
        for key in self.key_iterator(d):
            if key == self.reference_key:
                continue
            ok, why = same_grid(d[key], ref, self.atol)
            if ok:
                continue
            if not self.resample:
                raise DataError(
                    f"{filename_of(d[key])} ({key!r}) is not on the grid of {ref_name} ({self.reference_key!r}): "
                    f"{why}; set resample=True to resample it onto the reference grid in world coordinates"
                )
            src_dtype = d[key].dtype
            out = self._resampler(d[key], img_dst=ref)
            out = out.to(src_dtype) if isinstance(out, torch.Tensor) else out
            if isinstance(out, MetaTensor):
                out.meta["filename_or_obj"] = filename_of(d[key])
                out.meta["resampled_to"] = ref_name
            d[key] = out
        for key in self.mask_keys:
            if key in d:
                ok, why = same_grid(d[key], ref, self.atol)
                if not ok:
                    raise DataError(
                        f"mask {filename_of(d[key])} ({key!r}) is not on the grid of {ref_name} "
                        f"({self.reference_key!r}): {why}; masks are not resampled, provide one on the image grid"
                    )
        return d


class RecordGridd(MapTransform):
    """Store the subject's original grid (shape, affine, file) under ``grid_key`` before any reorientation.

    This is what ``restore_volume`` needs to write a synthesized stack back onto the input grid.
    """

    def __init__(self, reference_key: str, grid_key: str = "grid") -> None:
        super().__init__([reference_key], allow_missing_keys=False)
        self.reference_key = reference_key
        self.grid_key = grid_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        ref = d[self.reference_key]
        d[self.grid_key] = {
            "shape": [int(s) for s in ref.shape[1:]],
            "affine": affine_of(ref).tolist(),
            "file": filename_of(ref),
        }
        return d
