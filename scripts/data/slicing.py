"""Axial slice extraction (two modes) and the exact way back from a slice stack to the subject's grid.

Axis convention. After loading and reorientation to the canonical ``LPS`` orientation a volume is ``(1, X, Y, Z)``
with X towards patient Left, Y towards Posterior, Z towards Superior (the BraTS/SRI24 layout the published weights
were trained on). Axial slice ``z`` is ``vol[0, :, :, z]`` with shape ``(X, Y)``; every stacked slice is its
transpose, ``(H, W) = (Y, X)``: anterior at the top, patient right on the image left (radiological view), exactly
like the reference loader's H<->W swap of ``data[:, :, z]``.

Modes:
- ``reference``: the ``num_slices`` (80) middle slices, ``start = (D - num_slices) // 2``, each resized to 256x256 by
  ``skimage.transform.resize(order=1, mode="constant", anti_aliasing=True)`` and then transposed: bit-for-bit the
  reference pre-processing. Volumes with fewer than ``num_slices`` slices: ``short_volume="all"`` (default) keeps
  every slice (with a warning; the reference code itself would crash there), ``"error"`` raises.
- ``volume``: every axial slice, transposed and zero-padded (centred, never resized) to a size the networks accept:
  each side rounded up to a multiple of ``divisor`` or an explicit ``spatial_size``. ``restore_volume`` inverts it
  exactly.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from scripts.cli_args import parse_int
from skimage.transform import resize

from .checks import affine_of
from .errors import DataError

__all__ = [
    "MODES",
    "SliceGeometry",
    "ExtractAxialSlicesd",
    "SliceStackToVolumed",
    "restore_volume",
    "select_slices",
    "plane_size_for",
]

MODES: tuple[str, ...] = ("reference", "volume")
logger = logging.getLogger(__name__)


@dataclass
class SliceGeometry:
    """Everything needed to map a slice stack back to the subject's original voxel grid (JSON-serializable)."""

    mode: str
    slice_indices: list[int]
    canonical_shape: list[int]
    canonical_affine: list[list[float]]
    original_shape: list[int]
    original_affine: list[list[float]]
    plane_size: list[int]
    pad: list[int] = field(default_factory=lambda: [0, 0, 0, 0])  # top, bottom, left, right

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | SliceGeometry) -> SliceGeometry:
        if isinstance(d, SliceGeometry):
            return d
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, (str, int, float)):
        side = parse_int(size, "spatial_size", DataError, minimum=1)
        return side, side
    pair = tuple(parse_int(s, "spatial_size", DataError, minimum=1) for s in size)
    if len(pair) != 2:
        raise DataError(f"--spatial_size must be an int or (H, W), got {size}")
    return pair  # type: ignore[return-value]


def select_slices(depth: int, mode: str, num_slices: int = 80, short_volume: str = "all", name: str = "") -> list[int]:
    """Indices of the axial slices a mode takes from a volume with ``depth`` slices."""
    if mode == "volume":
        return list(range(depth))
    if mode != "reference":
        raise DataError(f"unknown slice mode {mode!r}; valid modes: {', '.join(MODES)}")
    if depth >= num_slices:
        start = (depth - num_slices) // 2
        return list(range(start, start + num_slices))
    if short_volume == "error":
        raise DataError(
            f"{name}: only {depth} axial slices, reference mode needs {num_slices}; "
            "use short_volume='all' to take every slice, or mode='volume'"
        )
    if short_volume != "all":
        raise DataError(f"short_volume must be 'all' or 'error', got {short_volume!r}")
    logger.warning("%s: only %d axial slices (< %d); reference mode takes all of them", name, depth, num_slices)
    return list(range(depth))


def plane_size_for(
    height: int, width: int, mode: str, spatial_size: int | Sequence[int] | None, divisor: int
) -> tuple[int, int]:
    """Output (H, W) of a stacked slice whose transposed source slice is (height, width)."""
    if mode == "reference":
        return _pair(256 if spatial_size is None else spatial_size)
    if spatial_size is not None:
        out_h, out_w = _pair(spatial_size)
        if out_h < height or out_w < width:
            raise DataError(
                f"slices are {height}x{width} (HxW) but spatial_size is {out_h}x{out_w}; volume mode pads and never "
                "crops, so use a larger spatial_size or spatial_size=None with a divisor"
            )
        return out_h, out_w
    if divisor < 1:
        raise DataError(f"divisor must be >= 1, got {divisor}")
    return math.ceil(height / divisor) * divisor, math.ceil(width / divisor) * divisor


