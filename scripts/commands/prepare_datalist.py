r"""Turn a dataset folder into a datalist JSON with train/validation/test splits.

    python -m scripts prepare_datalist --data_dir /workspace/data/MICCAI_BraTS_2019_Data_Training --output datalist.json
    python -m scripts prepare_datalist --data_dir ../shared/data/brats18 --output brats18.json      # BraTS 2018
    python -m scripts prepare_datalist --data_dir /data/SISS2015_Training --output isles.json       # paper split
    python -m scripts prepare_datalist --data_dir /data/mine --layout generic --output mine.json \
        --patterns '{"t1": "*_T1w.nii.gz", "t2": "*_T2w.nii.gz", "flair": "*_FLAIR.nii.gz", "lesion": "*_seg.nii.gz"}'

Layouts: brats2019 (also BraTS 2018 naming), brats2023, isles2015 (auto-detected) and generic (patterns; a YAML/JSON
file path also works). BraTS2019 and ISLES2015 use the paper's split lists; other data get a seeded random split by
subject (``--val_fraction``, ``--test_fraction``, ``--seed``). Item paths are written relative to the JSON file.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from scripts.cli import run_fire
from scripts.data.datalist import prepare_datalist

__all__ = ["main", "prepare"]


def prepare(
    data_dir: str,
    output: str = "datalist.json",
    layout: str = "auto",
    patterns: Mapping[str, str] | str | None = None,
    split: str = "auto",
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    required: Sequence[str] | None = None,
    on_missing: str = "error",
    relative: bool = True,
) -> dict[str, Any]:
    """Write the datalist for ``data_dir`` to ``output`` and print a one-line summary."""
    datalist = prepare_datalist(
        data_dir,
        output=output,
        layout=layout,
        patterns=patterns,
        split=split,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        required=required,
        on_missing=on_missing,
        relative=relative,
    )
    counts = ", ".join(f"{k} {v}" for k, v in datalist["num_subjects"].items())
    print(f"{output}: layout {datalist['layout']}, {datalist['split_method']} split: {counts}")
    return datalist


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    return run_fire(prepare, argv, serialize=lambda _: None)
