"""The main job: synthesize held-out BraTS subjects with the shipped weights, scored next to both baselines.

    python -m scripts demo                                        # T1ce of the embedded held-out subjects
    python -m scripts demo --task brats_flair                     # or brats_t2, brats_t1
    python -m scripts demo --data_dir /data/brats --out_dir /tmp/scores      # every subject of a folder
    python -m scripts demo --retrain true --brats_dir ../shared/data/brats18  # reproduce the weights

Steps:
1. weights: ``models/model.pt`` (MU-Diff) and ``models/unet.pt`` (U-Net) for T1ce, ``models/<task>/`` for the other
   tasks, shipped in the repository (``docs/README.md``, "Demo models"). Each carries its record (network
   configuration, slicing, training subjects, command, commit, the copy baseline's contrast); the synthesis takes
   its settings from there. ``--retrain true`` trains both again from a BraTS folder with the fixed split
   ``scripts/data/splits/brats18_demo.json`` (about three hours on a 2-core CPU) and replaces them;
2. subjects: the embedded sample's test split (two BraTS 2018 subjects that no demo model saw), or with
   ``--data_dir`` every subject of that folder (BraTS 2018/2019/2023 layouts, detected);
3. MU-Diff synthesis (``configs/inference.yaml``) and the U-Net's;
4. evaluation (``configs/evaluate.yaml``): paper protocol and float metrics in the brain, the tumour and (BraTS
   labels) the enhancing tumour, BraSyn 3D SSIM, per-slice and per-subject CSV, ``summary.json``, a PNG per
   subject; then one verdict line per baseline.
"""

from __future__ import annotations

import logging
from typing import Any

from scripts.cli import run_fire
from scripts.cli_args import parse_bool
from scripts.inference.demo import DEFAULT_NUM_SAMPLES, DEFAULT_TASK, run_demo
from scripts.inference.errors import InferenceError

__all__ = ["demo", "main"]


def demo(
    task: str = DEFAULT_TASK,
    data_dir: str | None = None,
    out_dir: str | None = None,
    retrain: Any = False,
    brats_dir: str | None = None,
    models_dir: str | None = None,
    num_samples: int = DEFAULT_NUM_SAMPLES,
    device: str | None = None,
    unet: Any = True,
    train_overrides: dict | None = None,
    num_slices: int | None = None,
) -> None:
    """Run the main job (arguments as :func:`scripts.inference.demo.run_demo`; ``--unet false`` skips the U-Net)."""
    run_demo(
        task=task,
        data_dir=data_dir,
        out_dir=out_dir,
        retrain_models=parse_bool(retrain, "retrain", InferenceError),
        brats_dir=brats_dir,
        models_dir=models_dir,
        num_samples=num_samples,
        device=device,
        unet=parse_bool(unet, "unet", InferenceError),
        train_overrides=train_overrides,
        num_slices=num_slices,
    )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run_fire(demo, argv)
