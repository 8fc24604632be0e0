"""The subject pipeline on real data: normalization, reference/volume slicing, exact inverse, orientation, grids."""

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import require_shared, sample_item
from scripts.data.checks import EnsureSameGridd
from scripts.data.errors import DataError
from scripts.data.loading import LoadSubjectd
from scripts.data.pipeline import SliceDataset, build_volume_transforms, prepare_subject
from scripts.data.slicing import SliceStackToVolumed, restore_volume, select_slices
from skimage.transform import resize


def independent_normalize(volume: np.ndarray) -> np.ndarray:
    """Spec 5.1 written out again: 1st/99th percentile of the positive voxels, clip, min-max (float64)."""
    v = volume.astype(np.float64)
    positive = v[v > 0]
    lo, hi = np.percentile(positive, 1), np.percentile(positive, 99)
    c = np.clip(v, lo, hi)
    return (c - c.min()) / (c.max() - c.min())


def load(path: str) -> np.ndarray:
    return nib.load(path).get_fdata()


def test_normalization_matches_reference_formula_lps():
    item = sample_item("TCGA-DU-7294")
    out = prepare_subject(item, build_volume_transforms("brats_t1ce", mode="volume", divisor=1, keep_contrasts=True))
    for key in ("flair", "t2", "t1", "t1ce"):
        expected = np.transpose(independent_normalize(load(item[key])), (2, 1, 0))  # (Z, Y, X): slices transposed
        np.testing.assert_allclose(out[key], expected, rtol=0, atol=1e-6)
        assert out[key].min() == 0.0 and out[key].max() == 1.0
    expected_label = (np.transpose(independent_normalize(load(item["t1ce"])), (2, 1, 0)) - 0.5) / 0.5
    np.testing.assert_allclose(out["label"][:, 0], expected_label, rtol=0, atol=2e-6)
    for c, key in enumerate(("flair", "t2", "t1")):  # task order of brats_t1ce
        np.testing.assert_array_equal(out["image"][:, c], (out[key] - np.float32(0.5)) / np.float32(0.5))


def test_negative_voxels_map_to_zero_and_count_as_brain():
    item = sample_item("patient07")  # LAS float data with negative interpolation residue
    raw = load(item["t1"])
    negative = raw < 0
    assert negative.sum() > 100
    out = prepare_subject(item, build_volume_transforms("brats_t1ce", mode="volume", divisor=1, keep_contrasts=True))
    canonical = np.transpose(raw[:, ::-1, :], (2, 1, 0))  # LAS -> LPS flips Y, then slices are transposed
    neg_c = canonical < 0
    assert np.all(out["t1"][neg_c] == 0.0)
    assert np.all(out["brain_mask"][:, 0][neg_c] == 1.0)
    any_nonzero = np.zeros(raw.shape, bool)
    for key in ("flair", "t2", "t1", "t1ce"):
        any_nonzero |= load(item[key]) != 0
    np.testing.assert_array_equal(out["brain_mask"][:, 0] > 0, np.transpose(any_nonzero[:, ::-1, :], (2, 1, 0)))


def test_reference_mode_matches_independent_resize_and_transpose():
    item = sample_item("TCGA-DU-7294")  # LPS: the canonical orientation equals the file's
    out = prepare_subject(item, build_volume_transforms("brats_flair", mode="reference"))
    assert out["image"].shape == (80, 3, 256, 256) and out["label"].shape == (80, 1, 256, 256)
    assert out["geometry"]["slice_indices"] == list(range(80))
    target = independent_normalize(load(item["flair"]))
    for pos in (0, 17, 40, 79):
        sl = resize(target[:, :, pos], (256, 256), order=1, mode="constant", anti_aliasing=True).T
        np.testing.assert_allclose(out["label"][pos, 0], (sl.astype(np.float32) - 0.5) / 0.5, rtol=0, atol=1e-6)
    t1ce = independent_normalize(load(item["t1ce"]))  # brats_flair inputs: [t1ce, t1, t2]
    sl = resize(t1ce[:, :, 40], (256, 256), order=1, mode="constant", anti_aliasing=True).T
    np.testing.assert_allclose(out["image"][40, 0], (sl.astype(np.float32) - 0.5) / 0.5, rtol=0, atol=1e-6)


