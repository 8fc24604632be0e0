"""Baselines a synthesis model must beat: a deterministic U-Net regression (trained by configs/train_unet.yaml).

The other baseline, copying the most similar input contrast, needs no training and lives with the evaluation
(``scripts/evaluation/copy_baseline.py``).
"""

from .synthesize import synthesize_datalist, unet_synthesizer
from .unet import CheckpointError, RegressionUNet, load_unet, read_state_dict

__all__ = [
    "CheckpointError",
    "RegressionUNet",
    "load_unet",
    "read_state_dict",
    "synthesize_datalist",
    "unet_synthesizer",
]
