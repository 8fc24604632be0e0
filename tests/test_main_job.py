"""The README's main job end to end, at CI size: train a demo-scale MU-Diff for one epoch on a few real slices,
synthesize the embedded sample's test subject, evaluate it next to the copy baseline, print the tables and the PNG.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

TEST_SUBJECT = "TCGA-DU-7294"
FLAIR = REPO_ROOT / "sample_data" / "tcga_brats_space" / TEST_SUBJECT / f"{TEST_SUBJECT}_fla_bet.nii.gz"
#: CI size: 1 epoch on 4 slices per training subject at 32x32; 4 slices synthesized and evaluated
FAST = ["--epochs", "1", "--train_slices", "4", "--spatial_size", "32", "--num_slices", "4"]


def _unet_weights(folder: Path) -> Path:
    """Random weights of the demo U-Net (the baseline only has to take part, not to be good)."""
    import torch

    from scripts.baselines.synthesize import settings_from_config
    from scripts.baselines.unet import RegressionUNet

    configs = [str(REPO_ROOT / "configs" / c) for c in ("train_unet.yaml", "train_unet_demo.yaml")]
    torch.manual_seed(0)
    path = folder / "unet.pt"
    torch.save(RegressionUNet(**settings_from_config(configs)["network_kwargs"]).state_dict(), path)
    return path


def test_main_job_trains_synthesizes_and_reports(tmp_path):
    ckpt, out = tmp_path / "models", tmp_path / "eval"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    cmd = [sys.executable, "-m", "scripts.inference.demo", *FAST, "--ckpt_dir", str(ckpt), "--eval_dir", str(out)]
    cmd += ["--unet_weights", str(_unet_weights(tmp_path))]
    done = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]

    # 1. no weights -> the demo overlay was trained with the bundle's training command
    assert "training the demo model" in done.stdout and (ckpt / "model.pt").is_file()
    assert (ckpt / "resume.pt").is_file()  # the training record the inference checks the task against

    # 2. the synthesis lies on the test subject's own grid, 4 middle slices filled
    syn = nib.load(out / "mudiff" / f"{TEST_SUBJECT}_syn_t1ce.nii.gz")
    grid = nib.load(FLAIR)
    assert syn.shape == grid.shape and np.allclose(syn.affine, grid.affine, atol=1e-5)
    data = np.asarray(syn.dataobj)
    assert [z for z in range(data.shape[2]) if data[:, :, z].any()] == [38, 39, 40, 41]
    # the U-Net synthesizes the evaluated window too, not its training config's 48 slices
    unet = np.asarray(nib.load(out / "unet" / f"{TEST_SUBJECT}_syn_t1ce.nii.gz").dataobj)
    assert [z for z in range(unet.shape[2]) if unet[:, :, z].any()] == [38, 39, 40, 41]

    # 3. printed tables: MU-Diff, the U-Net and the copy baseline, every family; the PNG report path
    for header in ("Paper protocol", "Float metrics", "Per subject"):
        assert header in done.stdout
    assert re.search(r"^mudiff\s+t1ce\s+\d+\.\d+ ± ", done.stdout, re.M)
    assert re.search(r"^copy_(t1|t2|flair)\s+t1ce\s+\d+\.\d+ ± ", done.stdout, re.M)
    assert re.search(r"^unet\s+t1ce\s+\d+\.\d+ ± ", done.stdout, re.M)
    assert re.search(
        r"^mudiff (beats|does not beat|partly beats) copy_(t1|t2|flair) on t1ce \(paper", done.stdout, re.M
    )
    assert re.search(r"^mudiff (beats|does not beat|partly beats) unet on t1ce", done.stdout, re.M)
    png = re.search(r"^PNG report: (\S+\.png)", done.stdout, re.M)
    assert png, done.stdout[-2000:]
    assert Path(png.group(1)).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # 4. the report files hold finite metrics for both methods
    summary = json.loads((out / "report" / "summary.json").read_text(encoding="utf-8"))
    methods = summary["results"]
    assert {"mudiff", "unet"} <= set(methods) and any(m.startswith("copy_") for m in methods)
    psnr = methods["mudiff"]["t1ce"]["slice_level"]["paper_brain_psnr"]["mean"]
    assert math.isfinite(psnr) and psnr > 0
    copy = json.loads((out / "report" / "copy_baseline.json").read_text(encoding="utf-8"))
    assert copy["reference_subjects"] and TEST_SUBJECT not in copy["reference_subjects"]  # chosen without the test

    # 5. a second run reuses the weights instead of training again
    again = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    assert "using the demo weights" in again.stdout and "training the demo model" not in again.stdout


def test_main_job_for_another_task(tmp_path, capsys):
    """``--task brats_flair`` trains, synthesizes and scores FLAIR from T1, T1ce and T2; an unknown task is one
    clear error before anything trains."""
    from scripts.inference.demo import main

    assert main(["--task", "brats_t3", "--ckpt_dir", str(tmp_path / "never")]) == 2
    assert "unknown task 'brats_t3'" in capsys.readouterr().err and not (tmp_path / "never").exists()

    ckpt, out = tmp_path / "models", tmp_path / "eval"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    cmd = [sys.executable, "-m", "scripts.inference.demo", *FAST, "--task", "brats_flair", "--unet", "false"]
    cmd += ["--ckpt_dir", str(ckpt), "--eval_dir", str(out)]
    done = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert (out / "mudiff" / f"{TEST_SUBJECT}_syn_flair.nii.gz").is_file()
    assert re.search(r"^mudiff\s+flair\s+\d+\.\d+ ± ", done.stdout, re.M)
    assert re.search(r"^copy_(t1|t1ce|t2)\s+flair\s+\d+\.\d+ ± ", done.stdout, re.M)  # never the target itself


def test_verdict_compares_every_baseline_on_each_metric():
    from scripts.inference.demo import verdict

    def stats(psnr, ssim, mae):
        values = {"paper_brain_psnr": psnr, "paper_brain_ssim": ssim, "paper_brain_mae": mae}
        return {"t1ce": {"slice_level": {k: {"mean": v, "std": 0.0, "n": 80} for k, v in values.items()}}}

    summary = {"mudiff": stats(22.0, 0.80, 0.05), "unet": stats(20.0, 0.70, 0.06), "copy_t1": stats(21.0, 0.85, 0.04)}
    lines = verdict(summary)
    assert lines[0] == (
        "mudiff beats unet on t1ce (paper protocol, brain: psnr 22.000 vs 20.000, ssim 0.800 vs 0.700, "
        "mae 0.050 vs 0.060)"
    )
    assert lines[1].startswith("mudiff partly beats copy_t1 on t1ce")  # higher PSNR, lower SSIM, higher MAE
    summary["mudiff"] = stats(19.0, 0.60, 0.09)
    assert all(" does not beat " in line for line in verdict(summary))
