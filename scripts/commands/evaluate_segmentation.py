r"""Dice of the downstream segmentation when one contrast is real, synthesized, copied from another input, or missing.

    python -m scripts evaluate_segmentation --datalist_file DATALIST [--split test] --target t1ce \
        --syntheses "{'mudiff': 'eval/demo/brats_t1ce/mudiff', 'unet': 'eval/demo/brats_t1ce/unet'}" \
        [--copy_from t1] [--weights models/segmentation.pt] [--config_file configs/segment.yaml] [--out_dir OUT]

Conditions, each scored on every subject of the split: ``real`` (all four real contrasts), one per synthesis folder
(``<subject>_syn_<target>.nii.gz`` in place of the real target), ``copy_<c>`` (the target replaced by input ``c``)
and ``zeros`` (the target channel left empty). Writes ``dice_per_subject.csv`` and ``dice_summary.json`` under
``--out_dir`` and prints the table (docs/segmentation.md).
"""

from __future__ import annotations

import logging

from scripts.cli import run_fire
from scripts.segmentation.evaluate import run

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    return run_fire(run, argv, serialize=lambda _: None, doc=__doc__)
