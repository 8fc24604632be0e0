"""Float metrics on [0, 1] and the BraSyn-style 3D SSIM, against direct computations on real MRI.

Data: TCGA-DU-7294 (BraTS space), T1 as the reference, T1ce as a "synthesis", lesion = simple.nii.gz.
Measured (80 middle slices, subject level, pooled): float_brain PSNR 19.04 dB, SSIM 0.695, MAE 0.0764;
3D SSIM of T1ce vs T1: brain 0.730, lesion 0.876, healthy 0.731. A copy degraded with noise sd 0.02 in the brain and
0.2 in the lesion (x the 99th percentile): lesion 3D SSIM 0.479, healthy 0.969.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import REPO_ROOT
from monai.metrics import MAEMetric, PSNRMetric, SSIMMetric
from monai.metrics.regression import compute_ssim_and_cs
from scipy import ndimage
from scripts.evaluation.metrics import (
    brasyn_normalize,
    middle_slices,
    percentile_normalize,
    slice_float_metrics,
    ssim3d_regions,
    ssim_map,
    valid_region,
    volume_float_metrics,
)
from skimage.metrics import structural_similarity

REPO = REPO_ROOT

TCGA = REPO.parent / "shared" / "data" / "tcga_brats_space" / "TCGA-DU-7294"
needs_data = pytest.mark.skipif(not TCGA.is_dir(), reason="../shared/data is absent")


def _load(name: str) -> np.ndarray:
    return np.asarray(nib.as_closest_canonical(nib.load(str(TCGA / name))).dataobj, dtype=np.float32)


@pytest.fixture(scope="module")
def tcga():
    raw_t1 = _load("TCGA-DU-7294_t1_bet.nii.gz")
    raw_t1ce = _load("TCGA-DU-7294_t1c_bet.nii.gz")
    return {
        "raw_t1": raw_t1,
        "raw_t1ce": raw_t1ce,
        "t1": percentile_normalize(raw_t1),
        "t1ce": percentile_normalize(raw_t1ce),
        "brain": raw_t1 != 0,
        "lesion": _load("simple.nii.gz") > 0,
    }


@needs_data
def test_masked_slice_metrics_match_numpy_and_skimage(tcga):
    z = 100
    pred, ref = tcga["t1ce"][:, :, z].astype(np.float64), tcga["t1"][:, :, z].astype(np.float64)
    brain, lesion = tcga["brain"][:, :, z], tcga["lesion"][:, :, z]
    assert lesion.sum() > 200
    got = slice_float_metrics(pred, ref, brain, lesion)
    # skimage's Gaussian SSIM (sigma 1.5, truncate 3.5 -> 11 taps, population covariance) gives the same map in the
    # interior; MONAI's map is the valid part of it.
    _, full_map = structural_similarity(
        ref, pred, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0, full=True
    )
    interior = full_map[5:-5, 5:-5]
    for name, mask in (("brain", brain), ("lesion", lesion)):
        diff = pred[mask] - ref[mask]
        assert got[f"float_{name}_psnr"] == pytest.approx(10 * np.log10(1.0 / np.mean(diff**2)), rel=1e-9)
        assert got[f"float_{name}_mae"] == pytest.approx(np.mean(np.abs(diff)), rel=1e-9)
        assert got[f"float_{name}_ssim"] == pytest.approx(interior[mask[5:-5, 5:-5]].mean(), abs=2e-4)
    whole = SSIMMetric(spatial_dims=2, data_range=1.0)(
        torch.as_tensor(pred, dtype=torch.float32)[None, None], torch.as_tensor(ref, dtype=torch.float32)[None, None]
    )
    assert got["float_whole_ssim"] == pytest.approx(float(whole), abs=1e-5)
    # PSNR/MAE are what MONAI's metrics give on the region's voxels.
    pm, rm = torch.as_tensor(pred[brain])[None], torch.as_tensor(ref[brain])[None]
    assert got["float_brain_psnr"] == pytest.approx(float(PSNRMetric(max_val=1.0)(pm, rm)), rel=1e-9)
    assert got["float_brain_mae"] == pytest.approx(float(MAEMetric()(pm, rm)), rel=1e-9)
    assert got["float_whole_psnr"] == pytest.approx(10 * np.log10(1.0 / np.mean((pred - ref) ** 2)), rel=1e-9)
    # Restricting to the brain removes easy background: every metric gets worse.
    assert got["float_brain_psnr"] < got["float_whole_psnr"] and got["float_brain_ssim"] < got["float_whole_ssim"]


def test_empty_regions_are_nan_and_lesion_is_optional():
    rng = np.random.default_rng(0)
    a, b = rng.random((32, 32)), rng.random((32, 32))
    out = slice_float_metrics(a, b, np.ones((32, 32), bool), np.zeros((32, 32), bool))
    assert np.isnan(out["float_lesion_psnr"]) and np.isfinite(out["float_brain_psnr"])
    assert not any("lesion" in k for k in slice_float_metrics(a, b, None, None))
    out = slice_float_metrics(a, b, np.zeros((32, 32), bool), None)
    assert all(np.isnan(v) for v in out.values())  # no brain in the slice -> not evaluated
    with pytest.raises(ValueError, match="NaN"):
        slice_float_metrics(np.full((32, 32), np.nan), b)


@needs_data
def test_subject_level_pools_voxels(tcga):
    slices = middle_slices(155, 80)
    assert (slices.start, slices.stop) == (37, 117)
    per_slice, subject = volume_float_metrics(tcga["t1ce"], tcga["t1"], tcga["brain"], tcga["lesion"], slices)
    assert len(per_slice) == 80
    sub = (slice(None), slice(None), slice(37, 117))
    m = tcga["brain"][sub]
    err = tcga["t1ce"][sub].astype(np.float64)[m] - tcga["t1"][sub].astype(np.float64)[m]
    assert subject["float_brain_psnr"] == pytest.approx(-10 * np.log10(np.mean(err**2)), rel=1e-9)
    assert subject["float_brain_mae"] == pytest.approx(np.mean(np.abs(err)), rel=1e-9)
    assert subject["float_brain_psnr"] == pytest.approx(19.04, abs=0.01)
    assert subject["float_brain_ssim"] == pytest.approx(0.695, abs=0.001)
    lesion_slices = [r for r in per_slice if np.isfinite(r["float_lesion_psnr"])]
    assert 0 < len(lesion_slices) < 80  # slices without lesion are NaN, not zero


@needs_data
def test_ssim_map_matches_monai_and_a_dense_float64_convolution(tcga):
    a = brasyn_normalize(tcga["raw_t1ce"])[80:110, 90:122, 60:84].astype(np.float64)
    b = brasyn_normalize(tcga["raw_t1"])[80:110, 90:122, 60:84].astype(np.float64)
    got = ssim_map(a, b)
    assert got.shape == (20, 22, 14)
    monai_map, _ = compute_ssim_and_cs(
        torch.as_tensor(a, dtype=torch.float32)[None, None],
        torch.as_tensor(b, dtype=torch.float32)[None, None],
        3,
        [11] * 3,
        [1.5] * 3,
    )
    assert np.abs(got - monai_map[0, 0].double().numpy()).max() < 5e-3  # MONAI computes in float32
    g = np.exp(-(((np.arange(11) - 5) / 1.5) ** 2) / 2)
    g /= g.sum()
    kernel = g[:, None, None] * g[None, :, None] * g[None, None, :]

    def f(x):
        return ndimage.correlate(x, kernel, mode="constant")[5:-5, 5:-5, 5:-5]

    mx, my = f(a), f(b)
    sx, sy, sxy = f(a * a) - mx**2, f(b * b) - my**2, f(a * b) - mx * my
    dense = ((2 * mx * my + 1e-4) / (mx**2 + my**2 + 1e-4)) * ((2 * sxy + 9e-4) / (sx + sy + 9e-4))
    np.testing.assert_allclose(got, dense, atol=1e-10)
    assert valid_region(np.ones((30, 32, 24))).shape == got.shape


@needs_data
def test_ssim3d_identical_is_one_and_degradation_is_localised(tcga):
    raw, lesion, brain = tcga["raw_t1"], tcga["lesion"], tcga["brain"]
    same = ssim3d_regions(raw, raw, lesion, brain)
    assert same == {"ssim3d_brain": 1.0, "ssim3d_lesion": 1.0, "ssim3d_healthy": 1.0}
    rng = np.random.default_rng(0)
    scale = float(np.percentile(raw[raw > 0], 99))
    sd = np.where(lesion, 0.2, 0.02) * scale * brain
    degraded = raw + rng.normal(size=raw.shape).astype(np.float32) * sd.astype(np.float32)
    out = ssim3d_regions(degraded, raw, lesion, brain)
    assert out["ssim3d_lesion"] < out["ssim3d_healthy"] < 1.0
    assert out["ssim3d_lesion"] == pytest.approx(0.479, abs=0.01)
    assert out["ssim3d_healthy"] == pytest.approx(0.969, abs=0.01)
    real = ssim3d_regions(tcga["raw_t1ce"], raw, lesion, brain)
    assert real["ssim3d_brain"] == pytest.approx(0.730, abs=0.001)
    assert real["ssim3d_lesion"] == pytest.approx(0.876, abs=0.001)
    assert real["ssim3d_healthy"] == pytest.approx(0.731, abs=0.001)
    assert set(ssim3d_regions(raw, raw, None, brain)) == {"ssim3d_brain"}


def test_normalisations():
    v = np.zeros((10, 10, 10), np.float32)
    v[2:8, 2:8, 2:8] = np.linspace(-5, 100, 216).reshape(6, 6, 6)
    p = percentile_normalize(v)
    assert p.dtype == np.float32 and p.min() == 0.0 and p.max() == 1.0
    assert p[0, 0, 0] == 0.0  # background maps to 0
    b = brasyn_normalize(v)
    lo, hi = max(np.percentile(v, 0.5), 0.0), np.percentile(v, 99.5)
    np.testing.assert_allclose(b, (np.clip(v, lo, hi) - lo) / (hi - lo), rtol=1e-6)
    assert np.all(percentile_normalize(np.zeros((4, 4, 4))) == 0)
    assert middle_slices(50, 80) == range(50) and middle_slices(182, 80) == range(51, 131)


@needs_data
def test_slices_missing_from_a_prediction_are_counted_and_warned(tcga, caplog):
    """A method run on a smaller window than is evaluated must not pass for a merely weak one."""
    from scripts.evaluation.evaluate import evaluate_methods

    window = middle_slices(tcga["raw_t1"].shape[-1], 80)
    partial = tcga["raw_t1"].copy()
    partial[..., : window.start + 16] = 0  # the first 16 evaluated slices were never synthesized
    preds = {"full": {"s": tcga["raw_t1"]}, "partial": {"s": partial}}
    with caplog.at_level("WARNING", logger="scripts.evaluation.evaluate"):
        result = evaluate_methods(preds, {"s": tcga["raw_t1ce"]}, {"s": tcga["brain"]}, ssim3d=False)
    rows = {r["method"]: r for r in result.subject_rows}
    assert rows["full"]["n_empty_slices"] == 0
    assert rows["partial"]["n_empty_slices"] == 16
    assert "'partial'" in caplog.text and "16 of 80 evaluated slices are empty" in caplog.text
    assert "'full'" not in caplog.text


def test_enhancing_tumour_region_from_brats_labels():
    """A BraTS label map (1, 2, 4) adds the enhancing-tumour columns (label 4 only); a binary mask does not. Real
    data: the embedded held-out Brats18_2013_2_1, T1 scored as a "synthesis" of T1ce on 40 middle slices."""
    from conftest import sample_item
    from scripts.evaluation.evaluate import enhancing_region, evaluate_arrays

    item = sample_item("Brats18_2013_2_1")
    ref, pred = (np.asarray(nib.load(item[c]).dataobj, np.float32) for c in ("t1ce", "t1"))
    seg = np.asarray(nib.load(item["lesion"]).dataobj)
    rows, subject = evaluate_arrays(pred, ref, lesion=seg, num_slices=40)
    for region in ("lesion", "enhancing"):
        assert all(
            f"paper_{region}_{m}" in rows[0] and f"float_{region}_{m}" in rows[0] for m in ("psnr", "ssim", "mae")
        )
    assert 0 < subject["ssim3d_enhancing"] < 1 and subject["ssim3d_enhancing"] != subject["ssim3d_lesion"]
    # the enhancing columns are the lesion columns computed on label 4 alone
    only_et = evaluate_arrays(pred, ref, lesion=(seg == 4).astype(np.uint8), num_slices=40)[0]
    np.testing.assert_array_equal([r["paper_enhancing_psnr"] for r in rows], [r["paper_lesion_psnr"] for r in only_et])
    assert np.isfinite([r["paper_enhancing_psnr"] for r in rows]).any()
    assert "paper_enhancing_psnr" not in only_et[0] and enhancing_region((seg > 0).astype(np.uint8)) is None
