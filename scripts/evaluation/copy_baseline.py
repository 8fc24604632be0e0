"""Baseline (i): copy the most similar input contrast, chosen without looking at the test subject's target.

Rule (documented in docs/evaluation.md): on a list of *reference* subjects (training or validation subjects, never
the test subject), normalise every contrast with the paper's per-volume rule (:func:`percentile_normalize`), and
score each candidate input contrast by the subject-level brain-masked float SSIM (``float_brain_ssim``: MONAI SSIM
maps pooled over the brain pixels of the middle ``num_slices`` axial slices) against the target contrast. The
candidate with the highest mean score over the reference subjects is the copy contrast (ties: the earlier candidate).
The baseline prediction for any subject is then that input contrast, normalised the same way.

Run ``python -m scripts choose_copy --ref_dir DIR --target t1 --inputs t1ce,t2,flair`` to select on a folder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scripts.evaluation.metrics import middle_slices, percentile_normalize, volume_float_metrics

__all__ = ["CopySelection", "copy_prediction", "select_copy_contrast"]


@dataclass(frozen=True)
class CopySelection:
    """Outcome of :func:`select_copy_contrast`: the chosen contrast and every candidate's score."""

    target: str
    contrast: str
    scores: dict[str, float] = field(default_factory=dict)
    per_subject: dict[str, list[float]] = field(default_factory=dict)
    criterion: str = "mean subject-level float_brain_ssim over the reference subjects"


def select_copy_contrast(
    subjects: Sequence[Mapping[str, np.ndarray]],
    target: str,
    candidates: Sequence[str],
    *,
    brain_masks: Sequence[np.ndarray | None] | None = None,
    num_slices: int | None = 80,
    axis: int = -1,
) -> CopySelection:
    """Choose the input contrast most similar to ``target`` over reference subjects.

    Args:
        subjects: one mapping per reference subject, contrast name -> raw volume (X, Y, Z), co-registered.
        target: the contrast to be synthesised (a key of every mapping).
        candidates: the input contrasts (keys of every mapping).
        brain_masks: optional brain mask per subject; default = non-zero voxels of the target volume.
        num_slices: middle axial slices scored per subject (None = all).
        axis: the axial axis.

    Returns:
        :class:`CopySelection` with the winner and the mean score of every candidate.
    """
    if not subjects:
        raise ValueError("select_copy_contrast needs at least one reference subject")
    if not candidates:
        raise ValueError("select_copy_contrast needs at least one candidate contrast")
    if brain_masks is not None and len(brain_masks) != len(subjects):
        raise ValueError(f"got {len(brain_masks)} brain masks for {len(subjects)} subjects")
    per_subject: dict[str, list[float]] = {c: [] for c in candidates}
    for index, volumes in enumerate(subjects):
        missing = [c for c in (target, *candidates) if c not in volumes]
        if missing:
            raise KeyError(f"reference subject #{index} has no volume for {missing}; it has {sorted(volumes)}")
        ref_raw = np.asarray(volumes[target])
        brain = ref_raw != 0 if brain_masks is None or brain_masks[index] is None else np.asarray(brain_masks[index])
        ref = percentile_normalize(ref_raw)
        slices = middle_slices(ref.shape[axis], num_slices)
        for contrast in candidates:
            pred = percentile_normalize(volumes[contrast])
            _, subject = volume_float_metrics(pred, ref, brain, None, slices, axis=axis)
            per_subject[contrast].append(subject["float_brain_ssim"])
    scores = {c: float(np.nanmean(v)) if not np.all(np.isnan(v)) else float("nan") for c, v in per_subject.items()}
    finite = [c for c in candidates if np.isfinite(scores[c])]
    if not finite:
        raise ValueError("no candidate contrast could be scored (empty brain masks?)")
    best = max(finite, key=lambda c: (scores[c], -list(candidates).index(c)))
    return CopySelection(target=target, contrast=best, scores=scores, per_subject=per_subject)


def copy_prediction(inputs: Mapping[str, np.ndarray], contrast: str | CopySelection) -> np.ndarray:
    """Baseline prediction: the chosen input contrast, normalised to [0, 1] with the paper's per-volume rule."""
    name = contrast.contrast if isinstance(contrast, CopySelection) else contrast
    if name not in inputs:
        raise KeyError(f"copy baseline needs the input contrast {name!r}; inputs are {sorted(inputs)}")
    return percentile_normalize(inputs[name])
