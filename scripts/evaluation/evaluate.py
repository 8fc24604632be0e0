r"""Evaluate syntheses against references with three metric families, for any number of methods.

Families (exact definitions in docs/evaluation.md):
- ``paper_{brain,lesion}_{psnr,ssim,mae}``: the MU-Diff paper protocol (8-bit + JPEG, per-slice renormalisation,
  mean division, bounding-box crop), per slice; comparable with the paper's table only.
- ``float_{whole,brain,lesion}_{psnr,ssim,mae}``: float metrics on [0, 1], per slice and per subject (pooled).
- ``ssim3d_{brain,lesion,healthy}``: BraSyn-style 3D SSIM per subject, on the whole volume.

Importable: :func:`evaluate_arrays` (one subject, arrays), :func:`evaluate_methods` (dicts of arrays),
:func:`evaluate_folders` (NIfTI folders, writes CSV/JSON/PNG). Command line: ``python -m scripts evaluate``
(``scripts.commands.evaluate``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scripts.cli_args import parse_list
from scripts.data.errors import DataError
from scripts.data.io_utils import ensure_writable_dir
from scripts.evaluation.matching import (
    Prediction,
    ReferenceFiles,
    canonical_contrast,
    check_same_grid,
    list_predictions,
    load_volume,
)
from scripts.evaluation.metrics import (
    SSIM_WIN,
    middle_slices,
    percentile_normalize,
    ssim3d_regions,
    volume_float_metrics,
)
from scripts.evaluation.paper_protocol import PAPER_METRICS, aggregate_nan, paper_volume_metrics
from scripts.evaluation.report import render_subject_png
from scripts.evaluation.tables import format_table, summarize, write_results

__all__ = [
    "PAPER_COLUMNS",
    "EvaluationResult",
    "empty_brain_slices",
    "enhancing_region",
    "evaluate_arrays",
    "evaluate_folders",
    "evaluate_methods",
    "normalize_prediction",
]

logger = logging.getLogger(__name__)

PRED_NORMS = ("percentile", "minmax", "none")
#: BraTS label of the enhancing tumour: a lesion mask holding it (with other labels) is also scored inside it
ENHANCING_LABEL = 4
PAPER_COLUMNS = tuple(f"paper_{r}_{m}" for r in ("brain", "lesion", "enhancing") for m in PAPER_METRICS)
FLOAT_SLICE_COLUMNS = tuple(
    f"float_{r}_{m}" for r in ("whole", "brain", "lesion", "enhancing") for m in ("psnr", "ssim", "mae")
)
SUBJECT_TABLE_COLUMNS = (
    "float_brain_psnr",
    "float_brain_ssim",
    "float_brain_mae",
    "ssim3d_brain",
    "ssim3d_lesion",
    "ssim3d_healthy",
    "ssim3d_enhancing",
)
DEFINITIONS = {
    "paper_*": "MU-Diff paper protocol (spec section 6): 8-bit min-max per slice, JPEG round-trip of the synthesis "
    "(Pillow quality 75) when jpeg=true, 1-99 percentile + min-max per image, mean-divided copies, mask bounding box "
    "(>= 7x7) crop times mask, skimage SSIM/PSNR with data_range = joint max - joint min, MAE on the [0,1] crops; "
    "slice level = nanmean/nanstd over all slices (the paper's aggregation), subject level = nanmean over its slices",
    "slab": "every family is computed on the evaluated middle slices only (num_slices; the paper's 80), including the "
    "normalizations and the 3D SSIM, so a synthesis of that window and a full-volume baseline are treated alike",
    "float_*": "float metrics on [0,1] volumes (reference: per-slab 1-99 percentile of positive voxels + min-max; "
    "prediction: pred_norm); PSNR/MAE over region voxels (MONAI PSNRMetric/MAEMetric, data range 1); SSIM = MONAI "
    "Gaussian SSIM map (11, 1.5) averaged over window centres in the region; subject level pools the slices",
    "ssim3d_*": "BraSyn-style 3D SSIM on the evaluated slab (NaN when it is thinner than the 11-voxel window): each "
    "volume clipped to [max(0, p0.5), p99.5] and scaled to [0,1]; lesion: both times the lesion mask, 3D Gaussian "
    "SSIM map averaged over lesion voxels; healthy: both times the complement, averaged over brain voxels outside "
    "the lesion; brain: unmasked, averaged over the brain",
    "*_lesion_*": "inside the lesion mask (any non-zero label; BraTS: the whole tumour, labels 1, 2 and 4)",
    "*_enhancing_*": "inside the enhancing tumour (BraTS label 4), only when the lesion mask holds that label among "
    "others; the same definitions as the lesion region",
}


def normalize_prediction(volume: np.ndarray, mode: str = "percentile", name: str = "prediction") -> np.ndarray:
    """Bring a prediction to [0, 1]: ``percentile`` (the paper's data rule), ``minmax``, or ``none`` (checked)."""
    if mode == "percentile":
        return percentile_normalize(volume)
    if mode == "minmax":
        x = np.asarray(volume, dtype=np.float64)
        span = x.max() - x.min()
        return np.zeros(x.shape, np.float32) if span <= 0 else ((x - x.min()) / span).astype(np.float32)
    if mode == "none":
        x = np.asarray(volume, dtype=np.float32)
        if x.min() < -1e-3 or x.max() > 1 + 1e-3:
            raise DataError(f"{name}: pred_norm='none' needs values in [0, 1], got [{x.min():.4g}, {x.max():.4g}]")
        return np.clip(x, 0.0, 1.0)
    raise ValueError(f"pred_norm must be one of {PRED_NORMS}, got {mode!r}")


def evaluate_arrays(
    pred: np.ndarray,
    ref: np.ndarray,
    brain: np.ndarray | None = None,
    lesion: np.ndarray | None = None,
    *,
    num_slices: int | None = 80,
    axis: int = -1,
    pred_norm: str = "percentile",
    jpeg: bool = True,
    jpeg_real: bool = False,
    jpeg_quality: int | None = None,
    ssim3d: bool = True,
) -> tuple[list[dict[str, float]], dict[str, float]]:
    """All metric families for one subject.

    Args:
        pred: synthesis volume (X, Y, Z) on the reference's grid, any intensity scale (see ``pred_norm``).
        ref: reference volume (X, Y, Z), raw intensities (normalised here with the paper's per-volume rule).
        brain: brain mask; default = non-zero reference voxels.
        lesion: lesion mask or None (then no lesion columns); a BraTS label map (1, 2, 4) also gives the enhancing
            tumour (label 4) columns.
        num_slices: middle slices along ``axis`` evaluated (the paper uses 80); None = all slices. Every family is
            computed on that slab only (normalization and 3D SSIM included).
        axis: the axial axis.
        pred_norm: ``percentile`` (default; same rule as the reference), ``minmax`` or ``none``.
        jpeg, jpeg_real, jpeg_quality: paper-protocol JPEG options (see :mod:`paper_protocol`).
        ssim3d: also compute the BraSyn 3D SSIM (whole volume).

    Returns:
        (per-slice rows with a ``slice`` index, subject row with ``n_slices``).
    """
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape or ref.ndim != 3:
        raise ValueError(f"pred and ref must be 3D volumes of the same shape, got {pred.shape} and {ref.shape}")
    brain_mask = ref != 0 if brain is None else np.asarray(brain) > 0
    absolute = middle_slices(ref.shape[axis], num_slices)
    # Every family sees only the evaluated slab: a synthesis of the 80 middle slices is normalized, and its 3D SSIM
    # taken, over those slices, exactly as the reference and a baseline that covers the whole volume are.
    slab = (slice(None),) * (axis % 3) + (slice(absolute.start, absolute.stop),)
    pred, ref, brain_mask = pred[slab], ref[slab], brain_mask[slab]
    lesion = None if lesion is None else np.asarray(lesion)[slab]
    lesion_mask = None if lesion is None else lesion > 0
    enhancing = None if lesion is None else enhancing_region(lesion)
    ref01, pred01 = percentile_normalize(ref), normalize_prediction(pred, pred_norm)
    slices = range(len(absolute))
    paper_opts = {"jpeg": jpeg, "jpeg_real": jpeg_real, "jpeg_quality": jpeg_quality}
    paper = {"brain": paper_volume_metrics(ref01, pred01, brain_mask, slices, axis=axis, **paper_opts)}
    if lesion_mask is not None:
        paper["lesion"] = paper_volume_metrics(ref01, pred01, lesion_mask, slices, axis=axis, **paper_opts)
    if enhancing is not None:
        paper["enhancing"] = paper_volume_metrics(ref01, pred01, enhancing, slices, axis=axis, **paper_opts)
    float_rows, float_subject = volume_float_metrics(pred01, ref01, brain_mask, lesion_mask, slices, axis=axis)
    if enhancing is not None:  # the same metrics with the enhancing tumour as the region, renamed
        rows_e, subject_e = volume_float_metrics(pred01, ref01, brain_mask, enhancing, slices, axis=axis)
        for row, extra in zip(float_rows, rows_e, strict=True):
            row.update(_renamed(extra, "_lesion_", "_enhancing_"))
        float_subject.update(_renamed(subject_e, "_lesion_", "_enhancing_"))

    rows = []
    for position, index in enumerate(absolute):
        row: dict[str, float] = {"slice": int(index)}
        for region, values in paper.items():
            row.update({f"paper_{region}_{k}": v for k, v in values[position].items()})
        row.update(float_rows[position])
        rows.append(row)
    subject: dict[str, float] = {
        "n_slices": len(slices),
        "n_empty_slices": empty_brain_slices(pred, brain_mask, slices, axis),
    }
    for region, values in paper.items():
        for k in PAPER_METRICS:
            subject[f"paper_{region}_{k}"] = aggregate_nan([v[k] for v in values])["mean"]
    subject.update(float_subject)
    if ssim3d and min(ref.shape) < SSIM_WIN:  # a slab thinner than the 3D window: no 3D SSIM
        names = ["brain", *(["lesion", "healthy"] if lesion_mask is not None else [])]
        names += ["enhancing"] if enhancing is not None else []
        subject.update({f"ssim3d_{k}": float("nan") for k in names})
    elif ssim3d:
        subject.update(ssim3d_regions(pred, ref, lesion_mask, brain_mask, normalize=True))
        if enhancing is not None:
            inside = ssim3d_regions(pred, ref, enhancing, brain_mask, normalize=True)["ssim3d_lesion"]
            subject["ssim3d_enhancing"] = inside
    return rows, subject


def enhancing_region(lesion: np.ndarray) -> np.ndarray | None:
    """The enhancing tumour (``ENHANCING_LABEL``) of a multi-label lesion mask; None for a binary mask or one
    without that label (MS, stroke, BraTS subjects without enhancement)."""
    values = np.unique(np.rint(lesion[lesion != 0]))
    if ENHANCING_LABEL not in values or values.size < 2:
        return None
    return np.rint(lesion) == ENHANCING_LABEL


def _renamed(values: Mapping[str, float], old: str, new: str) -> dict[str, float]:
    return {k.replace(old, new): v for k, v in values.items() if old in k}


def empty_brain_slices(pred: np.ndarray, brain: np.ndarray, slices: Sequence[int], axis: int = -1) -> int:
    """Evaluated slices whose brain holds voxels but whose prediction is exactly zero there.

    They are scored (badly) like any other slice; counting them tells a weak method from one that was synthesized
    on fewer slices than are evaluated (e.g. a model run with a smaller ``num_slices`` window).
    """
    p, b = np.moveaxis(np.asarray(pred), axis, -1), np.moveaxis(np.asarray(brain) > 0, axis, -1)
    return int(sum(1 for z in slices if b[..., z].any() and not np.any(p[..., z][b[..., z]])))


@dataclass
class EvaluationResult:
    """Per-slice rows, per-subject rows and their summary (``{method: {contrast: {level: {metric: stats}}}}``)."""

    slice_rows: list[dict] = field(default_factory=list)
    subject_rows: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)

    def add(self, labels: Mapping[str, str], rows: Sequence[Mapping], subject_row: Mapping) -> None:
        """Record one method x subject x contrast (``labels``); warn when evaluated slices were left empty."""
        if subject_row.get("n_empty_slices"):
            logger.warning(
                "method %r, subject %r: %d of %d evaluated slices are empty inside the brain (synthesized on a "
                "smaller window than is evaluated?); they are scored as they are",
                labels.get("method"),
                labels.get("subject"),
                subject_row["n_empty_slices"],
                subject_row["n_slices"],
            )
        self.slice_rows.extend({**labels, **row} for row in rows)
        self.subject_rows.append({**labels, **subject_row})

    def tables(self) -> str:
        """The printed report: paper protocol and float metrics per slice, subject-level metrics."""
        paper_cols = [c for c in PAPER_COLUMNS if any(c in r for r in self.slice_rows)]
        float_cols = [c for c in FLOAT_SLICE_COLUMNS if any(c in r for r in self.slice_rows)]
        subject_cols = [c for c in SUBJECT_TABLE_COLUMNS if any(c in r for r in self.subject_rows)]
        return "\n\n".join(
            [
                "Paper protocol (8-bit/JPEG, comparable with the MU-Diff table), mean ± std over slices:\n"
                + format_table(self.summary, paper_cols, "slice_level"),
                "Float metrics on [0,1], mean ± std over slices:\n"
                + format_table(self.summary, float_cols, "slice_level"),
                "Per subject (pooled float metrics, BraSyn 3D SSIM), mean ± std over subjects:\n"
                + format_table(self.summary, subject_cols, "subject_level"),
            ]
        )


