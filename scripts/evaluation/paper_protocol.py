"""The evaluation protocol behind the MU-Diff paper's numbers (spec section 6), reproduced for comparability.

This is the *paper protocol*: it goes through 8-bit images (and, for syntheses, a lossy JPEG round-trip),
renormalises every slice on its own, divides by the slice mean and crops to the mask's bounding box. Its
PSNR/SSIM values are therefore not comparable with float metrics on [0, 1]; use it only to compare with the
published table. The standard float metrics live in :mod:`scripts.evaluation.metrics`.

Per slice (``real`` = ground truth, ``fake`` = synthesis, both 2D):

1. 8-bit images. A float slice is min-max scaled to uint8 exactly as ``torchvision.utils.save_image(normalize=True)``
   does (float32, ``(x - min) / max(max - min, 1e-5) * 255 + 0.5``, clamp, truncate). With ``jpeg=True`` the synthesis
   then goes through a JPEG encode/decode with Pillow at its default quality (75), saved as a 3-channel RGB image and
   read back as grayscale, which is what the reference's ``save_image(...jpg)`` + ``cv2.imread(GRAYSCALE)`` does.
   The reference divides the synthesis by its mean before ``save_image``; the min-max scaling cancels that factor.
2. Each image is normalised independently: clip to the 1st-99th percentile of its strictly positive pixels, then
   min-max to [0, 1] (``irm_min_max_preprocess``). A copy is divided by its whole-image mean (the "_p" copy).
3. An empty mask gives NaN for every metric (excluded later by the nan-aware mean).
4. Every image and the mask are cropped to the mask's bounding box, enlarged to at least 7x7, and multiplied by the
   mask.
5. SSIM = skimage ``structural_similarity`` on the masked "_p" crops (7x7 uniform window, K1 0.01, K2 0.03), with
   ``data_range`` = joint max - joint min of the two crops.
6. PSNR = skimage ``peak_signal_noise_ratio(real_p, fake_p)`` on the same crops with the same ``data_range``.
7. MAE = mean |real - fake| over the masked [0, 1] crops (pixels outside the mask inside the box count as 0).

Aggregation: nan-aware mean and (population) standard deviation over all slices, pooled over subjects.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence

import numpy as np
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

__all__ = [
    "PAPER_METRICS",
    "aggregate_nan",
    "binarize_mask",
    "irm_min_max_preprocess",
    "jpeg_roundtrip",
    "mask_bounding_box",
    "paper_slice_metrics",
    "paper_volume_metrics",
    "to_uint8_minmax",
]

PAPER_METRICS: tuple[str, ...] = ("psnr", "ssim", "mae")
MIN_BOX_SIZE = 7  # skimage's default SSIM window must fit inside the crop


def to_uint8_minmax(image: np.ndarray) -> np.ndarray:
    """Min-max a float image to uint8 the way ``torchvision.utils.save_image(normalize=True)`` does.

    Kept in float32 so the rounding matches the torch implementation: scale to [0, 1] with the image's own
    min/max (denominator at least 1e-5), multiply by 255, add 0.5, clamp to [0, 255] and truncate.
    """
    x = np.asarray(image, dtype=np.float32)
    low, high = np.float32(x.min()), np.float32(x.max())
    scaled = (x - low) / np.float32(max(float(high - low), 1e-5))
    return np.clip(scaled * np.float32(255.0) + np.float32(0.5), 0, 255).astype(np.uint8)


def jpeg_roundtrip(image_u8: np.ndarray, quality: int | None = None) -> np.ndarray:
    """Encode an 8-bit grayscale slice as an RGB JPEG in memory and decode it back to grayscale uint8.

    ``quality=None`` uses Pillow's default (75), which is what ``torchvision.utils.save_image`` gets.
    The image is saved with three identical channels (as save_image does) and read back as luminance.
    """
    image_u8 = np.asarray(image_u8)
    if image_u8.dtype != np.uint8 or image_u8.ndim != 2:
        raise ValueError(f"jpeg_roundtrip expects a 2D uint8 image, got {image_u8.dtype} with shape {image_u8.shape}")
    buffer = io.BytesIO()
    rgb = Image.fromarray(np.repeat(image_u8[:, :, None], 3, axis=2), mode="RGB")
    if quality is None:
        rgb.save(buffer, format="JPEG")
    else:
        rgb.save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("L"), dtype=np.uint8)


def irm_min_max_preprocess(image: np.ndarray, low_percentile: float = 1.0, high_percentile: float = 99.0) -> np.ndarray:
    """Clip to the percentiles of the strictly positive pixels, then min-max to [0, 1] (float64).

    An image without positive pixels, or constant after clipping, returns zeros (the reference would divide by
    zero; a black synthesis then scores as black rather than NaN).
    """
    x = np.asarray(image, dtype=np.float64)
    positive = x[x > 0]
    if positive.size == 0:
        return np.zeros_like(x)
    low, high = np.percentile(positive, [low_percentile, high_percentile])
    x = np.clip(x, low, high)
    span = x.max() - x.min()
    if span <= 0:
        return np.zeros_like(x)
    return (x - x.min()) / span


def binarize_mask(mask: np.ndarray) -> np.ndarray:
    """Boolean mask: ``> 127`` for 8-bit 0/255 masks (the reference's cv2 rule), ``> 0`` for label/bool masks."""
    m = np.asarray(mask)
    if m.dtype == np.bool_:
        return m
    if m.dtype == np.uint8 and m.max(initial=0) > 1:
        return m > 127
    return m > 0


def mask_bounding_box(mask: np.ndarray, min_size: int = MIN_BOX_SIZE) -> tuple[slice, slice]:
    """Bounding box of a non-empty 2D mask, enlarged (centred, then shifted inside the image) to ``min_size``.

    The spec only says "enlarged to at least 7x7"; we grow a short side symmetrically (the extra pixel goes to the
    end) and shift the box back inside the image when it would cross a border.
    """
    if mask.ndim != 2:
        raise ValueError(f"mask_bounding_box expects a 2D mask, got shape {mask.shape}")
    if not mask.any():
        raise ValueError("mask_bounding_box needs a non-empty mask")
    box = []
    for axis in range(2):
        extent = mask.shape[axis]
        if extent < min_size:
            raise ValueError(f"image side {extent} is smaller than the {min_size}-pixel SSIM window")
        hits = np.flatnonzero(mask.any(axis=1 - axis))
        start, stop = int(hits[0]), int(hits[-1]) + 1
        if stop - start < min_size:
            start -= (min_size - (stop - start)) // 2
            stop = start + min_size
            if start < 0:
                start, stop = 0, min_size
            if stop > extent:
                start, stop = extent - min_size, extent
        box.append(slice(start, stop))
    return box[0], box[1]


def _as_uint8(image: np.ndarray, name: str) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"{name} must be a 2D slice, got shape {image.shape}")
    if not np.all(np.isfinite(image)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return image if image.dtype == np.uint8 else to_uint8_minmax(image)


def paper_slice_metrics(
    real: np.ndarray,
    fake: np.ndarray,
    mask: np.ndarray,
    *,
    jpeg: bool = True,
    jpeg_real: bool = False,
    jpeg_quality: int | None = None,
) -> dict[str, float]:
    """PSNR, SSIM and MAE of one slice under the paper protocol (see the module docstring).

    Args:
        real: ground-truth slice (H, W); uint8 is taken as an already-saved 8-bit image, any other dtype is
            min-max quantised to uint8 first.
        fake: synthesised slice (H, W), same rules as ``real``.
        mask: brain or lesion mask (H, W); see :func:`binarize_mask`.
        jpeg: apply the lossy JPEG round-trip to ``fake`` (the reference saved syntheses as JPEG).
        jpeg_real: also apply it to ``real`` (the reference leaves the ground-truth format to the user).
        jpeg_quality: JPEG quality; None = Pillow's default (75).

    Returns:
        ``{"psnr", "ssim", "mae"}``; all NaN when the mask is empty.
    """
    real_u8, fake_u8 = _as_uint8(real, "real"), _as_uint8(fake, "fake")
    m = binarize_mask(mask)
    if not (real_u8.shape == fake_u8.shape == m.shape):
        raise ValueError(f"shape mismatch: real {real_u8.shape}, fake {fake_u8.shape}, mask {m.shape}")
    if not m.any():
        return {name: float("nan") for name in PAPER_METRICS}
    if jpeg:
        fake_u8 = jpeg_roundtrip(fake_u8, jpeg_quality)
    if jpeg_real:
        real_u8 = jpeg_roundtrip(real_u8, jpeg_quality)

    real01, fake01 = irm_min_max_preprocess(real_u8), irm_min_max_preprocess(fake_u8)
    with np.errstate(divide="ignore", invalid="ignore"):
        real_p, fake_p = real01 / real01.mean(), fake01 / fake01.mean()

    rows, cols = mask_bounding_box(m)
    keep = m[rows, cols].astype(np.float64)
    real_p_c, fake_p_c = real_p[rows, cols] * keep, fake_p[rows, cols] * keep
    real_c, fake_c = real01[rows, cols] * keep, fake01[rows, cols] * keep

    data_range = max(fake_p_c.max(), real_p_c.max()) - min(fake_p_c.min(), real_p_c.min())
    with np.errstate(divide="ignore", invalid="ignore"):
        ssim = structural_similarity(real_p_c, fake_p_c, data_range=data_range)
        psnr = peak_signal_noise_ratio(real_p_c, fake_p_c, data_range=data_range)
    mae = np.mean(np.abs(real_c - fake_c))
    return {"psnr": float(psnr), "ssim": float(ssim), "mae": float(mae)}


def paper_volume_metrics(
    real: np.ndarray,
    fake: np.ndarray,
    mask: np.ndarray,
    slices: Iterable[int],
    *,
    axis: int = -1,
    **kwargs: bool | int | None,
) -> list[dict[str, float]]:
    """Apply :func:`paper_slice_metrics` to the given slice indices of two volumes along ``axis``.

    The volumes should already carry the paper's per-volume normalisation (percentile clip + min-max), since the
    8-bit quantisation is per slice and a volume-level clip changes it.
    """
    if not (real.shape == fake.shape == mask.shape):
        raise ValueError(f"shape mismatch: real {real.shape}, fake {fake.shape}, mask {mask.shape}")
    results = []
    for index in slices:
        take = (slice(None),) * (axis % real.ndim) + (int(index),)
        results.append(paper_slice_metrics(real[take], fake[take], mask[take], **kwargs))
    return results


def aggregate_nan(values: Sequence[float] | np.ndarray) -> dict[str, float]:
    """Nan-aware mean and population std (numpy ``nanmean``/``nanstd``, ddof 0) plus the count of finite values."""
    arr = np.asarray(values, dtype=np.float64)
    finite = arr[~np.isnan(arr)]
    if finite.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    return {"mean": float(np.mean(finite)), "std": float(np.std(finite)), "n": int(finite.size)}