def test_reference_mode_takes_the_middle_80_slices(tmp_path):
    item = sample_item("TCGA-DU-7294")
    padded = {"subject": "padded"}
    for key in ("t1", "t1ce", "t2", "flair", "lesion"):
        img = nib.load(item[key])
        data = np.pad(np.asanyarray(img.dataobj), ((0, 0), (0, 0), (5, 6)))  # D = 91 -> start 5
        affine = img.affine @ np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, -5], [0, 0, 0, 1]])
        padded[key] = str(tmp_path / f"{key}.nii.gz")
        nib.save(nib.Nifti1Image(data, affine), padded[key])
    transform = build_volume_transforms("brats_t1ce", mode="reference")
    out_pad, out = prepare_subject(padded, transform), prepare_subject(item, transform)
    assert out_pad["geometry"]["slice_indices"] == list(range(5, 85))
    np.testing.assert_array_equal(out_pad["image"], out["image"])
    np.testing.assert_array_equal(out_pad["lesion"], out["lesion"])


def test_select_slices_rule():
    assert select_slices(155, "reference")[0] == 37 and select_slices(155, "reference")[-1] == 116
    assert select_slices(153, "reference")[0] == 36 and select_slices(153, "reference")[-1] == 115
    assert select_slices(73, "volume") == list(range(73))
    with pytest.raises(DataError, match="only 73 axial slices"):
        select_slices(73, "reference", short_volume="error", name="dwi.nii.gz")


def test_short_volume_reference_mode_takes_all_slices(caplog):
    item = sample_item("sub-strokecase0009")  # 73 slices < 80
    transform = build_volume_transforms(inputs=["dwi", "adc"], target="flair", mode="reference", resample=True)
    with caplog.at_level(logging.WARNING):
        out = prepare_subject(item, transform)
    assert out["image"].shape == (73, 2, 256, 256)
    assert "only 73 axial slices" in caplog.text
    strict = build_volume_transforms(inputs=["dwi", "adc"], target="flair", resample=True, short_volume="error")
    with pytest.raises(DataError, match="sub-strokecase0009_ses-0001_dwi.nii.gz: only 73 axial slices"):
        prepare_subject(item, strict)
    dataset = SliceDataset([item], strict)  # the subject is not silently dropped: it fails when used
    assert len(dataset) == 73
    with pytest.raises(DataError, match="only 73 axial slices"):
        dataset[0]


def test_full_size_subject_reference_window():
    folder = require_shared("data", "tcga_brats_space", "TCGA-DU-7294")
    item = {
        k: str(folder / f"TCGA-DU-7294_{v}_bet.nii.gz")
        for k, v in (("t1", "t1"), ("t1ce", "t1c"), ("t2", "t2"), ("flair", "fla"))
    }
    out = prepare_subject(item, build_volume_transforms("brats_t1ce", mode="reference", with_masks=False))
    assert out["geometry"]["slice_indices"] == list(range(37, 117))
    t1ce = independent_normalize(load(item["t1ce"]))
    sl = resize(t1ce[:, :, 77], (256, 256), order=1, mode="constant", anti_aliasing=True).T
    np.testing.assert_allclose(out["label"][40, 0], (sl.astype(np.float32) - 0.5) / 0.5, rtol=0, atol=1e-6)


@pytest.mark.parametrize("spatial_size, divisor", [(256, 8), (None, 16)])
def test_volume_mode_round_trips_to_the_original_grid(spatial_size, divisor):
    item = sample_item("patient07")  # LAS on disk, LPS inside the pipeline
    out = prepare_subject(
        item, build_volume_transforms("brats_t1ce", mode="volume", spatial_size=spatial_size, divisor=divisor)
    )
    n, _, h, w = out["label"].shape
    assert n == 80 and h % divisor == 0 and w % divisor == 0
    if spatial_size:
        assert (h, w) == (256, 256)
    volume, affine = restore_volume(out["label"], out["geometry"])
    img = nib.load(item["t1ce"])
    assert volume.shape == img.shape
    np.testing.assert_array_equal(affine, img.affine)
    np.testing.assert_allclose(volume, independent_normalize(img.get_fdata()), rtol=0, atol=1e-6)
    mt = SliceStackToVolumed(keys=["label"])({"label": torch.from_numpy(out["label"]), "geometry": out["geometry"]})
    assert tuple(mt["label"].shape) == (1, *img.shape)
    np.testing.assert_allclose(mt["label"].affine.numpy(), img.affine)


