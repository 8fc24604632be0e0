"""Prepare subjects with the data pipeline and write a PNG grid of prepared slices (a visual check of the data).

    python -m scripts preview                                   # embedded sample, task brats_t1ce, reference mode
    python -m scripts preview --split isles22 --inputs "[dwi,adc]" --target flair --resample True
    python -m monai.bundle run --config_file configs/prepare.yaml   # the same, wired declaratively

Rows are slices (the middle slice of each subject, plus its largest-lesion slice when it has a lesion); columns
are the conditioning inputs in task order, the target, the brain mask and the lesion outline on the target.
Slices are shown as the networks see them: (H, W) = (posterior->, left->), i.e. anterior at the top and the
patient's right on the image's left (radiological view).
"""

from __future__ import annotations

from collections.abc import Sequence

from scripts.cli import run_fire
from scripts.data.pipeline import build_slice_dataset
from scripts.data.tasks import resolve_task
from scripts.preview import SAMPLE_DATALIST, PreviewWriter

__all__ = ["main", "preview"]


def preview(
    datalist: str = SAMPLE_DATALIST,
    split: str = "all",
    task: str = "brats_t1ce",
    inputs: Sequence[str] | None = None,
    target: str | None = None,
    mode: str = "reference",
    spatial_size: int | None = None,
    resample: bool = False,
    output_dir: str = "output/preview",
    filename: str = "preview.png",
    slices_per_subject: int = 2,
    reader: str = "nibabel",
) -> str:
    """Prepare the subjects of ``split`` in ``datalist`` and write the preview PNG; prints and returns its path."""
    t = resolve_task(task, inputs, target)
    dataset = build_slice_dataset(
        datalist, split=split, task=t, mode=mode, spatial_size=spatial_size, resample=resample, reader=reader
    )
    return PreviewWriter(dataset, t, output_dir, filename, slices_per_subject)()


def main(argv: list[str] | None = None) -> int:
    return run_fire(preview, argv, serialize=lambda _: None)  # the path is printed once by PreviewWriter
