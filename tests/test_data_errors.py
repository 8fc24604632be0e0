"""Bad input: every case gives a DataError that names the file (or key) and the problem."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
from conftest import sample_item
from scripts.data.datalist import load_datalist, prepare_datalist
from scripts.data.errors import DataError
from scripts.data.pipeline import build_slice_dataset, build_volume_transforms, prepare_subject
from scripts.data.tasks import TASKS, get_task, resolve_task

CONTRASTS = ("t1", "t1ce", "t2", "flair")


@pytest.fixture(scope="module")
def small_real():
    """A 48x48x12 block of the real TCGA subject (all four contrasts + lesion), as arrays and affine."""
    item = sample_item("TCGA-DU-7294")
    window = (slice(40, 88), slice(50, 98), slice(34, 46))
    arrays = {k: np.asanyarray(nib.load(item[k]).dataobj)[window] for k in (*CONTRASTS, "lesion")}
    affine = nib.load(item["t1"]).affine.copy()
    affine[:3, 3] += affine[:3, :3] @ np.array([40, 50, 34])
    return arrays, affine


def write_subject(tmp_path, small_real, **overrides) -> dict[str, str]:
    """Write the small real subject to tmp_path; ``overrides`` replace arrays (or (array, affine) pairs)."""
    arrays, affine = small_real
    item = {"subject": "small"}
    for key in (*CONTRASTS, "lesion"):
        value = overrides.get(key, arrays[key])
        data, aff = value if isinstance(value, tuple) else (value, affine)
        item[key] = str(tmp_path / f"small_{key}.nii.gz")
        nib.save(nib.Nifti1Image(data, aff), item[key])
    return item


def run(item, **kwargs):
    return prepare_subject(item, build_volume_transforms("brats_t1ce", mode="volume", **kwargs))


def test_valid_small_subject_passes(tmp_path, small_real):
    out = run(write_subject(tmp_path, small_real))
    assert out["image"].shape == (12, 3, 48, 48)


def test_missing_contrast_entry(tmp_path, small_real):
    item = write_subject(tmp_path, small_real)
    del item["t1ce"]
    with pytest.raises(DataError, match=r"subject small: no 't1ce' file in the datalist item"):
        run(item)


def test_missing_contrast_file(tmp_path, small_real):
    item = write_subject(tmp_path, small_real)
    item["t2"] = str(tmp_path / "nowhere_t2.nii.gz")
    with pytest.raises(DataError, match=r"nowhere_t2\.nii\.gz: file not found \('t2' of subject small\)"):
        run(item)


def test_corrupt_file(tmp_path, small_real):
    item = write_subject(tmp_path, small_real)
    with open(item["flair"], "wb") as f:
        f.write(b"this is not a NIfTI file")
    with pytest.raises(DataError, match=r"small_flair\.nii\.gz: cannot be read as an image"):
        run(item)


def test_truncated_file(tmp_path, small_real):
    item = write_subject(tmp_path, small_real)
    with open(item["t1"], "rb") as f:
        raw = gzip.decompress(f.read())
    with open(item["t1"], "wb") as f:
        f.write(gzip.compress(raw[: len(raw) // 2]))
    with pytest.raises(DataError, match=r"small_t1\.nii\.gz: cannot be read as an image"):
        run(item)


def test_4d_volume(tmp_path, small_real):
    arrays, _ = small_real
    item = write_subject(tmp_path, small_real, t2=np.stack([arrays["t2"], arrays["t2"]], axis=-1))
    with pytest.raises(DataError, match=r"small_t2\.nii\.gz: 4D .*shape \(48, 48, 12, 2\)"):
        run(item)


def test_contrasts_on_different_grids(tmp_path, small_real):
    arrays, affine = small_real
    shifted = affine.copy()
    shifted[:3, 3] += 3.0
    item = write_subject(tmp_path, small_real, t1=(arrays["t1"], shifted))
    with pytest.raises(DataError, match=r"small_t1\.nii\.gz \('t1'\) is not on the grid of .*small_flair\.nii\.gz"):
        run(item)
    item = write_subject(tmp_path, small_real, t2=arrays["t2"][:40])
    with pytest.raises(DataError, match=r"small_t2\.nii\.gz .*shape \(40, 48, 12\) vs \(48, 48, 12\)"):
        run(item)


@pytest.mark.parametrize("bad, label", [(np.nan, "1 NaN and 0 Inf"), (np.inf, "0 NaN and 1 Inf")])
def test_non_finite_voxels(tmp_path, small_real, bad, label):
    arrays, _ = small_real
    data = arrays["flair"].astype(np.float32)
    data[20, 20, 5] = bad
    item = write_subject(tmp_path, small_real, flair=data)
    with pytest.raises(DataError, match=rf"small_flair\.nii\.gz: {label} voxels"):
        run(item)


def test_constant_volume(tmp_path, small_real):
    item = write_subject(tmp_path, small_real, t1ce=np.zeros((48, 48, 12), np.int16))
    with pytest.raises(DataError, match=r"small_t1ce\.nii\.gz: constant volume \(every voxel = 0"):
        run(item)


def test_volume_without_positive_voxels(tmp_path, small_real):
    item = write_subject(tmp_path, small_real, t1=-np.abs(small_real[0]["t1"]) - 1)
    with pytest.raises(DataError, match=r"small_t1\.nii\.gz \('t1'\): no strictly positive voxel"):
        run(item)


def test_mask_on_another_grid(tmp_path, small_real):
    arrays, _ = small_real
    item = write_subject(tmp_path, small_real, lesion=arrays["lesion"][:, :, :10])
    with pytest.raises(DataError, match=r"mask .*small_lesion\.nii\.gz \('lesion'\) is not on the grid"):
        run(item)


def test_empty_brain_mask(tmp_path, small_real):
    item = write_subject(tmp_path, small_real)
    item["brain_mask"] = str(tmp_path / "empty_mask.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((48, 48, 12), np.uint8), small_real[1]), item["brain_mask"])
    with pytest.raises(DataError, match=r"empty_mask\.nii\.gz: brain mask \('brain_mask'\) is empty"):
        run(item)


def test_unknown_task_name_lists_valid_names():
    with pytest.raises(DataError) as err:
        get_task("brats_t1c")
    assert "unknown task 'brats_t1c'" in str(err.value)
    for name in TASKS:
        assert name in str(err.value)
    with pytest.raises(DataError, match="unknown task 'foo'"):
        build_volume_transforms(task="foo")
    with pytest.raises(DataError, match="target 't1' is also an input"):
        resolve_task(inputs=["t1", "t2"], target="t1")


def test_empty_dataset_folder(tmp_path):
    with pytest.raises(DataError, match="no BraTS2019, BraTS 2023 or ISLES2015 subjects recognised"):
        prepare_datalist(str(tmp_path), output=str(tmp_path / "datalist.json"))
    with pytest.raises(DataError, match="no subjects found"):
        prepare_datalist(str(tmp_path), layout="generic", patterns={"t1": "*t1*.nii.gz"})
    with pytest.raises(DataError, match="dataset folder not found"):
        prepare_datalist(str(tmp_path / "missing"))
    assert not (tmp_path / "datalist.json").exists()


def test_bad_datalists(tmp_path):
    path = tmp_path / "dl.json"
    path.write_text('{"training": [], "test": [{"subject": "a", "t1": "a_t1.nii.gz"}]}')
    with pytest.raises(
        DataError, match=r"no split 'validation' in the datalist \(splits present: \['training', 'test'\]"
    ):
        load_datalist(str(path), "validation")
    assert load_datalist(str(path), "test")[0]["t1"] == str(tmp_path / "a_t1.nii.gz")
    with pytest.raises(DataError, match="split 'training' of .* is empty"):
        build_slice_dataset(str(path), split="training")
    path.write_text("{not json")
    with pytest.raises(DataError, match="not a valid JSON datalist"):
        load_datalist(str(path))


def test_random_binary_test_data_is_explained():
    """The zoo's unit-test habit (random 0/1 volumes) meets the 1-99 percentile normalisation: say so plainly."""
    from scripts.data.transforms import reference_normalize

    volume = np.random.default_rng(0).integers(0, 2, size=(8, 8, 8)).astype(np.float32)
    with pytest.raises(DataError, match=r"t1: the 1 and 99 percentiles .* random 0/1 test data") as err:
        reference_normalize(volume, name="t1")
    assert "1th" not in str(err.value)
