"""The README's main job: the shipped weights synthesize the embedded held-out BraTS subjects and are scored next to
the copy baseline and the U-Net; ``--data_dir`` scores any folder; ``--retrain`` reproduces weights from a BraTS
folder (at CI size)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, require_shared, sample_item
from scripts.commands.demo import main
from scripts.inference.demo import DEMO_TASKS, demo_weights, verdict

TEST_SUBJECTS = ("Brats18_2013_2_1", "Brats18_2013_20_1")
#: CI size: 4 middle slices of each held-out subject
FAST = ["--num_slices", "4"]


def _run(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    cmd = [sys.executable, "-m", "scripts", "demo", *args]
    return subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)


def test_shipped_weights_carry_their_record():
    """Every BraTS task ships compact MU-Diff and U-Net weights that say how they were made."""
    assert set(DEMO_TASKS) == {"brats_t1ce", "brats_flair", "brats_t2", "brats_t1"}
    for task in DEMO_TASKS:
        weights = demo_weights(task)
        for path in (weights.mudiff, weights.unet):
            assert path.is_file(), path
            assert path.stat().st_size < 8_000_000, (path, path.stat().st_size)  # float16, a few MB
            state = torch.load(path, map_location="cpu", weights_only=True)
            assert all(
                v.dtype == torch.float16 for k, v in state.items() if k != "_extra_state" and v.is_floating_point()
            )
            record = state["_extra_state"]["record"]
            assert record["task"] == task and record["spatial_size"] == 128 and record["slice_mode"] == "reference"
            for key in (
                "training_subjects",
                "validation_subjects",
                "command",
                "commit",
                "training_seconds",
                "copy_from",
            ):
                assert record.get(key), (path, key)
            assert not set(record["training_subjects"]) & set(TEST_SUBJECTS)  # never trained on the held-out ones


@pytest.mark.slow
def test_main_job_scores_the_held_out_subjects(tmp_path):
    out = tmp_path / "eval"
    done = _run([*FAST, "--out_dir", str(out)])
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert "training the demo" not in done.stdout  # the shipped weights are used as they are

    # the syntheses lie on each subject's own grid, the 4 middle slices filled
    for subject in TEST_SUBJECTS:
        grid = nib.load(sample_item(subject)["flair"])
        for method in ("mudiff", "unet"):
            syn = nib.load(out / method / f"{subject}_syn_t1ce.nii.gz")
            assert syn.shape == grid.shape and np.allclose(syn.affine, grid.affine, atol=1e-5)
            data = np.asarray(syn.dataobj)
            assert [z for z in range(data.shape[2]) if data[:, :, z].any()] == [38, 39, 40, 41]

    # tables of every family for the three methods, tumour and enhancing tumour columns, the verdict, the PNGs
    for header in ("Paper protocol", "Float metrics", "Per subject"):
        assert header in done.stdout
    for method in ("mudiff", "unet", "copy_t1"):
        assert re.search(rf"^{method}\s+t1ce\s+\d+\.\d+ ± ", done.stdout, re.M), method
    assert "paper_lesion_psnr" in done.stdout and "paper_enhancing_psnr" in done.stdout
    assert re.search(r"^mudiff (beats|does not beat|partly beats) copy_t1 on t1ce \(\d+/9; paper", done.stdout, re.M)
    assert re.search(r"^mudiff (beats|does not beat|partly beats) unet on t1ce", done.stdout, re.M)
    pngs = re.search(r"^PNG report: (.+)$", done.stdout, re.M).group(1).split(", ")
    assert len(pngs) == 2 and all(Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    summary = json.loads((out / "report" / "summary.json").read_text(encoding="utf-8"))["results"]
    assert math.isfinite(summary["mudiff"]["t1ce"]["slice_level"]["paper_brain_psnr"]["mean"])
    rows = (out / "report" / "metrics_per_subject.csv").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 1 + 3 * len(TEST_SUBJECTS)  # header + (mudiff, unet, copy) x subjects


@pytest.mark.slow
def test_any_brats_folder_is_scored_as_test_subjects(tmp_path):
    """``--data_dir``: every subject of a BraTS-layout folder (here the BraTS 2018 naming) is a test subject."""
    folder = tmp_path / "brats"
    subject = TEST_SUBJECTS[1]
    (folder / subject).mkdir(parents=True)
    for key, path in sample_item(subject).items():
        if key != "subject":
            shutil.copy(path, folder / subject / Path(path).name)
    out = tmp_path / "scores"
    args = [*FAST, "--num_samples", "1", "--data_dir", str(folder), "--out_dir", str(out), "--unet", "false"]
    done = _run(args)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    datalist = json.loads((out / "datalist.json").read_text(encoding="utf-8"))
    assert datalist["num_subjects"]["test"] == 1 and datalist["split_method"] == "test"
    assert (out / "mudiff" / f"{subject}_syn_t1ce.nii.gz").is_file()
    assert not (out / "mudiff" / f"{subject}_unc_t1ce.nii.gz").exists()  # one sample: no uncertainty map
    assert re.search(r"^copy_(t1|t2|flair)\s+t1ce\s+\d+\.\d+ ± ", done.stdout, re.M)  # never the target itself
    assert sorted(os.listdir(folder / subject)) == sorted(
        Path(p).name for k, p in sample_item(subject).items() if k != "subject"
    )


@pytest.mark.slow
def test_retrain_reproduces_weights_from_a_brats_folder(tmp_path):
    """``--retrain true`` trains both models on the fixed demo split of a BraTS folder and writes compact weights
    with their record; CI size (1 epoch on 2 slices at 32x32, tiny networks), into a scratch models folder."""
    brats = require_shared("data", "brats18")
    models = tmp_path / "models"
    small = {"epochs": 1, "cosine_epochs": 1, "num_slices": 2, "spatial_size": 32, "nf": 8, "ch_mult": [1, 2]}
    small.update({"ngf": 8, "critic_blocks": 3})
    small.update({"unet_channels": [8, 16, 32], "unet_strides": [2, 2], "num_res_units": 1, "val_batch_size": 2})
    args = ["--retrain", "true", "--brats_dir", str(brats), "--models_dir", str(models), "--num_slices", "2"]
    args += ["--out_dir", str(tmp_path / "eval"), "--train_overrides", json.dumps(small)]
    done = _run(args)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert re.search(r"training the demo MU-Diff: [\d.]+ min", done.stdout)
    state = torch.load(models / "model.pt", map_location="cpu", weights_only=True)
    record = state["_extra_state"]["record"]
    assert record["spatial_size"] == 32 and len(record["training_subjects"]) == 11
    assert record["copy_from"] == "t1" and "--epochs 1" in record["command"]
    assert (models / "unet.pt").is_file()


def test_bad_input_is_one_line(tmp_path, capsys):
    assert main(["--task", "brats_t3"]) == 2
    assert "unknown task 'brats_t3'" in capsys.readouterr().err
    assert main(["--task", "isles_flair"]) == 2
    assert "demo models exist for brats_t1ce, brats_flair, brats_t2, brats_t1" in capsys.readouterr().err
    snapshot = tmp_path / "snapshot"  # weights that did not come from --retrain (no copy contrast in the record)
    snapshot.mkdir()
    state = torch.load(demo_weights("brats_t1ce").mudiff, weights_only=True)
    del state["_extra_state"]["record"]["copy_from"]
    torch.save(state, snapshot / "model.pt")
    assert main(["--models_dir", str(snapshot), "--unet", "false"]) == 2
    assert "its record names no copy-baseline contrast" in capsys.readouterr().err
    assert main(["--models_dir", str(tmp_path)]) == 2
    assert f"{tmp_path / 'model.pt'} not found" in capsys.readouterr().err
    assert main(["--retrain", "true", "--models_dir", str(tmp_path)]) == 2
    assert "--retrain true needs --brats_dir" in capsys.readouterr().err
    assert main(["--data_dir", str(tmp_path / "nowhere")]) == 2
    assert "dataset folder not found" in capsys.readouterr().err


def test_verdict_compares_every_baseline_on_each_metric():
    def stats(psnr, ssim, mae, lesion=None):
        values = {"paper_brain_psnr": psnr, "paper_brain_ssim": ssim, "paper_brain_mae": mae}
        if lesion:
            values.update(zip(("paper_lesion_psnr", "paper_lesion_ssim", "paper_lesion_mae"), lesion, strict=True))
        return {"t1ce": {"slice_level": {k: {"mean": v, "std": 0.0, "n": 80} for k, v in values.items()}}}

    summary = {"mudiff": stats(22.0, 0.80, 0.05), "unet": stats(20.0, 0.70, 0.06), "copy_t1": stats(21.0, 0.85, 0.04)}
    lines = verdict(summary)
    assert lines[0] == (
        "mudiff beats unet on t1ce (3/3; paper protocol: brain_psnr 22.000 vs 20.000, brain_ssim 0.800 vs 0.700, "
        "brain_mae 0.050 vs 0.060)"
    )
    assert lines[1].startswith("mudiff partly beats copy_t1 on t1ce (1/3;")  # higher PSNR, lower SSIM, higher MAE
    assert "brain_ssim 0.800 vs 0.850 (x)" in lines[1]
    summary = {"mudiff": stats(19.0, 0.60, 0.09, (20, 0.7, 0.1)), "copy_t1": stats(21.0, 0.85, 0.04, (21, 0.8, 0.05))}
    assert verdict(summary) == [verdict(summary)[0]] and " does not beat copy_t1 on t1ce (0/6;" in verdict(summary)[0]