def test_restore_rejects_a_stack_of_the_wrong_shape():
    item = sample_item("TCGA-DU-7294")
    out = prepare_subject(item, build_volume_transforms("brats_t1ce", mode="volume", with_masks=False))
    with pytest.raises(DataError, match="does not match the geometry"):
        restore_volume(out["label"][:10], out["geometry"])


def _lps_copy(path: str, dst: str) -> None:
    """Same voxels stored with the second axis reversed (LAS -> LPS), stored values and scaling untouched."""
    img = nib.load(path)
    data = np.asanyarray(img.dataobj.get_unscaled())[:, ::-1, :]
    n = data.shape[1]
    flip = np.array([[1, 0, 0, 0], [0, -1, 0, n - 1], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float)
    out = nib.Nifti1Image(np.ascontiguousarray(data), img.affine @ flip, img.header)
    out.set_qform(img.affine @ flip, 1)
    out.set_sform(img.affine @ flip, 1)
    out.header.set_slope_inter(img.dataobj.slope, img.dataobj.inter)
    nib.save(out, dst)


def test_las_and_lps_copies_give_the_same_arrays(tmp_path):
    las = sample_item("patient07")
    assert nib.aff2axcodes(nib.load(las["t1"]).affine) == ("L", "A", "S")
    lps = {"subject": "patient07_lps"}
    for key in ("t1", "t1ce", "t2", "flair", "lesion"):
        lps[key] = str(tmp_path / f"{key}.nii.gz")
        _lps_copy(las[key], lps[key])
    assert nib.aff2axcodes(nib.load(lps["t1"]).affine) == ("L", "P", "S")
    transform = build_volume_transforms("brats_t1", mode="volume")
    a, b = prepare_subject(las, transform), prepare_subject(lps, transform)
    for key in ("image", "label", "brain_mask", "lesion"):
        np.testing.assert_array_equal(a[key], b[key])
    assert nib.aff2axcodes(np.array(a["geometry"]["canonical_affine"])) == ("L", "P", "S")
    restored, affine = restore_volume(b["label"], b["geometry"])
    np.testing.assert_array_equal(affine, nib.load(lps["t1"]).affine)
    np.testing.assert_allclose(restored, independent_normalize(nib.load(lps["t1"]).get_fdata()), atol=1e-6)


def test_itk_reader_gives_the_same_arrays():
    item = sample_item("TCGA-DU-7294")
    a = prepare_subject(item, build_volume_transforms("brats_t2", mode="volume", with_masks=False))
    b = prepare_subject(item, build_volume_transforms("brats_t2", mode="volume", with_masks=False, reader="itk"))
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_allclose(
        np.array(a["geometry"]["original_affine"]), np.array(b["geometry"]["original_affine"]), atol=1e-4
    )


def test_isles_flair_is_resampled_onto_the_dwi_grid():
    item = sample_item("sub-strokecase0009")
    keys = ["dwi", "adc", "flair"]
    loaded = LoadSubjectd(keys=keys, optional_keys=["lesion"])(item)
    assert loaded["flair"].shape != loaded["dwi"].shape
    with pytest.raises(DataError, match=r"flair\.nii\.gz \('flair'\) is not on the grid of .*dwi\.nii\.gz"):
        EnsureSameGridd(keys=keys, reference_key="dwi", mask_keys=["lesion"])(loaded)
    d = EnsureSameGridd(keys=keys, reference_key="dwi", mask_keys=["lesion"], resample=True)(loaded)
    assert d["flair"].shape == d["dwi"].shape == (1, 77, 89, 73)
    np.testing.assert_allclose(d["flair"].affine.numpy(), d["dwi"].affine.numpy(), atol=1e-6)
    flair_brain, dwi_brain = d["flair"].numpy()[0] > 0, d["dwi"].numpy()[0] != 0
    dice = 2 * (flair_brain & dwi_brain).sum() / (flair_brain.sum() + dwi_brain.sum())
    assert dice > 0.9, dice  # world-coordinate resampling puts the FLAIR brain on the DWI brain
    out = prepare_subject(
        item, build_volume_transforms(inputs=["dwi", "adc"], target="flair", mode="volume", resample=True)
    )
    assert out["geometry"]["original_shape"] == [77, 89, 73]
    assert out["lesion"].sum() == nib.load(item["lesion"]).get_fdata().sum()
