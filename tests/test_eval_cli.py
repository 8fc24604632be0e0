"""The evaluation CLI end to end on NIfTI folders written from real MRI, and its handling of bad input.

Folders (tmp): ref/TCGA-DU-7294/* (BraTS-space names, cropped to 138x171x32) and ref/patient07/* (open_ms names,
102x120x32), lesions/<subject>_lesion.nii.gz, pred/<subject>_syn_t1.nii.gz = the real T1 blurred with sigma 1 voxel,
plus an uncertainty map for TCGA-DU-7294. The CLI adds the copy-T1ce baseline and figures.
Measured (16 middle slices x 2 subjects, every family on that slab, slice level): blurred T1 paper brain PSNR
22.66 +/- 0.69 dB, SSIM 0.845; T1ce copy 18.78 +/- 2.10 dB, SSIM 0.732. Subject level 3D lesion SSIM: blurred
0.965, copy 0.791.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import REPO_ROOT
from PIL import Image
from scipy import ndimage
from scripts.cli import run_fire
from scripts.commands.evaluate import evaluate as main
from scripts.evaluation.evaluate import evaluate_arrays, evaluate_folders
from scripts.evaluation.matching import find_contrast_file, list_predictions, load_volume
from scripts.evaluation.report import figure_size_px

REPO = REPO_ROOT

DATA = REPO.parent / "shared" / "data"
TCGA = DATA / "tcga_brats_space" / "TCGA-DU-7294"
OPEN_MS = DATA / "open_ms" / "patient07"
needs_data = pytest.mark.skipif(not TCGA.is_dir(), reason="../shared/data is absent")
MS_SUFFIX = "_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz"
TCGA_BOX = np.s_[52:190, 22:193, 96:128]
MS_BOX = np.s_[36:138, 45:165, 45:77]


def _crop_copy(src: Path, dst: Path, box) -> nib.Nifti1Image:
    image = nib.load(str(src)).slicer[box]
    dst.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(dst))
    return image


def _blurred(image: nib.Nifti1Image, dst: Path) -> None:
    data = ndimage.gaussian_filter(np.asarray(image.dataobj, dtype=np.float32), 1.0)
    nib.save(nib.Nifti1Image(data, image.affine), str(dst))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    ref, pred, lesions = root / "ref", root / "pred", root / "lesions"
    pred.mkdir()
    lesions.mkdir()
    t1 = None
    for tag in ("t1", "t1c", "t2", "fla"):
        image = _crop_copy(
            TCGA / f"TCGA-DU-7294_{tag}_bet.nii.gz", ref / "TCGA-DU-7294" / f"TCGA-DU-7294_{tag}_bet.nii.gz", TCGA_BOX
        )
        t1 = image if tag == "t1" else t1
    _crop_copy(TCGA / "simple.nii.gz", lesions / "TCGA-DU-7294_lesion.nii.gz", TCGA_BOX)
    _blurred(t1, pred / "TCGA-DU-7294_syn_t1.nii.gz")
    unc = np.abs(ndimage.gaussian_filter(np.asarray(t1.dataobj, np.float32), 2.0) - np.asarray(t1.dataobj, np.float32))
    nib.save(nib.Nifti1Image(unc / unc.max(), t1.affine), str(pred / "TCGA-DU-7294_unc_t1.nii.gz"))
    for tag in ("T1", "T1POST", "T2", "FLAIR"):
        image = _crop_copy(OPEN_MS / f"{tag}{MS_SUFFIX}", ref / "patient07" / f"{tag}{MS_SUFFIX}", MS_BOX)
        t1 = image if tag == "T1" else t1
    gold = OPEN_MS / "GOLD_STANDARD_N4_noneck_reduced_winsor_regtoFLAIR_regtoMNI.nii.gz"
    _crop_copy(gold, lesions / "patient07_lesion.nii.gz", MS_BOX)
    _blurred(t1, pred / "patient07_syn_t1.nii.gz")
    return {"root": root, "ref": ref, "pred": pred, "lesions": lesions}


@pytest.fixture(scope="module")
def cli_run(folders):
    out = folders["root"] / "out"
    command = [
        sys.executable, "-m", "scripts", "evaluate",
        "--pred_dir", str(folders["pred"]), "--ref_dir", str(folders["ref"]), "--out_dir", str(out),
        "--lesion_dir", str(folders["lesions"]), "--copy_from", "t1c", "--inputs", "t1ce,t2,flair",
        "--figures", "--num_slices", "16", "--method", "blurred",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    return done, out


def _read_csv(path: Path) -> list[dict[str, str]]:
    import csv

    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@needs_data
def test_matching_rule_on_real_names(folders):
    preds = list_predictions(folders["pred"])
    assert [(p.subject, p.contrast) for p in preds] == [("TCGA-DU-7294", "t1"), ("patient07", "t1")]
    assert preds[0].uncertainty is not None and preds[1].uncertainty is None
    ref = folders["ref"]
    assert find_contrast_file(ref, "TCGA-DU-7294", "t1").name == "TCGA-DU-7294_t1_bet.nii.gz"
    assert find_contrast_file(ref, "TCGA-DU-7294", "t1ce").name == "TCGA-DU-7294_t1c_bet.nii.gz"
    assert find_contrast_file(ref, "TCGA-DU-7294", "flair").name == "TCGA-DU-7294_fla_bet.nii.gz"
    assert find_contrast_file(ref, "patient07", "t1").name == f"T1{MS_SUFFIX}"  # not T1POST, not ..._regtoFLAIR
    assert find_contrast_file(ref, "patient07", "flair").name == f"FLAIR{MS_SUFFIX}"
    assert find_contrast_file(ref, "patient07", "t1ce").name == f"T1POST{MS_SUFFIX}"


@pytest.mark.slow
@needs_data
def test_cli_end_to_end(folders, cli_run):
    done, out = cli_run
    assert done.returncode == 0, done.stderr
    assert "Paper protocol" in done.stdout and "copy_t1ce" in done.stdout and "blurred" in done.stdout
    slices = _read_csv(out / "metrics_per_slice.csv")
    subjects = _read_csv(out / "metrics_per_subject.csv")
    assert len(slices) == 2 * 2 * 16 and len(subjects) == 4
    assert {r["method"] for r in subjects} == {"blurred", "copy_t1ce"}
    for column in ("paper_brain_psnr", "paper_lesion_ssim", "float_whole_psnr", "float_lesion_mae", "slice"):
        assert column in slices[0]
    for column in ("ssim3d_lesion", "ssim3d_healthy", "float_brain_ssim", "n_slices"):
        assert column in subjects[0]
    summary = json.loads((out / "summary.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    blurred = summary["results"]["blurred"]["t1"]
    copied = summary["results"]["copy_t1ce"]["t1"]
    assert blurred["slice_level"]["paper_brain_psnr"]["n"] == 32
    assert blurred["subject_level"]["float_brain_psnr"]["n"] == 2
    # A slightly blurred T1 is a far better T1 than the T1ce copy, in every family.
    for family in ("paper_brain_psnr", "paper_brain_ssim", "float_brain_psnr", "float_lesion_ssim"):
        assert blurred["slice_level"][family]["mean"] > copied["slice_level"][family]["mean"], family
    assert blurred["subject_level"]["ssim3d_lesion"]["mean"] > copied["subject_level"]["ssim3d_lesion"]["mean"]
    assert blurred["slice_level"]["paper_brain_psnr"]["mean"] == pytest.approx(22.66, abs=0.02)
    assert blurred["slice_level"]["paper_brain_ssim"]["mean"] == pytest.approx(0.845, abs=0.002)
    assert copied["slice_level"]["paper_brain_psnr"]["mean"] == pytest.approx(18.78, abs=0.02)
    assert copied["subject_level"]["ssim3d_lesion"]["mean"] == pytest.approx(0.791, abs=0.002)
    assert summary["config"]["jpeg"] is True and "paper_*" in summary["definitions"]
    assert {m["reference"].split("/")[-1] for m in summary["matched"]} >= {"TCGA-DU-7294_t1_bet.nii.gz"}
    # Figures: 3 inputs + synthesis + truth + error (+ uncertainty when there is one), one row.
    for method in ("blurred", "copy_t1ce"):
        with Image.open(out / "figures" / method / "patient07_t1.png") as png:
            assert png.size == figure_size_px(6, 1)
    with Image.open(out / "figures" / "blurred" / "TCGA-DU-7294_t1.png") as png:
        assert png.size == figure_size_px(7, 1) == (1540, 290)
    leftovers = [p.name for p in out.rglob("*") if p.name.startswith(".")]
    assert leftovers == []


@needs_data
def test_cli_rows_equal_the_importable_function(folders, cli_run):
    done, out = cli_run
    assert done.returncode == 0, done.stderr
    row = next(
        r
        for r in _read_csv(out / "metrics_per_subject.csv")
        if r["method"] == "blurred" and r["subject"] == "patient07"
    )
    pred = load_volume(folders["pred"] / "patient07_syn_t1.nii.gz")[0]
    ref = load_volume(folders["ref"] / "patient07" / f"T1{MS_SUFFIX}")[0]
    lesion = load_volume(folders["lesions"] / "patient07_lesion.nii.gz")[0]
    _, subject = evaluate_arrays(pred, ref, None, lesion, num_slices=16)
    for key in ("paper_brain_psnr", "paper_lesion_ssim", "float_brain_psnr", "ssim3d_lesion", "ssim3d_healthy"):
        assert float(row[key]) == pytest.approx(subject[key], rel=1e-12), key


# ---------------------------------------------------------------- bad input


@pytest.fixture
def tiny(tmp_path):
    """A 60x60x16 real crop with its lesion, as ref + pred folders; returns paths and the T1 image."""
    box = np.s_[100:160, 110:170, 100:116]
    ref = tmp_path / "ref"
    t1 = _crop_copy(TCGA / "TCGA-DU-7294_t1_bet.nii.gz", ref / "TCGA-DU-7294_t1_bet.nii.gz", box)
    pred = tmp_path / "pred"
    pred.mkdir()
    return {"ref": ref, "pred": pred, "t1": t1, "out": tmp_path / "out", "tmp": tmp_path}


def _save(image_data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    nib.save(nib.Nifti1Image(image_data.astype(np.float32), affine), str(path))


@needs_data
def test_grid_mismatch_names_both_files(tiny):
    data = np.asarray(tiny["t1"].dataobj, np.float32)
    _save(data[:-2], tiny["t1"].affine, tiny["pred"] / "TCGA-DU-7294_syn_t1.nii.gz")
    with pytest.raises(ValueError, match=r"grid mismatch: .*TCGA-DU-7294_syn_t1.nii.gz has shape \(58, 60, 16\)"):
        evaluate_folders(str(tiny["pred"]), str(tiny["ref"]), str(tiny["out"]))
    shifted = tiny["t1"].affine.copy()
    shifted[0, 3] += 2.0
    _save(data, shifted, tiny["pred"] / "TCGA-DU-7294_syn_t1.nii.gz")
    with pytest.raises(ValueError, match="different affines"):
        evaluate_folders(str(tiny["pred"]), str(tiny["ref"]), str(tiny["out"]))
    assert list(tiny["out"].iterdir()) == []  # folder created up front, nothing written


@needs_data
def test_nan_prediction_is_reported_and_nothing_is_half_written(tiny):
    data = np.asarray(tiny["t1"].dataobj, np.float32)
    good = tiny["tmp"] / "good"
    good.mkdir()
    _save(data, tiny["t1"].affine, good / "TCGA-DU-7294_syn_t1.nii.gz")
    bad = data.copy()
    bad[5, 5, 5] = np.nan
    _save(bad, tiny["t1"].affine, tiny["pred"] / "TCGA-DU-7294_syn_t1.nii.gz")
    tiny["out"].mkdir()
    old = tiny["out"] / "summary.json"
    old.write_text('{"previous": true}\n')
    with pytest.raises(ValueError, match=r"TCGA-DU-7294_syn_t1.nii.gz: contains 1 NaN"):
        evaluate_folders({"good": str(good), "bad": str(tiny["pred"])}, str(tiny["ref"]), str(tiny["out"]))
    assert sorted(p.name for p in tiny["out"].iterdir()) == ["summary.json"]
    assert old.read_text() == '{"previous": true}\n'


@needs_data
def test_unmatched_and_misnamed_files(tiny):
    data = np.asarray(tiny["t1"].dataobj, np.float32)
    _save(data, tiny["t1"].affine, tiny["pred"] / "nobody_syn_t1.nii.gz")
    with pytest.raises(FileNotFoundError, match="no 't1' reference for subject 'nobody'"):
        evaluate_folders(str(tiny["pred"]), str(tiny["ref"]), str(tiny["out"]))
    _save(data, tiny["t1"].affine, tiny["pred"] / "TCGA-DU-7294_t1.nii.gz")
    with pytest.raises(ValueError, match=r"do not follow .*TCGA-DU-7294_t1.nii.gz"):
        evaluate_folders(str(tiny["pred"]), str(tiny["ref"]), str(tiny["out"]))
    empty = tiny["tmp"] / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no '<subject>_syn_<contrast>.nii.gz' file"):
        evaluate_folders(str(empty), str(tiny["ref"]), str(tiny["out"]))
    with pytest.raises(FileNotFoundError, match="prediction folder .*missing does not exist"):
        evaluate_folders(str(tiny["tmp"] / "missing"), str(tiny["ref"]), str(tiny["out"]))


@needs_data
def test_unwritable_output_folder(tiny):
    data = np.asarray(tiny["t1"].dataobj, np.float32)
    _save(data, tiny["t1"].affine, tiny["pred"] / "TCGA-DU-7294_syn_t1.nii.gz")
    blocker = tiny["tmp"] / "a_file"
    blocker.write_text("x")
    with pytest.raises(PermissionError, match="output folder .*a_file/out is not writable"):
        evaluate_folders(str(tiny["pred"]), str(tiny["ref"]), str(blocker / "out"))
    if os.geteuid() != 0:  # root ignores directory permissions
        locked = tiny["tmp"] / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(PermissionError, match="not writable"):
            evaluate_folders(str(tiny["pred"]), str(tiny["ref"]), str(locked))


@needs_data
def test_cli_error_is_one_clear_line(tiny, capsys):
    argv = ["--pred_dir", str(tiny["tmp"] / "missing"), "--ref_dir", str(tiny["ref"]), "--out_dir", str(tiny["out"])]
    assert run_fire(main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: prediction folder") and "\n" not in err


@needs_data
def test_cli_rejects_a_bad_boolean(tiny, capsys):
    argv = ["--pred_dir", str(tiny["pred"]), "--ref_dir", str(tiny["ref"]), "--out_dir", str(tiny["out"])]
    assert run_fire(main, [*argv, "--jpeg", "maybe"]) == 2
    assert "--jpeg must be true or false, got 'maybe'" in capsys.readouterr().err


@needs_data
def test_folder_evaluation_counts_and_warns_about_unsynthesized_slices(tiny, caplog):
    """The folder path (the CLI's and the main job's) flags slices a method never synthesized."""
    data = np.asarray(tiny["t1"].dataobj, np.float32)
    partial = data.copy()
    partial[..., :4] = 0
    _save(partial, tiny["t1"].affine, tiny["pred"] / "TCGA-DU-7294_syn_t1.nii.gz")
    with caplog.at_level("WARNING", logger="scripts.evaluation.evaluate"):
        evaluate_folders(str(tiny["pred"]), str(tiny["ref"]), str(tiny["out"]), num_slices=None, method="partial")
    rows = _read_csv(tiny["out"] / "metrics_per_subject.csv")
    assert [(r["method"], r["n_empty_slices"], r["n_slices"]) for r in rows] == [("partial", "4", "16")]
    assert "'partial', subject 'TCGA-DU-7294': 4 of 16 evaluated slices are empty" in caplog.text
