r"""Synthesize the missing contrast for subject folders or a datalist split, from the bundle config.

Everything (network hyper-parameters, task, slice mode, sampler) comes from ``configs/inference.yaml`` plus any
overlays, so the command and ``python -m monai.bundle run --config_file configs/inference.yaml`` cannot drift apart;
the options below only override config keys. Examples::

    # the embedded sample's test split with models/model.pt (the shipped T1ce weights)
    python -m scripts synthesize --out_dir eval/inference
    # subject folders (files matched by contrast name: t1/t1n/t1w, t1ce/t1c/t1post, t2/t2w, flair/fla/t2f)
    python -m scripts synthesize --subject_dirs "['data/subj1','data/subj2']" --out_dir out
    # the FLAIR demo weights, 8 samples -> mean + standard-deviation map, exact float32 (default: bf16 where native)
    python -m scripts synthesize --weights models/brats_flair/model.pt --num_samples 8 --amp false \
        --out_dir out

Bad input (missing contrast, inputs on different grids, weights of another configuration or task, an output
folder that cannot be written) prints one ``error:`` line and exits with status 2; nothing partial is written.
"""

from __future__ import annotations

import logging

from scripts.cli import run_fire
from scripts.inference.synthesize import run

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run_fire(run, argv, serialize=lambda _: None, doc=__doc__)
