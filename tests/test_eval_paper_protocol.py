"""The paper's evaluation protocol (spec section 6) against a step-by-step hand computation on real MRI slices.

Real slice: TCGA-DU-7294 T1 (BraTS space), axial slice 113 (largest lesion area), volume normalised with the
paper's 1-99 percentile rule. Fake: Gaussian blur (sigma 1) plus noise (sd 0.03) inside the brain.
Measured: brain mask, JPEG on the fake: PSNR 25.60 dB, SSIM 0.895, MAE 0.0335; without JPEG 25.32 / 0.885 / 0.0348.
The copy-T1ce-as-T1 baseline over the 80 middle slices: PSNR 19.99 +/- 1.51, SSIM 0.742 +/- 0.061, MAE 0.061.
"""

from __future__ import annotations

import io

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import REPO_ROOT
from PIL import Image
from scipy import ndimage
from scripts.evaluation.paper_protocol import (
    aggregate_nan,
    irm_min_max_preprocess,
    jpeg_roundtrip,
    mask_bounding_box,
    paper_slice_metrics,
    paper_volume_metrics,
    to_uint8_minmax,
)
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

REPO = REPO_ROOT

TCGA = REPO.parent / "shared" / "data" / "tcga_brats_space" / "TCGA-DU-7294"
needs_data = pytest.mark.skipif(not TCGA.is_dir(), reason="../shared/data is absent")


def _load(name: str) -> np.ndarray:
    return np.asarray(nib.as_closest_canonical(nib.load(str(TCGA / name))).dataobj, dtype=np.float64)


