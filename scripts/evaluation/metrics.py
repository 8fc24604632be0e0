"""Standard float metrics on [0, 1] (2D per slice / per subject) and the BraSyn-style 3D SSIM.

Two metric families live here; the paper's 8-bit protocol is in :mod:`scripts.evaluation.paper_protocol`.

Float family (``float_<region>_<metric>``, region in whole/brain/lesion), on volumes normalised to [0, 1]:
- PSNR = 10 log10(1 / MSE), MSE over the voxels in the region (data range 1): ``monai.metrics.PSNRMetric(max_val=1)``
  applied to the region's voxels (computed with numpy, which is the same number without the per-call overhead).
- MAE = mean |pred - ref| over the voxels in the region: ``monai.metrics.MAEMetric`` on the region's voxels.
- SSIM = the SSIM map of ``monai.metrics.SSIMMetric`` (Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03, data range
  1, "valid" convolution so the map is 10 pixels smaller per axis) averaged over the map pixels whose window centre
  lies in the region; for the whole slice this is SSIMMetric's value. The map is computed by :func:`ssim_map`
  (separable, float64, several times faster than MONAI's dense float32 convolution; equal to it within 1e-5).
  Region pixels closer than 5 pixels to the image border have no map value and are skipped.
Per slice the region is the slice's mask; per subject all evaluated slices are pooled (voxel-pooled MSE/MAE,
pixel-pooled SSIM map), which is not the mean of the per-slice values.

BraSyn family (``ssim3d_lesion``, ``ssim3d_healthy``): each volume is normalised on its own (clip to
[max(0, p0.5), p99.5] of all voxels, scale to [0, 1], as the BraSyn evaluation does), both volumes are multiplied by
the lesion mask (resp. by its complement) and the 3D SSIM map (Gaussian 11x11x11, sigma 1.5, valid convolution,
computed separably) is averaged over the lesion voxels (resp. the brain voxels outside the lesion).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = [
    "FLOAT_METRICS",
    "REGIONS",
    "brasyn_normalize",
    "middle_slices",
    "percentile_normalize",
    "slice_float_metrics",
    "ssim3d_regions",
    "ssim_map",
    "valid_region",
    "volume_float_metrics",
]

FLOAT_METRICS: tuple[str, ...] = ("psnr", "ssim", "mae")
REGIONS: tuple[str, ...] = ("whole", "brain", "lesion")
SSIM_WIN = 11
SSIM_SIGMA = 1.5


def middle_slices(depth: int, count: int | None = 80) -> range:
    """The ``count`` middle slice indices of an axis of length ``depth`` (start = floor((depth - count) / 2)).

    This is the paper's choice (80 middle axial slices, z = 37..116 for BraTS' 155); None or count >= depth = all.
    """
    if count is None or count >= depth:
        return range(depth)
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    start = (depth - count) // 2
    return range(start, start + count)


def percentile_normalize(volume: np.ndarray, low: float = 1.0, high: float = 99.0) -> np.ndarray:
    """The paper's per-volume normalisation: clip to the percentiles of the strictly positive voxels, min-max to [0, 1].

    Returns float32. A volume without positive voxels, or constant after clipping, becomes zeros.
    """
    x = np.asarray(volume, dtype=np.float64)
    positive = x[x > 0]
    if positive.size == 0:
        return np.zeros(x.shape, dtype=np.float32)
    lo, hi = np.percentile(positive, [low, high])
    x = np.clip(x, lo, hi)
    span = x.max() - x.min()
    if span <= 0:
        return np.zeros(x.shape, dtype=np.float32)
    return ((x - x.min()) / span).astype(np.float32)


def brasyn_normalize(volume: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """BraSyn's normalisation: percentiles over all voxels, lower bound raised to 0, clip, scale to [0, 1] (float32)."""
    x = np.asarray(volume, dtype=np.float64)
    lo, hi = np.percentile(x, [low, high])
    lo = max(lo, 0.0)
    if hi <= lo:
        return np.zeros(x.shape, dtype=np.float32)
    return ((np.clip(x, lo, hi) - lo) / (hi - lo)).astype(np.float32)