def evaluate_methods(
    predictions: Mapping[str, Mapping[str, np.ndarray]],
    references: Mapping[str, np.ndarray],
    brain_masks: Mapping[str, np.ndarray] | None = None,
    lesion_masks: Mapping[str, np.ndarray] | None = None,
    *,
    contrast: str = "target",
    pred_norms: Mapping[str, str] | None = None,
    **options,
) -> EvaluationResult:
    """Evaluate several methods on the same references (arrays in memory).

    Args:
        predictions: method -> subject -> synthesis volume.
        references: subject -> reference volume (raw).
        brain_masks, lesion_masks: optional subject -> mask.
        contrast: label written in the ``contrast`` column.
        pred_norms: optional method -> ``pred_norm`` (default ``options.get("pred_norm", "percentile")``).
        options: keyword options of :func:`evaluate_arrays`.
    """
    result = EvaluationResult()
    default_norm = options.pop("pred_norm", "percentile")
    for method, per_subject in predictions.items():
        for subject, pred in per_subject.items():
            if subject not in references:
                raise KeyError(f"method {method!r}: no reference for subject {subject!r}")
            rows, subject_row = evaluate_arrays(
                pred,
                references[subject],
                None if brain_masks is None else brain_masks.get(subject),
                None if lesion_masks is None else lesion_masks.get(subject),
                pred_norm=(pred_norms or {}).get(method, default_norm),
                **options,
            )
            result.add({"method": method, "subject": subject, "contrast": contrast}, rows, subject_row)
    result.summary = summarize(result.slice_rows, result.subject_rows)
    return result


