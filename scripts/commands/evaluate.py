r"""Score syntheses against references: paper protocol, float metrics and BraSyn 3D SSIM, for any number of methods.

    python -m scripts evaluate --pred_dir PRED --ref_dir REF --out_dir OUT \
        [--lesion_pattern 'simple*'] [--mask_dir M] [--copy_from t1ce] [--inputs t1ce,t2,flair --figures]

Writes ``OUT/{metrics_per_slice.csv, metrics_per_subject.csv, summary.json}`` (and a PNG per subject with
``--figures``) and prints the method x metric tables. Metric definitions: docs/evaluation.md.
"""

from __future__ import annotations

from scripts.cli import run_fire
from scripts.cli_args import parse_bool
from scripts.data.errors import DataError
from scripts.evaluation.evaluate import evaluate_folders

__all__ = ["evaluate", "main"]


def evaluate(
    pred_dir: str | dict,
    ref_dir: str,
    out_dir: str,
    method: str | None = None,
    mask_dir: str | None = None,
    mask_pattern: str | None = None,
    lesion_dir: str | None = None,
    lesion_pattern: str | None = None,
    copy_from: str | None = None,
    inputs: str | None = None,
    figures: bool = False,
    num_slices: int | None = 80,
    pred_norm: str = "percentile",
    jpeg: bool = True,
    jpeg_real: bool = False,
    jpeg_quality: int | None = None,
    ssim3d: bool = True,
) -> None:
    """Evaluate and write the tables (arguments as :func:`scripts.evaluation.evaluate.evaluate_folders`)."""
    figures, jpeg, jpeg_real, ssim3d = (
        parse_bool(v, n, DataError)
        for v, n in ((figures, "figures"), (jpeg, "jpeg"), (jpeg_real, "jpeg_real"), (ssim3d, "ssim3d"))
    )
    result = evaluate_folders(
        pred_dir,
        ref_dir,
        out_dir,
        method=method,
        mask_dir=mask_dir,
        mask_pattern=mask_pattern,
        lesion_dir=lesion_dir,
        lesion_pattern=lesion_pattern,
        copy_from=copy_from,
        inputs=inputs,
        figures=figures,
        num_slices=num_slices,
        pred_norm=pred_norm,
        jpeg=jpeg,
        jpeg_real=jpeg_real,
        jpeg_quality=jpeg_quality,
        ssim3d=ssim3d,
    )
    print(result.tables())
    print("\nwritten: " + ", ".join(str(p) for p in result.files.values()))


def main(argv: list[str] | None = None) -> int:
    return run_fire(evaluate, argv, serialize=lambda _: None)
