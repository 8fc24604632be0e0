r"""Synthesize whole subjects with the U-Net baseline (architecture, task and slicing from its training config).

    python -m scripts synthesize_unet --config_file configs/train_unet.yaml --split test \
        --output_dir output/unet [--checkpoint models/unet.pt] [--batch_size 16] [--device cpu] \
        [--subjects "[a,b]"] [--<config id> VALUE ...]

Any other ``--key value`` overrides that id of the training config, as with ``monai.bundle run``. The outputs are
``<subject>_syn_<target>.nii.gz`` on each input's grid, written as MU-Diff's are; the written paths are printed.
"""

from __future__ import annotations

import logging

from scripts.baselines.synthesize import run
from scripts.cli import run_fire

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return run_fire(run, argv, serialize=lambda paths: "\n".join(paths), doc=__doc__)
