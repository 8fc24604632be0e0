"""Tasks, the 2D slice dataset (batching, caching), the YAML wiring and the preview demo."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, sample_item
from monai.bundle import ConfigParser
from scripts.data.errors import DataError
from scripts.data.pipeline import SliceDataset, build_slice_dataset, build_volume_transforms, prepare_subject
from scripts.data.tasks import TASKS, resolve_task


def test_paper_tasks_have_the_published_input_orders():
    orders = {name: (list(t.inputs), t.target) for name, t in TASKS.items()}
    assert orders == {
        "brats_t1ce": (["flair", "t2", "t1"], "t1ce"),
        "brats_flair": (["t1ce", "t1", "t2"], "flair"),
        "brats_t2": (["t1ce", "t1", "flair"], "t2"),
        "brats_t1": (["flair", "t1ce", "t2"], "t1"),
        "isles_flair": (["t1", "t2", "dwi"], "flair"),
        "isles_t1": (["t2", "dwi", "flair"], "t1"),
    }
    custom = resolve_task("dwi, adc -> flair")
    assert custom.inputs == ("dwi", "adc") and custom.target == "flair"
    assert resolve_task("brats_t1", inputs=["t2", "t1ce"], target="t1").inputs == ("t2", "t1ce")
    assert resolve_task({"inputs": ["t1"], "target": "t2"}).contrasts == ("t1", "t2")
    with pytest.raises(DataError, match="'lesion' is a mask key"):
        resolve_task(inputs=["t1", "lesion"], target="t2")


def test_image_channels_follow_the_task_order():
    item = sample_item("TCGA-DU-7294")
    out = prepare_subject(
        item, build_volume_transforms("brats_t1", mode="volume", with_masks=False, keep_contrasts=True)
    )
    for c, key in enumerate(("flair", "t1ce", "t2")):
        np.testing.assert_array_equal(out["image"][:, c], (out[key] - np.float32(0.5)) / np.float32(0.5))
    assert out["image"].min() == -1.0 and out["image"].max() == 1.0


def test_inference_pipeline_without_target():
    item = sample_item("TCGA-DU-7294")
    out = prepare_subject(item, build_volume_transforms("brats_t1ce", mode="volume", with_target=False))
    assert "label" not in out and out["image"].shape[1] == 3
    no_target = {k: v for k, v in item.items() if k != "t1ce"}
    assert prepare_subject(no_target, build_volume_transforms("brats_t1ce", with_target=False))["image"].shape == (
        80,
        3,
        256,
        256,
    )


@pytest.fixture(scope="module")
def two_subjects():
    lesion_free = {k: v for k, v in sample_item("BraTS-GLI-00001-000").items() if k != "lesion"}
    return [sample_item("TCGA-DU-7294"), lesion_free]


def test_slice_dataset_items_and_batches(two_subjects):
    ds = SliceDataset(two_subjects, build_volume_transforms("brats_t1ce", mode="volume", spatial_size=256))
    assert ds.counts == [80, 80] and len(ds) == 160
    item = ds[85]
    assert item["subject"] == "BraTS-GLI-00001-000" and item["position"] == 5 and item["slice_index"] == 5
    assert item["image"].shape == (3, 256, 256) and item["label"].shape == (1, 256, 256)
    assert item["has_lesion"] is False and not item["lesion"].any()
    assert ds[10]["has_lesion"] is True
    loader = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0))
    batch = next(iter(loader))
    assert batch["image"].shape == (4, 3, 256, 256) and batch["image"].dtype == torch.float32
    assert batch["label"].min() >= -1 and batch["label"].max() <= 1
    assert batch["brain_mask"].shape == (4, 1, 256, 256) and len(batch["subject"]) == 4
    with pytest.raises(IndexError):
        ds[160]


def test_slice_dataset_disk_cache(two_subjects, tmp_path):
    transform = build_volume_transforms("brats_t2", mode="reference")
    first = SliceDataset(two_subjects[:1], transform, cache_dir=str(tmp_path))
    a = first[40]
    folders = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert len(folders) == 1 and folders[0].name.startswith("TCGA-DU-7294-")
    assert {p.name for p in folders[0].iterdir()} == {
        "image.npy",
        "label.npy",
        "brain_mask.npy",
        "lesion.npy",
        "geometry.json",
    }

    def must_not_run(_):
        raise AssertionError("the cached subject was processed again")

    must_not_run.transforms = transform.transforms  # same settings -> same cache key
    second = SliceDataset(two_subjects[:1], must_not_run, cache_dir=str(tmp_path))
    b = second[40]
    for key in ("image", "label", "brain_mask", "lesion"):
        assert torch.equal(a[key], b[key])
    other = SliceDataset(two_subjects[:1], build_volume_transforms("brats_t2", mode="volume"), cache_dir=str(tmp_path))
    assert other[0]["image"].shape[1:] != a["image"].shape[1:]  # other settings -> other cache entry
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 2


def test_bad_subject_error_surfaces_from_the_dataset(two_subjects, tmp_path):
    broken = dict(two_subjects[0], t2=str(tmp_path / "missing_t2.nii.gz"))
    ds = SliceDataset([broken], build_volume_transforms("brats_t1ce"))
    assert len(ds) == 80  # counted from the flair header
    with pytest.raises(DataError, match="missing_t2.nii.gz: file not found"):
        ds[0]


def test_prepare_yaml_matches_the_python_builder(tmp_path, sample_datalist):
    parser = ConfigParser()
    parser.read_config(str(REPO_ROOT / "configs" / "prepare.yaml"))
    parser.update({"bundle_root": str(REPO_ROOT), "split": "test", "output_dir": str(tmp_path), "slice_mode": "volume"})
    dataset = parser.get_parsed_content("dataset")
    python = build_slice_dataset(str(sample_datalist), split="test", task="brats_t1ce", mode="volume")
    assert len(dataset) == len(python) == 160  # the two embedded BraTS test subjects, 80 slices each
    for key in ("image", "label", "brain_mask", "lesion"):
        assert torch.equal(dataset[30][key], python[30][key])
    path = parser.get_parsed_content("preview")()
    assert path.endswith("preview.png") and (tmp_path / "preview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_preview_cli_function(tmp_path, sample_datalist, capsys):
    from scripts.commands.preview import preview as main

    path = main(
        datalist=str(sample_datalist),
        split="isles22",
        inputs=["dwi", "adc"],
        target="flair",
        resample=True,
        mode="volume",
        output_dir=str(tmp_path),
    )
    assert (tmp_path / "preview.png").is_file() and path == str(tmp_path / "preview.png")
    assert "preview written to" in capsys.readouterr().out