def _volume_norm(v: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(v[v > 0], [1, 99])
    v = np.clip(v, lo, hi)
    return (v - v.min()) / (v.max() - v.min())


@pytest.fixture(scope="module")
def tcga():
    raw_t1 = _load("TCGA-DU-7294_t1_bet.nii.gz")
    return {
        "t1": _volume_norm(raw_t1),
        "t1ce": _volume_norm(_load("TCGA-DU-7294_t1c_bet.nii.gz")),
        "brain": raw_t1 != 0,
        "lesion": _load("simple.nii.gz") > 0,
    }


def _hand_metrics(real: np.ndarray, fake: np.ndarray, mask: np.ndarray, jpeg: bool) -> dict[str, float]:
    """Section 6 written out step by step, independently of the module."""

    def u8(x):  # torchvision save_image(normalize=True)
        x = x.astype(np.float32)
        y = (x - x.min()) / np.float32(max(float(x.max() - x.min()), 1e-5))
        return np.clip(y * np.float32(255) + np.float32(0.5), 0, 255).astype(np.uint8)

    def jpg(x):  # PIL JPEG at the default quality, RGB with 3 equal channels, read back as grayscale
        buf = io.BytesIO()
        Image.fromarray(np.stack([x, x, x], -1)).save(buf, "JPEG")
        return np.array(Image.open(io.BytesIO(buf.getvalue())).convert("L"))

    def irm(x):
        x = x.astype(np.float64)
        lo, hi = np.percentile(x[x > 0], [1, 99])
        x = np.clip(x, lo, hi)
        return (x - x.min()) / (x.max() - x.min())

    r8, f8 = u8(real), u8(fake)
    if jpeg:
        f8 = jpg(f8)
    r, f = irm(r8), irm(f8)
    rp, fp = r / r.mean(), f / f.mean()
    rows, cols = np.nonzero(mask)
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    assert r1 - r0 >= 7 and c1 - c0 >= 7  # real brain/lesion boxes need no enlargement
    m = mask[r0:r1, c0:c1]
    rpc, fpc = rp[r0:r1, c0:c1] * m, fp[r0:r1, c0:c1] * m
    dr = max(rpc.max(), fpc.max()) - min(rpc.min(), fpc.min())
    return {
        "psnr": peak_signal_noise_ratio(rpc, fpc, data_range=dr),
        "ssim": structural_similarity(rpc, fpc, win_size=7, data_range=dr),
        "mae": np.mean(np.abs(r[r0:r1, c0:c1] * m - f[r0:r1, c0:c1] * m)),
    }


@pytest.fixture(scope="module")
def slice_pair(tcga):
    z = int(np.argmax(tcga["lesion"].sum(axis=(0, 1))))
    real = tcga["t1"][:, :, z]
    noise = np.random.default_rng(0).normal(0.0, 0.03, real.shape)
    fake = np.clip(ndimage.gaussian_filter(real, 1.0) + noise * (real > 0), 0, 1)
    return z, real, fake, tcga["brain"][:, :, z], tcga["lesion"][:, :, z]


@needs_data
@pytest.mark.parametrize("jpeg", [True, False])
@pytest.mark.parametrize("region", ["brain", "lesion"])
def test_slice_metrics_match_hand_computation(slice_pair, jpeg, region):
    z, real, fake, brain, lesion = slice_pair
    assert z == 113
    mask = brain if region == "brain" else lesion
    got = paper_slice_metrics(real, fake, mask, jpeg=jpeg)
    want = _hand_metrics(real, fake, mask, jpeg)
    for key in ("psnr", "ssim", "mae"):
        assert got[key] == pytest.approx(want[key], rel=1e-12, abs=1e-12), key


@needs_data
def test_measured_values_and_jpeg_effect(slice_pair):
    _, real, fake, brain, _ = slice_pair
    with_jpeg = paper_slice_metrics(real, fake, brain, jpeg=True)
    without = paper_slice_metrics(real, fake, brain, jpeg=False)
    assert with_jpeg["psnr"] == pytest.approx(25.60, abs=0.01)
    assert with_jpeg["ssim"] == pytest.approx(0.895, abs=0.001)
    assert with_jpeg["mae"] == pytest.approx(0.0335, abs=0.0001)
    assert without["psnr"] == pytest.approx(25.32, abs=0.01)
    # The JPEG step is not a no-op: it changes every metric.
    assert all(with_jpeg[k] != without[k] for k in with_jpeg)
    # A perfect synthesis scores perfectly without JPEG, and JPEG alone already costs SSIM.
    same = paper_slice_metrics(real, real, brain, jpeg=False)
    assert same["ssim"] == pytest.approx(1.0) and same["mae"] == 0.0 and np.isinf(same["psnr"])
    assert paper_slice_metrics(real, real, brain, jpeg=True)["ssim"] < 1.0


@needs_data
def test_jpeg_roundtrip_is_lossy_and_matches_default_quality(slice_pair):
    _, real, _, _, _ = slice_pair
    u8 = to_uint8_minmax(real)
    decoded = jpeg_roundtrip(u8)
    assert decoded.dtype == np.uint8 and decoded.shape == u8.shape
    diff = np.abs(decoded.astype(int) - u8.astype(int))
    assert 0 < diff.max() < 64 and diff.mean() < 3
    np.testing.assert_array_equal(jpeg_roundtrip(u8, quality=75), decoded)  # Pillow's default is 75
    assert not np.array_equal(jpeg_roundtrip(u8, quality=95), decoded)


def test_uint8_quantisation_matches_torch_save_image_arithmetic():
    x = np.linspace(-0.3, 1.7, 4096, dtype=np.float32).reshape(64, 64) ** 3
    t = torch.from_numpy(x)
    lo, hi = float(t.min()), float(t.max())
    want = t.clamp(lo, hi).sub(lo).div(max(hi - lo, 1e-5)).mul(255).add(0.5).clamp(0, 255).to(torch.uint8).numpy()
    np.testing.assert_array_equal(to_uint8_minmax(x), want)
    assert to_uint8_minmax(np.full((8, 8), 3.0)).max() == 0  # constant image: no division by zero


def test_empty_mask_gives_nan_and_nan_aware_aggregation():
    rng = np.random.default_rng(1)
    real, fake = rng.random((32, 32)), rng.random((32, 32))
    out = paper_slice_metrics(real, fake, np.zeros((32, 32), bool))
    assert all(np.isnan(v) for v in out.values())
    values = [1.0, float("nan"), 3.0, 4.0]
    stats = aggregate_nan(values)
    assert stats == {"mean": pytest.approx(np.nanmean(values)), "std": pytest.approx(np.nanstd(values)), "n": 3}
    rows = [{"psnr": 1.0, "ssim": 0.5, "mae": 0.1}, out]
    assert aggregate_nan([row["ssim"] for row in rows])["n"] == 1


def test_bounding_box_is_enlarged_to_seven_and_kept_inside():
    mask = np.zeros((20, 30), bool)
    mask[0, 29] = True  # single pixel in a corner
    rows, cols = mask_bounding_box(mask)
    assert (rows.start, rows.stop, cols.start, cols.stop) == (0, 7, 23, 30)
    mask = np.zeros((20, 30), bool)
    mask[10, 3:5] = True  # 1 x 2, grown symmetrically
    rows, cols = mask_bounding_box(mask)
    assert (rows.start, rows.stop) == (7, 14) and (cols.start, cols.stop) == (1, 8)
    with pytest.raises(ValueError, match="smaller than the 7-pixel"):
        mask_bounding_box(np.ones((5, 30), bool))
    # A one-pixel lesion still yields finite metrics (the SSIM window fits in the enlarged box).
    rng = np.random.default_rng(2)
    real, fake = rng.random((20, 30)) + 0.1, rng.random((20, 30)) + 0.1
    one = np.zeros((20, 30), bool)
    one[10, 10] = True
    assert all(np.isfinite(v) for v in paper_slice_metrics(real, fake, one, jpeg=False).values())


def test_irm_normalisation_uses_positive_pixels_and_handles_black_images():
    x = np.zeros((10, 10))
    x[2:8, 2:8] = np.arange(36).reshape(6, 6) + 1.0
    y = irm_min_max_preprocess(x)
    lo, hi = np.percentile(np.arange(36) + 1.0, [1, 99])
    assert y.min() == 0.0 and y.max() == 1.0
    assert y[2, 3] == pytest.approx((2.0 - lo) / (hi - lo))
    assert np.all(irm_min_max_preprocess(np.zeros((4, 4))) == 0)


def test_bad_slices_raise_clear_errors():
    with pytest.raises(ValueError, match="shape mismatch"):
        paper_slice_metrics(np.ones((16, 16)), np.ones((16, 17)), np.ones((16, 16)))
    bad = np.ones((16, 16))
    bad[3, 3] = np.nan
    with pytest.raises(ValueError, match="fake contains NaN"):
        paper_slice_metrics(np.ones((16, 16)), bad, np.ones((16, 16)))


@needs_data
def test_copy_t1ce_as_t1_over_the_paper_slices(tcga):
    """The 80 middle slices (z = 37..116), brain mask, JPEG on the copy: the paper's aggregation."""
    rows = paper_volume_metrics(tcga["t1"], tcga["t1ce"], tcga["brain"], range(37, 117))
    stats = {key: aggregate_nan([row[key] for row in rows]) for key in ("psnr", "ssim", "mae")}
    assert stats["psnr"]["n"] == 80
    assert stats["psnr"]["mean"] == pytest.approx(19.99, abs=0.01)
    assert stats["psnr"]["std"] == pytest.approx(1.51, abs=0.01)
    assert stats["ssim"]["mean"] == pytest.approx(0.742, abs=0.001)
    assert stats["mae"]["mean"] == pytest.approx(0.0615, abs=0.0005)
