"""The reference code's .npy layout: our export reads back as the same slices, in the reference's stored layout."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import sample_item
from scripts.data.errors import DataError
from scripts.data.pipeline import SliceDataset, build_volume_transforms
from skimage.transform import resize
from tools.npy_io import ReferenceNpyDataset, export_reference_npy


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("npy")
    item = sample_item("TCGA-DU-7294")
    counts = export_reference_npy({"test": [item]}, str(root), splits=("test",))
    return root, item, counts


def test_export_writes_the_reference_layout(exported):
    root, item, counts = exported
    assert counts == {"test": 80}
    for name in ("flair", "t2", "t1", "t1ce"):
        arr = np.load(root / "test" / f"{name}.npy")
        assert arr.shape == (80, 256, 256) and arr.dtype == np.float32
        assert arr.min() == 0.0 and arr.max() == 1.0
    # stored BEFORE the loader's transpose: row i is resize(normalized data[:, :, z]) itself
    v = nib.load(item["t2"]).get_fdata()
    pos = v[v > 0]
    c = np.clip(v, np.percentile(pos, 1), np.percentile(pos, 99))
    norm = (c - c.min()) / (c.max() - c.min())
    expected = resize(norm[:, :, 33], (256, 256), order=1, mode="constant", anti_aliasing=True)
    np.testing.assert_allclose(np.load(root / "test" / "t2.npy")[33], expected, rtol=0, atol=1e-6)
    lesion = np.load(root / "test" / "lesion.npy")
    assert lesion.dtype == np.uint8 and lesion.any()


def test_npy_dataset_gives_the_same_items_as_the_nifti_pipeline(exported):
    root, item, _ = exported
    npy = ReferenceNpyDataset(str(root), "test", task="brats_t1ce")
    nifti = SliceDataset([item], build_volume_transforms("brats_t1ce", mode="reference"))
    assert len(npy) == len(nifti) == 80
    for i in (0, 41, 79):
        a, b = npy[i], nifti[i]
        for key in ("image", "label", "brain_mask", "lesion"):
            assert torch.equal(a[key], b[key]), key
        assert (a["subject"], a["slice_index"]) == (b["subject"], b["slice_index"]) == ("TCGA-DU-7294", i)


def test_npy_dataset_without_our_extra_files(exported, tmp_path):
    root, _, _ = exported
    (tmp_path / "val").mkdir()
    for name in ("flair", "t2", "t1", "t1ce"):
        (tmp_path / "val" / f"{name}.npy").write_bytes((root / "test" / f"{name}.npy").read_bytes())
    ds = ReferenceNpyDataset(str(tmp_path), "validation", task="brats_flair")
    item = ds[40]
    assert item["image"].shape == (3, 256, 256) and item["label"].shape == (1, 256, 256)
    assert item["subject"] == "npy:val" and item["slice_index"] == 40 and "lesion" not in item
    inside = item["brain_mask"][0] > 0
    assert inside.any() and torch.all(item["image"][:, ~inside] == -1)


def test_npy_problems_are_named(exported, tmp_path):
    root, _, _ = exported
    (tmp_path / "test").mkdir()
    with pytest.raises(DataError, match=r"test/flair\.npy: not found"):
        ReferenceNpyDataset(str(tmp_path), "test")
    np.save(tmp_path / "test" / "flair.npy", np.load(root / "test" / "flair.npy") * 255)  # 8-bit, not [0, 1]
    for name in ("t2", "t1", "t1ce"):
        np.save(tmp_path / "test" / f"{name}.npy", np.load(root / "test" / f"{name}.npy"))
    ds = ReferenceNpyDataset(str(tmp_path), "test")
    with pytest.raises(DataError, match=r"flair\.npy: row 40 has values in \[0, 25\d\.?\d*\], expected \[0, 1\]"):
        ds[40]
    np.save(tmp_path / "test" / "t2.npy", np.zeros((79, 256, 256), np.float32))
    with pytest.raises(DataError, match="contrast arrays differ in shape"):
        ReferenceNpyDataset(str(tmp_path), "test")
    with pytest.raises(DataError, match="unknown split 'dev'"):
        ReferenceNpyDataset(str(tmp_path), "dev")