def _resize_reference(sl: np.ndarray, out_hw: tuple[int, int], is_mask: bool) -> np.ndarray:
    """Reference resize of one (X, Y) slice, then transpose to (H, W)."""
    target = (out_hw[1], out_hw[0])  # resized in (X, Y) order, transposed afterwards
    if is_mask:
        r = resize(sl, target, order=0, mode="constant", anti_aliasing=False, preserve_range=True)
        return (r > 0.5).T
    return resize(sl, target, order=1, mode="constant", anti_aliasing=True).T


def _zoom_taps(n_in: int, n_out: int, order: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source taps along one axis of ``scipy.ndimage.zoom(grid_mode=True, mode="grid-constant")`` (what
    ``skimage.transform.resize(mode="constant")`` calls), for up-sampling or equal size.

    Returns ``(i0, i1, w0, w1)`` per output index, indices into the axis padded by one zero on each side (taps
    outside the input read the constant 0): output coordinate ``c = (k + 0.5) * n_in / n_out - 0.5``; order 1:
    ``v[floor(c)] * (1 - frac) + v[floor(c) + 1] * frac``; order 0: ``v[floor(c + 0.5)]`` (weights 1 and 0).
    """
    cc = ((np.arange(n_out, dtype=np.float64) + 0.5) * (np.float64(n_in) / np.float64(n_out))) - 0.5
    if order == 0:
        i0 = np.floor(cc + 0.5).astype(np.intp) + 1
        return i0, i0, np.ones(n_out), np.zeros(n_out)
    start = np.floor(cc)
    frac = cc - start
    i0 = start.astype(np.intp) + 1
    return i0, i0 + 1, 1.0 - frac, frac


def _tap_span(taps: tuple[np.ndarray, np.ndarray], lo: int, hi: int) -> tuple[int, int]:
    """Output index range [a, b) whose taps reach source indices in [lo, hi] (outside it every tap reads 0)."""
    hit = np.flatnonzero(((taps[0] >= lo) & (taps[0] <= hi)) | ((taps[1] >= lo) & (taps[1] <= hi)))
    return (int(hit[0]), int(hit[-1]) + 1) if hit.size else (0, 0)


def _resize_stack_reference(
    vol: np.ndarray, indices: Sequence[int], out_hw: tuple[int, int], is_mask: bool
) -> np.ndarray:
    """``np.stack([_resize_reference(vol[:, :, z], out_hw, is_mask) for z in indices])``, vectorised.

    Why: the per-slice ``skimage.transform.resize`` was about half of a subject's preparation time. When no axis
    is down-sampled, skimage's anti-aliasing blur has sigma 0 (a plain copy), so the resize is ``ndimage.zoom``
    (order 1 for images, 0 for masks, ``grid-constant`` 0 outside the input, ``grid_mode``) followed by a clip to
    the slice's value range. This computes the same sums in the same floating-point order (float64 accumulation,
    each term ``(value * w_x) * w_y``, taps in ndimage's order, one rounding to the output dtype), so the result
    is bit-for-bit identical; and it skips the output rows and columns whose taps all read zeros (they are
    exactly 0 either way). Down-sampling (a real Gaussian blur) falls back to the per-slice reference.
    vol (X, Y, Z) -> (N, H, W) of vol's dtype for images, bool for masks.
    """
    size_x, size_y = vol.shape[:2]
    out_h, out_w = out_hw
    if out_h < size_y or out_w < size_x or vol.dtype not in (np.float32, np.float64):
        return np.stack([_resize_reference(vol[:, :, z], out_hw, is_mask) for z in indices])
    order = 0 if is_mask else 1
    x0, x1, wx0, wx1 = _zoom_taps(size_x, out_w, order)  # along W (the slice's first axis)
    y0, y1, wy0, wy1 = _zoom_taps(size_y, out_h, order)  # along H
    idx = list(indices)
    contiguous = bool(idx) and idx == list(range(idx[0], idx[0] + len(idx)))
    picked = vol[:, :, idx[0] : idx[0] + len(idx)] if contiguous else vol[:, :, idx]
    # slices as (Y, X) = (H, W) sources (no final transpose), with the one-voxel zero border the taps index
    src = np.zeros((len(idx), size_y + 2, size_x + 2), dtype=vol.dtype)
    src[:, 1:-1, 1:-1] = picked.transpose(2, 1, 0)
    out = np.zeros((len(idx), out_h, out_w), dtype=bool if is_mask else vol.dtype)
    nonzero = src != 0
    rows, cols = np.flatnonzero(nonzero.any(axis=(0, 2))), np.flatnonzero(nonzero.any(axis=(0, 1)))
    if rows.size == 0:
        return out  # all zero: every output value is 0 (False for masks)
    ja, jb = _tap_span((y0, y1), int(rows[0]), int(rows[-1]))
    ia, ib = _tap_span((x0, x1), int(cols[0]), int(cols[-1]))
    y0, y1, wy0, wy1 = y0[ja:jb], y1[ja:jb], wy0[ja:jb, None], wy1[ja:jb, None]
    x0, x1, wx0, wx1 = x0[ia:ib], x1[ia:ib], wx0[ia:ib], wx1[ia:ib]
    skipped = jb - ja < out_h or ib - ia < out_w
    zero = vol.dtype.type(0)
    for k, sl in enumerate(src):
        if order == 0:
            t = sl[y0][:, x0] + 0.0
        else:
            cols0 = sl[:, x0] * wx0  # (value * w_x), formed once per source row, then gathered by output row
            cols1 = sl[:, x1] * wx1
            t = cols0[y0] * wy0  # taps in ndimage's order: (x0, y0), (x0, y1), (x1, y0), (x1, y1)
            t += 0.0
            t += cols0[y1] * wy1
            t += cols1[y0] * wy0
            t += cols1[y1] * wy1
        r = t.astype(vol.dtype, copy=False)
        body = sl[1:-1, 1:-1]
        lo, hi = body.min(), body.max()  # skimage's clip to the input range, widened to keep the fill value 0
        r_lo, r_hi = (min(r.min(), zero), max(r.max(), zero)) if skipped else (r.min(), r.max())
        if not lo <= zero <= hi and r_lo <= zero <= r_hi:
            lo, hi = min(lo, zero), max(hi, zero)
        np.minimum(np.maximum(r, lo, out=r), hi, out=r)
        out[k, ja:jb, ia:ib] = r > 0.5 if is_mask else r  # skipped rows/columns only exist where 0 is in range
    return out


class ExtractAxialSlicesd(MapTransform):
    """Turn each ``(1, X, Y, Z)`` volume into a float32 stack ``(N, H, W)`` of transposed axial slices.

    Args:
        keys: image keys (normalized to [0, 1]); resized bilinearly in reference mode.
        mask_keys: mask keys, resized nearest-neighbour in reference mode (present ones only).
        mode: ``"reference"`` or ``"volume"`` (see module docstring).
        num_slices: slices taken in reference mode.
        spatial_size: reference mode: resize target (default 256); volume mode: explicit padded size or None.
        divisor: volume mode without ``spatial_size``: pad H and W up to a multiple of this.
        short_volume: reference mode with fewer than ``num_slices`` slices: ``"all"`` or ``"error"``.
        grid_key: item key written by ``RecordGridd`` (original grid); geometry is stored under ``geometry_key``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        mask_keys: Sequence[str] = ("brain_mask", "lesion"),
        mode: str = "reference",
        num_slices: int = 80,
        spatial_size: int | Sequence[int] | None = None,
        divisor: int = 8,
        short_volume: str = "all",
        grid_key: str = "grid",
        geometry_key: str = "geometry",
    ) -> None:
        super().__init__(keys, allow_missing_keys=False)
        if mode not in MODES:
            raise DataError(f"unknown slice mode {mode!r}; valid modes: {', '.join(MODES)}")
        if short_volume not in ("all", "error"):
            raise DataError(f"short_volume must be 'all' or 'error', got {short_volume!r}")
        self.mask_keys = tuple(mask_keys)
        self.mode = mode
        self.num_slices = parse_int(num_slices, "num_slices", DataError, minimum=1)
        if spatial_size is not None:
            _pair(spatial_size)  # a bad value fails here, before any subject is loaded
        self.spatial_size = spatial_size
        self.divisor = parse_int(divisor, "divisor", DataError, minimum=1)
        self.short_volume = short_volume
        self.grid_key = grid_key
        self.geometry_key = geometry_key

    def expected_num_slices(self, depth: int) -> int:
        """Number of slices this transform yields for a canonical volume with ``depth`` axial slices."""
        if self.mode == "volume":
            return depth
        return min(depth, self.num_slices)  # with short_volume="error" processing the subject raises

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        first = d[self.keys[0]]
        _, size_x, size_y, depth = (int(s) for s in first.shape)
        name = str(getattr(first, "meta", {}).get("filename_or_obj", self.keys[0]))
        indices = select_slices(depth, self.mode, self.num_slices, self.short_volume, name)
        out_h, out_w = plane_size_for(size_y, size_x, self.mode, self.spatial_size, self.divisor)
        top, left = (out_h - size_y) // 2, (out_w - size_x) // 2
        pad = [top, out_h - size_y - top, left, out_w - size_x - left] if self.mode == "volume" else [0, 0, 0, 0]

        masks = [k for k in self.mask_keys if k in d]
        for key in [*self.key_iterator(d), *masks]:
            img = d[key]
            arr = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
            if arr.shape[1:] != (size_x, size_y, depth):
                raise DataError(f"{key!r}: shape {arr.shape[1:]} differs from {(size_x, size_y, depth)}")
            vol = arr[0]
            is_mask = key in masks
            if self.mode == "reference":
                d[key] = _resize_stack_reference(vol, indices, (out_h, out_w), is_mask).astype(np.float32, copy=False)
            else:
                # (N, Y, X) = (N, H, W), written straight into the zero-padded float32 stack (one copy)
                stack = np.zeros((len(indices), out_h, out_w), dtype=np.float32)
                stack[:, top : top + size_y, left : left + size_x] = vol[:, :, indices].transpose(2, 1, 0)
                d[key] = stack

        grid = d.get(self.grid_key) or {"shape": [size_x, size_y, depth], "affine": affine_of(first).tolist()}
        d[self.geometry_key] = SliceGeometry(
            mode=self.mode,
            slice_indices=[int(i) for i in indices],
            canonical_shape=[size_x, size_y, depth],
            canonical_affine=affine_of(first).tolist(),
            original_shape=[int(s) for s in grid["shape"]],
            original_affine=[list(map(float, row)) for row in grid["affine"]],
            plane_size=[out_h, out_w],
            pad=pad,
        ).to_dict()
        return d