def _load_on_grid(path: Path, ref_path: Path, ref_shape: tuple[int, ...], ref_affine: np.ndarray) -> np.ndarray:
    data, affine = load_volume(path)
    check_same_grid(path, data.shape, affine, ref_path, ref_shape, ref_affine)
    return data


def evaluate_folders(
    pred_dir: str | Mapping[str, str],
    ref_dir: str | None,
    out_dir: str,
    *,
    items: Sequence[Mapping[str, object]] | None = None,
    method: str | None = None,
    mask_dir: str | None = None,
    mask_pattern: str | None = None,
    lesion_dir: str | None = None,
    lesion_pattern: str | None = None,
    copy_from: str | None = None,
    inputs: str | Sequence[str] | None = None,
    figures: bool = False,
    num_slices: int | None = 80,
    pred_norm: str = "percentile",
    jpeg: bool = True,
    jpeg_real: bool = False,
    jpeg_quality: int | None = None,
    ssim3d: bool = True,
) -> EvaluationResult:
    """Evaluate NIfTI syntheses against references and write the CSV/JSON (and PNG) report to ``out_dir``.

    Args:
        pred_dir: folder of ``<subject>_syn_<contrast>.nii.gz`` files, or a mapping method -> folder.
        ref_dir: folder holding the reference contrasts (any depth; see :mod:`matching` for the rule); None with
            ``items``.
        out_dir: output folder (created; must be writable; files appear only when everything succeeded).
        items: datalist items instead of ``ref_dir``: each subject's references (and ``lesion`` / ``brain_mask``
            when every item has one) are the item's files, with no name matching; the mask options are unused.
        method: method name when ``pred_dir`` is one folder (default: the folder's name).
        mask_dir, mask_pattern: brain masks (one per subject, optional glob on the file name); default: the
            reference's non-zero voxels. ``mask_pattern`` alone searches ``ref_dir``.
        lesion_dir, lesion_pattern: lesion masks, same rule; without both, no lesion metrics.
        copy_from: add the copy baseline ``copy_<contrast>`` using this input contrast from ``ref_dir``.
        inputs: input contrasts shown in the figures (comma-separated), found in ``ref_dir``.
        figures: write ``figures/<method>/<subject>_<contrast>.png`` (needs ``inputs``).
        num_slices, pred_norm, jpeg, jpeg_real, jpeg_quality, ssim3d: see :func:`evaluate_arrays`.
    """
    out = ensure_writable_dir(out_dir)
    if pred_norm not in PRED_NORMS:
        raise ValueError(f"pred_norm must be one of {PRED_NORMS}, got {pred_norm!r}")
    input_names = parse_list(inputs, "inputs")
    if figures and len(input_names) == 0:
        raise ValueError("figures=True needs the input contrasts to show, e.g. --inputs t1ce,t2,flair")
    folders = dict(pred_dir) if isinstance(pred_dir, Mapping) else {method or Path(pred_dir).name: pred_dir}
    listed = {name: list_predictions(folder) for name, folder in folders.items()}
    if items is not None:
        refs = ReferenceFiles.from_items(items)
    elif ref_dir is not None:
        refs = ReferenceFiles.search(ref_dir, mask_dir, mask_pattern, lesion_dir, lesion_pattern)
    else:
        raise ValueError("evaluate_folders: give ref_dir (a folder of references) or items (datalist items)")
    if copy_from:
        copy_name = f"copy_{canonical_contrast(copy_from)}"
        if copy_name in listed:
            raise ValueError(f"method name {copy_name!r} is used twice")
        keys = sorted({(p.subject, p.contrast) for preds in listed.values() for p in preds})
        listed[copy_name] = [Prediction(refs.contrast(s, copy_from), s, c) for s, c in keys]

    options = {
        "num_slices": num_slices,
        "jpeg": jpeg,
        "jpeg_real": jpeg_real,
        "jpeg_quality": jpeg_quality,
        "ssim3d": ssim3d,
    }
    result = EvaluationResult()
    matched = []
    pngs: dict[Path, bytes] = {}
    for name, preds in listed.items():
        norm = "percentile" if copy_from and name == f"copy_{canonical_contrast(copy_from)}" else pred_norm
        for pred in preds:
            ref_path = refs.contrast(pred.subject, pred.contrast)
            ref, ref_affine = load_volume(ref_path)
            synthesis = _load_on_grid(pred.path, ref_path, ref.shape, ref_affine)
            brain_path, lesion_path = refs.mask(pred.subject, "brain_mask"), refs.mask(pred.subject, "lesion")
            brain = lesion = None
            if brain_path is not None:
                brain = _load_on_grid(brain_path, ref_path, ref.shape, ref_affine)
            if lesion_path is not None:
                lesion = _load_on_grid(lesion_path, ref_path, ref.shape, ref_affine)
            rows, subject_row = evaluate_arrays(synthesis, ref, brain, lesion, pred_norm=norm, **options)
            labels = {"method": name, "subject": pred.subject, "contrast": pred.contrast}
            result.add(labels, rows, subject_row)
            matched.append(
                {
                    **labels,
                    "prediction": str(pred.path),
                    "reference": str(ref_path),
                    "brain_mask": str(brain_path) if brain_path else "reference != 0",
                    "lesion_mask": str(lesion_path) if lesion_path else None,
                }
            )
            if figures:
                shown = {
                    c: percentile_normalize(
                        _load_on_grid(refs.contrast(pred.subject, c), ref_path, ref.shape, ref_affine)
                    )
                    for c in input_names
                }
                uncertainty = None
                if pred.uncertainty is not None:
                    uncertainty = _load_on_grid(pred.uncertainty, ref_path, ref.shape, ref_affine)
                title = (
                    f"{name} | {pred.subject} | {pred.contrast} | paper brain PSNR "
                    f"{subject_row['paper_brain_psnr']:.2f} dB, SSIM {subject_row['paper_brain_ssim']:.3f}"
                )
                png = render_subject_png(
                    shown,
                    normalize_prediction(synthesis, norm, str(pred.path)),
                    percentile_normalize(ref),
                    lesion=lesion,
                    uncertainty=uncertainty,
                    brain=brain if brain is not None else ref != 0,
                    title=title,
                    target_name=pred.contrast,
                )
                pngs[out / "figures" / name / f"{pred.subject}_{pred.contrast}.png"] = png
    result.summary = summarize(result.slice_rows, result.subject_rows)
    config = {
        "pred_dir": {k: str(v) for k, v in folders.items()},
        **refs.describe(),
        "copy_from": copy_from,
        "pred_norm": pred_norm,
        **options,
    }
    for path in pngs:
        path.parent.mkdir(parents=True, exist_ok=True)
    result.files = write_results(
        out,
        result.slice_rows,
        result.subject_rows,
        result.summary,
        extra={"config": config, "definitions": DEFINITIONS, "matched": matched},
        more_files=pngs.items(),
    )
    result.files.update({f"figure:{p.parent.name}/{p.name}": p for p in pngs})
    return result