def _gaussian_1d(win_size: int, sigma: float) -> np.ndarray:
    """The normalised 1D Gaussian MONAI uses for SSIM (taps at -(k-1)/2 .. (k-1)/2)."""
    dist = np.arange(win_size, dtype=np.float64) - (win_size - 1) / 2
    gauss = np.exp(-((dist / sigma) ** 2) / 2)
    return gauss / gauss.sum()


def _filter_valid(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Separable filtering along every axis, keeping only the "valid" part (windows fully inside the array)."""
    for axis in range(x.ndim):
        x = ndimage.correlate1d(x, kernel, axis=axis, mode="constant")
    half = kernel.size // 2
    return x[tuple(slice(half, n - half) for n in x.shape)]


def ssim_map(
    pred: np.ndarray,
    ref: np.ndarray,
    *,
    win_size: int = SSIM_WIN,
    sigma: float = SSIM_SIGMA,
    data_range: float = 1.0,
    k1: float = 0.01,
    k2: float = 0.03,
) -> np.ndarray:
    """SSIM map of two 2D or 3D arrays, same formula and Gaussian window as MONAI, computed separably in float64.

    Valid convolution: the map is ``win_size - 1`` smaller than the input along each axis, and map index ``i``
    belongs to the window centred on input index ``i + win_size // 2`` (use :func:`valid_region` for masks).
    Separable float64 filtering (scipy) makes a whole 3D brain take about a second on a CPU, where MONAI's
    dense float32 ``conv3d`` takes many; the values agree with ``compute_ssim_and_cs`` up to its float32 rounding.
    """
    x, y = np.asarray(pred, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"ssim_map: shapes differ, pred {x.shape} vs ref {y.shape}")
    if any(n < win_size for n in x.shape):
        raise ValueError(f"ssim_map: every side must be >= the {win_size}-voxel window, got {x.shape}")
    kernel = _gaussian_1d(win_size, sigma)
    mu_x, mu_y = _filter_valid(x, kernel), _filter_valid(y, kernel)
    sigma_x = _filter_valid(x * x, kernel) - mu_x * mu_x
    sigma_y = _filter_valid(y * y, kernel) - mu_y * mu_y
    sigma_xy = _filter_valid(x * y, kernel) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    return ((2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)) * ((2 * sigma_xy + c2) / (sigma_x + sigma_y + c2))


def valid_region(mask: np.ndarray, win_size: int = SSIM_WIN) -> np.ndarray:
    """Crop a mask to the centres of the valid SSIM windows, so it aligns with a valid-mode SSIM map."""
    half = win_size // 2
    return np.asarray(mask)[(slice(half, -half or None),) * mask.ndim]


def _psnr(pred: np.ndarray, ref: np.ndarray) -> float:
    """PSNR with data range 1 over the given voxels: what ``PSNRMetric(max_val=1.0)`` returns for them."""
    mse = float(np.mean((pred - ref) ** 2))
    return float("inf") if mse == 0 else float(-10.0 * np.log10(mse))


def _mae(pred: np.ndarray, ref: np.ndarray) -> float:
    """Mean absolute error over the given voxels: what ``MAEMetric()`` returns for them."""
    return float(np.mean(np.abs(pred - ref)))


def _check_pair(pred: np.ndarray, ref: np.ndarray, ndim: int) -> None:
    if pred.shape != ref.shape or pred.ndim != ndim:
        raise ValueError(f"expected two {ndim}D arrays of the same shape, got {pred.shape} and {ref.shape}")
    for name, arr in (("pred", pred), ("ref", ref)):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} contains NaN or infinite values")


def _region_masks(
    shape: tuple[int, ...], brain: np.ndarray | None, lesion: np.ndarray | None
) -> dict[str, np.ndarray | None]:
    brain_mask = np.ones(shape, dtype=bool) if brain is None else np.asarray(brain) > 0
    lesion_mask = None if lesion is None else np.asarray(lesion) > 0
    for name, m in (("brain", brain_mask), ("lesion", lesion_mask)):
        if m is not None and m.shape != shape:
            raise ValueError(f"{name} mask shape {m.shape} differs from the image shape {shape}")
    # Whole-slice metrics are only reported where there is brain (like the paper's NaN for an empty mask).
    whole = np.ones(shape, dtype=bool) if brain_mask.any() else np.zeros(shape, dtype=bool)
    return {"whole": whole, "brain": brain_mask, "lesion": lesion_mask}


def _slice_parts(
    pred: np.ndarray, ref: np.ndarray, brain: np.ndarray | None, lesion: np.ndarray | None
) -> tuple[dict[str, float], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Per-slice float metrics plus, per non-empty region, (errors inside it, SSIM-map values inside it)."""
    regions = _region_masks(pred.shape, brain, lesion)
    smap = ssim_map(pred, ref)
    metrics: dict[str, float] = {}
    parts: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for region, m in regions.items():
        if m is None:
            continue
        if not m.any():
            metrics.update({f"float_{region}_{k}": float("nan") for k in FLOAT_METRICS})
            continue
        ssim_values = smap[valid_region(m)]
        metrics[f"float_{region}_psnr"] = _psnr(pred[m], ref[m])
        metrics[f"float_{region}_ssim"] = float(ssim_values.mean()) if ssim_values.size else float("nan")
        metrics[f"float_{region}_mae"] = _mae(pred[m], ref[m])
        parts[region] = ((pred - ref)[m], ssim_values)
    return metrics, parts


def slice_float_metrics(
    pred: np.ndarray, ref: np.ndarray, brain: np.ndarray | None = None, lesion: np.ndarray | None = None
) -> dict[str, float]:
    """Float PSNR/SSIM/MAE of one [0, 1] slice (H, W) on the whole slice, inside the brain and inside the lesion.

    Returns ``float_<region>_<metric>``; NaN for an empty region (the "whole" region counts as empty when the brain
    mask is), lesion keys are omitted when ``lesion`` is None. ``brain=None`` means the whole slice is brain.
    The whole-slice SSIM is the mean of the full MONAI map, i.e. the value ``monai.metrics.SSIMMetric`` returns.
    """
    pred, ref = np.asarray(pred, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    _check_pair(pred, ref, 2)
    return _slice_parts(pred, ref, brain, lesion)[0]


def volume_float_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    brain: np.ndarray | None,
    lesion: np.ndarray | None,
    slices: Sequence[int],
    axis: int = -1,
) -> tuple[list[dict[str, float]], dict[str, float]]:
    """Float metrics per slice and per subject for [0, 1] volumes, over the given slice indices along ``axis``.

    Subject level pools the voxels of all evaluated slices whose brain mask is non-empty: PSNR from the pooled MSE,
    MAE over the pooled voxels, SSIM as the mean of the 2D SSIM maps over all pooled region pixels.

    Returns:
        (per-slice list of ``float_*`` dicts, subject-level ``float_*`` dict).
    """
    pred, ref = np.asarray(pred, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    _check_pair(pred, ref, 3)
    regions3d = _region_masks(pred.shape, brain, lesion)
    ax = axis % 3
    per_slice: list[dict[str, float]] = []
    pooled: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {r: [] for r, m in regions3d.items() if m is not None}
    for index in slices:
        take = (slice(None),) * ax + (int(index),)
        b2 = None if brain is None else regions3d["brain"][take]
        l2 = None if lesion is None else regions3d["lesion"][take]
        metrics, parts = _slice_parts(pred[take], ref[take], b2, l2)
        per_slice.append(metrics)
        for region, part in parts.items():
            pooled[region].append(part)
    subject: dict[str, float] = {}
    for region, parts_list in pooled.items():
        if not parts_list:
            subject.update({f"float_{region}_{k}": float("nan") for k in FLOAT_METRICS})
            continue
        err = np.concatenate([e for e, _ in parts_list])
        ssim_values = np.concatenate([s for _, s in parts_list])
        mse = float(np.mean(err**2))
        subject[f"float_{region}_psnr"] = float("inf") if mse == 0 else float(-10.0 * np.log10(mse))
        subject[f"float_{region}_ssim"] = float(ssim_values.mean()) if ssim_values.size else float("nan")
        subject[f"float_{region}_mae"] = float(np.mean(np.abs(err)))
    return per_slice, subject


def _padded_box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """Bounding box of a mask grown by ``margin`` on each side (clamped); the full array when the mask is empty."""
    if not mask.any():
        return (slice(None),) * mask.ndim
    box = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(max(int(hits[0]) - margin, 0), min(int(hits[-1]) + 1 + margin, mask.shape[axis])))
    return tuple(box)


def ssim3d_regions(
    pred: np.ndarray,
    ref: np.ndarray,
    lesion: np.ndarray | None,
    brain: np.ndarray | None = None,
    *,
    normalize: bool = True,
    win_size: int = SSIM_WIN,
    sigma: float = SSIM_SIGMA,
) -> dict[str, float]:
    """3D SSIM inside the lesion and in the healthy brain, as the BraSyn challenge reports it.

    Args:
        pred, ref: volumes (X, Y, Z), raw intensities when ``normalize`` (each gets :func:`brasyn_normalize`),
            else already in [0, 1].
        lesion: lesion mask (X, Y, Z) or None (then only ``ssim3d_brain`` is reported).
        brain: brain mask; default = voxels where ``ref`` is non-zero.

    Returns:
        ``ssim3d_brain`` (unmasked volumes, map averaged over the brain), and with a lesion mask
        ``ssim3d_lesion`` (both volumes times the lesion mask, map averaged over lesion voxels) and
        ``ssim3d_healthy`` (both volumes times the complement, averaged over brain voxels outside the lesion).
        NaN where a region is empty.
    """
    pred, ref = np.asarray(pred), np.asarray(ref)
    _check_pair(pred, ref, 3)
    brain_mask = (ref != 0) if brain is None else (np.asarray(brain) > 0)
    if brain_mask.shape != ref.shape:
        raise ValueError(f"brain mask shape {brain_mask.shape} differs from the image shape {ref.shape}")
    lesion_mask = None if lesion is None else np.asarray(lesion) > 0
    if lesion_mask is not None and lesion_mask.shape != ref.shape:
        raise ValueError(f"lesion mask shape {lesion_mask.shape} differs from the image shape {ref.shape}")
    if normalize:  # on the full volumes: the percentiles count the background
        pred, ref = brasyn_normalize(pred), brasyn_normalize(ref)
    opts = {"win_size": win_size, "sigma": sigma}

    def mean_in(region: np.ndarray, weight: np.ndarray | None = None) -> float:
        """Mean SSIM over the windows centred in ``region`` (of both volumes times ``weight``). Those windows lie in
        the region's box grown by half a window, so only that box is filtered (same values, far less work for a
        small lesion)."""
        box = _padded_box(region, win_size // 2)
        if any(
            r.stop - r.start < win_size for r in (slice(*s.indices(n)) for s, n in zip(box, ref.shape, strict=True))
        ):
            box = (slice(None),) * ref.ndim  # tiny region: keep the full volume so the window fits
        inside = valid_region(region[box], win_size)
        if not inside.any():
            return float("nan")
        a, b = pred[box], ref[box]
        if weight is not None:
            w = weight[box].astype(a.dtype)
            a, b = a * w, b * w
        return float(ssim_map(a, b, **opts)[inside].mean())

    out = {"ssim3d_brain": mean_in(brain_mask)}
    if lesion_mask is not None:
        out["ssim3d_lesion"] = mean_in(lesion_mask, lesion_mask)
        out["ssim3d_healthy"] = mean_in(brain_mask & ~lesion_mask, ~lesion_mask)
    return out
