"""Lay a datalist split out as a flat MONAI Label studies folder (``<subject>_<contrast>.nii.gz``).

    python -m scripts monailabel_studies --datalist sample_data/datalist.json --split test --out_dir studies \
        [--contrasts "t1,t2,flair"] [--copy true]

Each file is a symbolic link to the original (``--copy true``: a copy); inputs are never modified, and a name that
already exists for another file is refused. Then start the server on that folder (docs/monailabel.md).
"""

from __future__ import annotations

import os

from scripts.cli import run_fire
from scripts.cli_args import parse_bool
from scripts.data import DataError
from scripts.monailabel_task import SAMPLE_DATALIST, make_studies

__all__ = ["main", "monailabel_studies"]


def monailabel_studies(
    datalist: str = SAMPLE_DATALIST,
    out_dir: str = "studies",
    split: str = "test",
    contrasts: str | None = None,
    copy: bool = False,
) -> None:
    """Write the studies folder and list what it holds."""
    paths = make_studies(datalist, out_dir, split, contrasts, parse_bool(copy, "copy", DataError))
    print(f"{len(paths)} images in {out_dir}")
    for path in paths:
        print(f"  {os.path.basename(path)}")


def main(argv: list[str] | None = None) -> int:
    return run_fire(monailabel_studies, argv, serialize=lambda _: None)