#: Smallest brain coverage a restored voxel is divided by (isolated brain voxels the resize nearly erased)
MIN_COVERAGE = 0.1


def restore_volume(
    stack: np.ndarray | torch.Tensor,
    geometry: Mapping[str, Any] | SliceGeometry,
    from_symmetric: bool = True,
    fill: float = 0.0,
    brain: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Write a slice stack back onto the subject's original grid, in the original orientation.

    Args:
        stack: ``(N, 1, H, W)`` or ``(N, H, W)`` slices in the order of ``geometry['slice_indices']``.
        geometry: the ``geometry`` entry produced by ``ExtractAxialSlicesd``.
        from_symmetric: the stack is in [-1, 1] (network range); map it to [0, 1] with ``(x + 1) / 2``.
        fill: value of voxels not covered by the stack (slices outside the reference-mode window).
        brain: the brain mask on the original grid (reference mode): voxels outside it are set to ``fill``, and
            inside it each resized value is divided by the resized brain coverage, so brain voxels next to the
            background keep their intensity instead of the darker mix with the background that the down- and
            up-sampling make (a plain resize leaves a dark rim that the per-slice normalisation of the paper
            protocol turns into a global intensity shift; measured in docs/README.md, "Demo models").

    Returns:
        ``(volume, affine)``: float32 array with the original file's shape and voxel order, and its 4x4 affine.
        Exact for ``volume`` mode; for ``reference`` mode each slice is resized back bilinearly (approximate).
    """
    geo = SliceGeometry.from_dict(geometry)
    arr = stack.detach().cpu().numpy() if isinstance(stack, torch.Tensor) else np.asarray(stack)
    if arr.ndim == 4:
        if arr.shape[1] != 1:
            raise DataError(f"restore_volume: expected (N, 1, H, W) or (N, H, W), got {arr.shape}")
        arr = arr[:, 0]
    n, h, w = arr.shape if arr.ndim == 3 else (None, None, None)
    if arr.ndim != 3 or n != len(geo.slice_indices) or [h, w] != list(geo.plane_size):
        raise DataError(
            f"restore_volume: stack shape {tuple(arr.shape)} does not match the geometry "
            f"({len(geo.slice_indices)} slices of {tuple(geo.plane_size)})"
        )
    arr = arr.astype(np.float32)
    if from_symmetric:
        arr = (arr + 1.0) / 2.0
    size_x, size_y, depth = geo.canonical_shape
    canonical = np.full((size_x, size_y, depth), fill, dtype=np.float32)
    src = nib.orientations.io_orientation(np.asarray(geo.canonical_affine))
    dst = nib.orientations.io_orientation(np.asarray(geo.original_affine))
    mask = None
    if brain is not None:
        if list(np.shape(brain)) != list(geo.original_shape):
            raise DataError(f"restore_volume: brain mask shape {np.shape(brain)} != grid {tuple(geo.original_shape)}")
        back = nib.orientations.ornt_transform(dst, src)
        mask = nib.orientations.apply_orientation(np.asarray(brain) > 0, back)
    top, bottom, left, right = geo.pad
    for pos, z in enumerate(geo.slice_indices):
        sl = arr[pos]
        if geo.mode == "volume":
            sl = sl[top : h - bottom, left : w - right]
            canonical[:, :, z] = sl.T
        elif mask is None:
            canonical[:, :, z] = resize(sl.T, (size_x, size_y), order=1, mode="constant", anti_aliasing=True)
        else:
            canonical[:, :, z] = _restore_in_brain(sl.T, mask[:, :, z], fill)
    if mask is not None and geo.mode == "volume":
        canonical[~mask] = fill
    volume = nib.orientations.apply_orientation(canonical, nib.orientations.ornt_transform(src, dst))
    if list(volume.shape) != list(geo.original_shape):
        raise DataError(f"restore_volume: reoriented shape {volume.shape} != original {tuple(geo.original_shape)}")
    return np.ascontiguousarray(volume, dtype=np.float32), np.asarray(geo.original_affine, dtype=np.float64)


def _restore_in_brain(sl: np.ndarray, brain: np.ndarray, fill: float) -> np.ndarray:
    """One reference-mode slice (X', Y') back to (X, Y) inside ``brain``: the resized values divided by the resized
    brain coverage (the forward resize of the mask, then the same way back), ``fill`` outside the brain."""
    size = brain.shape
    opts = {"order": 1, "mode": "constant", "anti_aliasing": True}
    coverage = resize(resize(brain.astype(np.float64), sl.shape, **opts), size, **opts)
    values = resize(sl, size, **opts)
    return np.where(brain, values / np.maximum(coverage, MIN_COVERAGE), fill).astype(np.float32)


class SliceStackToVolumed(MapTransform):
    """Dictionary form of ``restore_volume``: ``(N, 1, H, W)`` stacks -> ``(1, X, Y, Z)`` MetaTensors.

    The output carries the original affine, so ``SaveImaged(resample=False)`` writes it on the input grid.
    """

    def __init__(
        self, keys: KeysCollection, geometry_key: str = "geometry", from_symmetric: bool = True, fill: float = 0.0
    ) -> None:
        super().__init__(keys, allow_missing_keys=False)
        self.geometry_key = geometry_key
        self.from_symmetric = from_symmetric
        self.fill = fill

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.geometry_key not in d:
            raise DataError(f"no {self.geometry_key!r} entry: the stack cannot be placed back on its grid")
        for key in self.key_iterator(d):
            vol, affine = restore_volume(d[key], d[self.geometry_key], self.from_symmetric, self.fill)
            d[key] = MetaTensor(torch.from_numpy(vol[None]), affine=torch.from_numpy(affine))
        return d
