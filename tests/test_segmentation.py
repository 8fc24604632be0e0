"""Downstream segmentation: BraTS regions through the synthesis pipeline, the conditions, and Dice.

Real data: Brats18_2013_2_1 (embedded held-out subject, expert labels 1/2/4), a few middle slices at 32x32.
"""

from __future__ import annotations

import json
import logging

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, sample_item
from monai.bundle import ConfigWorkflow
from scripts.data import DataError
from scripts.networks.checkpoints import read_state_dict
from scripts.segmentation.data import (
    REGIONS,
    SEG_CONTRASTS,
    SegmentationSlices,
    segmentation_transform,
    subject_stack,
    with_target,
)
from scripts.segmentation.evaluate import dice_scores, evaluate_conditions, summarize_dice

SUBJECT = "Brats18_2013_2_1"
SEGMENT_CONFIG = REPO_ROOT / "configs" / "segment.yaml"


@pytest.fixture(scope="module")
def transform():
    return segmentation_transform(spatial_size=32, num_slices=6)


def test_regions_follow_the_brats_labels(transform):
    """Whole tumour = labels 1, 2, 4; core = 1, 4; enhancing = 4, each sliced like the lesion mask; the four
    contrasts are the channels in SEG_CONTRASTS order, exactly the synthesis pipeline's values."""
    item = sample_item(SUBJECT)
    stack = subject_stack(item, transform)
    assert stack["image"].shape == (6, 4, 32, 32) and stack["label"].shape == (6, 3, 32, 32)
    wt, tc, et = (stack["label"][:, i] for i in range(3))
    assert list(REGIONS) == ["wt", "tc", "et"]
    assert et.sum() > 0 and np.all(et <= tc) and np.all(tc <= wt) and wt.sum() > tc.sum() >= et.sum()
    # the same regions, computed directly from the label file at full resolution (middle slices)
    seg = np.asarray(nib.load(item["lesion"]).dataobj)
    middle = seg[:, :, 37:43]
    assert (middle > 0).sum() > np.isin(middle, (1, 4)).sum() > (middle == 4).sum() > 0
    assert np.all((stack["image"] >= -1) & (stack["image"] <= 1))


def test_conditions_replace_or_empty_the_target(transform, tmp_path):
    item = sample_item(SUBJECT)
    real = subject_stack(item, transform)["image"]
    t1ce = SEG_CONTRASTS.index("t1ce")
    copied = subject_stack(with_target(item, "t1ce", item["t1"]), transform)["image"]
    assert np.array_equal(copied[:, t1ce], real[:, SEG_CONTRASTS.index("t1")])
    assert np.array_equal(np.delete(copied, t1ce, 1), np.delete(real, t1ce, 1))
    empty = subject_stack(with_target(item, "t1ce", None), transform)["image"]
    assert np.all(empty[:, t1ce] == -1.0) and np.array_equal(np.delete(empty, t1ce, 1), np.delete(real, t1ce, 1))
    with pytest.raises(DataError, match="segmentation inputs are"):
        with_target(item, "dwi", None)


def test_dice_convention():
    label = np.zeros((2, 3, 4, 4), np.uint8)
    label[0, 0, :2] = 1  # 8 voxels of whole tumour, no core, no enhancement
    pred = np.zeros_like(label)
    pred[0, 0, :1] = 1  # 4 of them
    pred[1, 1, 0, 0] = 1  # a false core voxel
    assert dice_scores(pred, label) == {"dice_wt": 2 * 4 / 12, "dice_tc": 0.0, "dice_et": 1.0}


def test_evaluation_scores_every_condition(transform, tmp_path):
    """A segmenter that returns the truth for real inputs: each condition gets a row per subject, the summary a mean
    per region, and a missing synthesis is refused by name."""
    from monai.networks.nets import SegResNet

    torch.manual_seed(0)
    net = SegResNet(spatial_dims=2, in_channels=4, out_channels=3, init_filters=8).eval()
    item = sample_item(SUBJECT)
    syn = tmp_path / "mudiff"
    syn.mkdir()
    img = nib.load(item["t1ce"])
    nib.save(
        nib.Nifti1Image(np.asarray(img.dataobj, np.float32) / 1000.0, img.affine), syn / f"{SUBJECT}_syn_t1ce.nii.gz"
    )
    rows = evaluate_conditions([item], net, transform, "t1ce", {"mudiff": str(syn)}, copy_from="t1")
    assert [r["condition"] for r in rows] == ["real", "mudiff", "copy_t1", "zeros"]
    assert all(0.0 <= r[f"dice_{k}"] <= 1.0 for r in rows for k in REGIONS)
    summary = summarize_dice(rows)
    assert set(summary) == {"real", "mudiff", "copy_t1", "zeros"} and summary["real"]["dice_wt"]["n"] == 1
    (syn / f"{SUBJECT}_syn_t1ce.nii.gz").rename(syn / "other_syn_t1ce.nii.gz")
    with pytest.raises(DataError, match=f"mudiff: no synthesis of subject {SUBJECT}"):
        evaluate_conditions([item], net, transform, "t1ce", {"mudiff": str(syn)})


def test_training_slices_need_expert_labels(transform):
    item = {k: v for k, v in sample_item(SUBJECT).items() if k != "lesion"}
    with pytest.raises(DataError, match="no 'lesion'"):
        SegmentationSlices([item], transform)
    data = SegmentationSlices([sample_item(SUBJECT)], transform)
    assert len(data) == 6 and data[0]["image"].shape == (4, 32, 32) and data[0]["label"].shape == (3, 32, 32)


def test_bundle_training_writes_the_best_model_and_an_interrupted_run_resumes(tmp_path, caplog):
    """configs/segment.yaml through the bundle workflow on two real BraTS subjects (one to train, one to validate)
    at 32x32: the best model is written, and running the same command again continues from segmentation_resume.pt."""
    datalist = tmp_path / "datalist.json"
    items = {"training": [sample_item(SUBJECT)], "validation": [sample_item("Brats18_2013_20_1")]}
    datalist.write_text(json.dumps(items), encoding="utf-8")

    def train(epochs: int) -> dict:
        settings = {
            "bundle_root": str(REPO_ROOT),
            "datalist_file": str(datalist),
            "ckpt_dir": str(tmp_path / "models"),
            "output_dir": str(tmp_path / "eval"),
            "spatial_size": 32,
            "num_slices": 6,
            "init_filters": 8,
            "batch_size": 3,
            "epochs": epochs,
        }
        workflow = ConfigWorkflow(config_file=str(SEGMENT_CONFIG), logging_file=False, **settings)
        workflow.initialize()
        workflow.run()
        workflow.finalize()
        return torch.load(tmp_path / "models" / "segmentation_resume.pt", weights_only=True)["objects"]

    first = train(1)
    assert first["trainer"]["iteration"] == first["trainer"]["epoch_length"] == 2  # 6 slices, batch 3
    assert first["validation"]["best_metric_epoch"] == 1
    best = read_state_dict(tmp_path / "models" / "segmentation.pt")  # the plain state dict evaluate.py loads
    assert set(best) == set(first["network"]) and all(torch.equal(best[k], first["network"][k]) for k in best)
    caplog.set_level(logging.INFO)
    second = train(2)  # the same folder: continues at epoch 2 instead of starting over
    assert "segmentation_resume.pt at epoch 1" in caplog.text
    assert second["trainer"]["iteration"] == 4
    assert not all(torch.equal(first["network"][k], second["network"][k]) for k in first["network"])
