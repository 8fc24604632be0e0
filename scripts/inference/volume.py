"""Whole-subject synthesis: input contrasts -> slice stack -> ``VolumeInferer`` -> volume on the input's own grid.

Two entry points share one path:

- ``synthesize_subject(item, transform, network, inferer, contrast)``: a datalist item of NIfTI paths;
- ``synthesize_arrays(volumes, affine, network, inferer, transform, contrast)``: in-memory ``(X, Y, Z)`` arrays that
  share one affine (what MONAI Label or a notebook holds); the pipeline runs without its loading step.

Both return a ``VolumeSynthesis``: arrays with the reference input's shape and voxel order, its affine, and a
``Coverage`` that says which slices were synthesized. ``reference`` mode covers the ``num_slices`` middle axial
slices (the published model's window); the others stay background (0). ``volume`` mode covers every slice.
Intensities are on the model's normalized scale, [0, 1] (0 = background); they are not scanner units.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from scripts.data import DataError, prepare_subject, restore_volume
from scripts.data.loading import LoadSubjectd
from scripts.data.pipeline import VolumePipeline
from scripts.data.slicing import SliceGeometry
from scripts.data.stacking import TaskStackd

from .stack import StackSynthesis, VolumeInferer

__all__ = [
    "Coverage",
    "VolumeSynthesis",
    "coverage_of",
    "input_brain_mask",
    "pipeline_inputs",
    "restore_synthesis",
    "synthesize_arrays",
    "synthesize_stacks",
    "synthesize_subject",
]

logger = logging.getLogger(__name__)

_DESCRIP_LEN = 80  # NIfTI-1 header field size


@dataclass(frozen=True)
class Coverage:
    """Which slices of the output volume hold a synthesis, in the output file's own voxel indices."""

    mode: str
    axis: int  # voxel axis of the output array that is the axial (slice) axis
    indices: tuple[int, ...]  # synthesized slice indices along ``axis``, ascending
    depth: int  # number of slices along ``axis``
    plane_size: tuple[int, int]  # (H, W) the network saw

    @property
    def complete(self) -> bool:
        return len(self.indices) == self.depth

    def describe(self, contrast: str, what: str = "") -> str:
        """A short description for the NIfTI ``descrip`` field (at most 80 characters); ``what`` prefixes the
        contrast (e.g. ``"std "``)."""
        head = f"MU-Diff {what}{contrast} {self.mode}"
        if self.complete:
            size = "x".join(str(s) for s in self.plane_size)
            text = f"{head}: all {self.depth} slices synthesized at {size}"
        else:
            lo, hi = min(self.indices), max(self.indices)
            text = f"{head}: slices {lo}-{hi} of {self.depth} synthesized, rest empty"
        return text[:_DESCRIP_LEN]

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "axis": self.axis,
            "first": min(self.indices) if self.indices else None,
            "last": max(self.indices) if self.indices else None,
            "count": len(self.indices),
            "depth": self.depth,
            "complete": self.complete,
            "plane_size": list(self.plane_size),
        }


def coverage_of(geometry: Mapping[str, Any] | SliceGeometry) -> Coverage:
    """Map the pipeline's canonical axial indices to indices of the original file's voxel grid."""
    geo = SliceGeometry.from_dict(geometry)
    src = nib.orientations.io_orientation(np.asarray(geo.canonical_affine))
    dst = nib.orientations.io_orientation(np.asarray(geo.original_affine))
    transform = nib.orientations.ornt_transform(src, dst)
    axis, flip = int(transform[2, 0]), int(transform[2, 1])
    depth = int(geo.canonical_shape[2])
    indices = sorted(z if flip == 1 else depth - 1 - z for z in geo.slice_indices)
    return Coverage(geo.mode, axis, tuple(indices), depth, (int(geo.plane_size[0]), int(geo.plane_size[1])))


@dataclass
class VolumeSynthesis:
    """One subject's synthesis on the original grid (float32 arrays of the reference input's shape).

    ``synthesis`` in [0, 1]; ``uncertainty`` = per-voxel standard deviation over the samples in the same units
    (None for one sample); ``attention`` = critic map in [0, 1] (None unless requested); ``brain_mask`` = voxels
    inside the inputs' brain (non-zero in any input).
    """

    subject: str
    contrast: str
    synthesis: np.ndarray
    affine: np.ndarray
    coverage: Coverage
    num_samples: int = 1
    uncertainty: np.ndarray | None = None
    attention: np.ndarray | None = None
    brain_mask: np.ndarray | None = None
    grid_file: str | None = None
    input_files: dict[str, str] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.synthesis.shape)


def _restore(stack: torch.Tensor | np.ndarray, geometry: Mapping[str, Any], symmetric: bool) -> np.ndarray:
    volume, _ = restore_volume(stack, geometry, from_symmetric=symmetric, fill=0.0)
    return volume


def restore_synthesis(
    result: StackSynthesis,
    geometry: Mapping[str, Any],
    subject: str,
    contrast: str,
    brain_mask: torch.Tensor | np.ndarray | None = None,
    mask_background: bool = True,
    volume_mask: np.ndarray | None = None,
) -> VolumeSynthesis:
    """Put a ``StackSynthesis`` back on the subject's original grid (see ``scripts.data.restore_volume``).

    Args:
        result: the inferer's output for the subject's stack.
        geometry: the pipeline's ``geometry`` entry.
        subject, contrast: labels carried to the output.
        brain_mask: the pipeline's ``brain_mask`` stack (N, 1, H, W), or None.
        mask_background: zero every output outside the inputs' brain mask (the reference model leaves faint noise
            there); needs ``volume_mask`` or ``brain_mask``.
        volume_mask: the brain mask on the original grid (``input_brain_mask``); exact, so preferred to restoring
            the resized ``brain_mask`` stack.
    """
    uncertainty = attention = mask = None
    if volume_mask is not None:
        mask = np.asarray(volume_mask, dtype=bool)
        if list(mask.shape) != list(SliceGeometry.from_dict(geometry).original_shape):
            raise DataError(f"subject {subject}: brain mask shape {mask.shape} != output grid")
    # the exact brain mask restores brain edges without the background's dark rim (scripts.data.restore_volume)
    brain = mask if mask_background else None
    synthesis, affine = restore_volume(result.mean, geometry, from_symmetric=True, fill=0.0, brain=brain)
    synthesis = np.clip(synthesis, 0.0, 1.0)
    if result.std is not None:
        uncertainty = np.clip(_restore(result.std, geometry, False) / 2.0, 0.0, None)  # [-1, 1] units -> [0, 1]
    if result.attention is not None:
        attention = np.clip(_restore(result.attention, geometry, False), 0.0, 1.0)
    if mask is None and brain_mask is not None:
        mask = _restore(torch.as_tensor(np.asarray(brain_mask, dtype=np.float32)), geometry, False) >= 0.5
    if mask_background:
        if mask is None:
            raise DataError(f"subject {subject}: mask_background needs the pipeline's brain_mask stack")
        for arr in (synthesis, uncertainty, attention):
            if arr is not None:
                arr[~mask] = 0.0
    return VolumeSynthesis(
        subject=subject,
        contrast=contrast,
        synthesis=synthesis.astype(np.float32),
        affine=affine,
        coverage=coverage_of(geometry),
        num_samples=result.num_samples,
        uncertainty=None if uncertainty is None else uncertainty.astype(np.float32),
        attention=None if attention is None else attention.astype(np.float32),
        brain_mask=mask,
    )


def _subject_of(item: Mapping[str, Any]) -> str:
    sid = item.get("subject")
    if not sid:
        raise DataError(f"datalist item without a 'subject' id: {dict(item)}")
    return str(sid)


def pipeline_inputs(transform: Any) -> tuple[str, ...]:
    """The input contrasts of a ``build_volume_transforms`` pipeline (its ``TaskStackd`` step)."""
    for step in getattr(transform, "transforms", ()):
        if isinstance(step, TaskStackd):
            return tuple(step.task.inputs)
    raise DataError("not a build_volume_transforms pipeline: no TaskStackd step")


def input_brain_mask(item: Mapping[str, Any], inputs: Sequence[str], grid: Mapping[str, Any]) -> np.ndarray | None:
    """Brain mask on the original grid: non-zero in any input file that lies on ``grid`` (the pipeline's ``grid``
    entry: shape + affine). Only inputs count, never a target listed in the item. None when no file qualifies."""
    shape = tuple(int(s) for s in grid["shape"])
    affine = np.asarray(grid["affine"], dtype=np.float64)
    mask = None
    for key in inputs:
        path = item.get(key)
        if not isinstance(path, str) or not os.path.isfile(path):
            continue
        img = nib.load(path)
        if tuple(img.shape[:3]) != shape or not np.allclose(img.affine, affine, atol=1e-3):
            continue  # resampled input: its own grid says nothing voxel-wise here
        data = np.asarray(img.dataobj).reshape(shape) != 0
        mask = data if mask is None else mask | data
    return mask


def synthesize_stacks(
    stacks: Mapping[str, Any],
    network: Any,
    inferer: VolumeInferer,
    subject: str,
    contrast: str,
    mask_background: bool = True,
    volume_mask: np.ndarray | None = None,
) -> VolumeSynthesis:
    """Synthesize prepared stacks (the pipeline's output: ``image``, ``geometry``, ``brain_mask``)."""
    if "image" not in stacks or "geometry" not in stacks:
        raise DataError(f"subject {subject}: the pipeline gave no 'image'/'geometry'; use build_volume_transforms")
    geometry = stacks["geometry"]
    result = inferer(stacks["image"], network, slice_ids=SliceGeometry.from_dict(geometry).slice_indices)
    return restore_synthesis(
        result, geometry, subject, contrast, stacks.get("brain_mask"), mask_background, volume_mask
    )


def synthesize_subject(
    item: Mapping[str, Any],
    transform: Callable[[dict], dict],
    network: Any,
    inferer: VolumeInferer,
    contrast: str,
    mask_background: bool = True,
) -> VolumeSynthesis:
    """Synthesize ``contrast`` for one datalist item (input contrast paths + ``subject``).

    ``transform`` is ``build_volume_transforms(task, mode, ..., with_target=False)``; bad input raises ``DataError``
    naming the file (missing contrast, other grid, unreadable file).
    """
    subject = _subject_of(item)
    stacks = prepare_subject(item, transform)
    mask = input_brain_mask(item, pipeline_inputs(transform), stacks["grid"]) if "grid" in stacks else None
    out = synthesize_stacks(stacks, network, inferer, subject, contrast, mask_background, mask)
    out.grid_file = (stacks.get("grid") or {}).get("file")
    out.input_files = {str(k): str(v) for k, v in item.items() if k != "subject" and isinstance(v, str)}
    return out


def _without_loading(transform: Any) -> VolumePipeline:
    steps = list(getattr(transform, "transforms", ()))
    if not steps or not isinstance(steps[0], LoadSubjectd):
        raise DataError("synthesize_arrays needs the pipeline of build_volume_transforms (first step LoadSubjectd)")
    return VolumePipeline(steps[1:])


def synthesize_arrays(
    volumes: Mapping[str, np.ndarray | torch.Tensor],
    affine: np.ndarray | torch.Tensor,
    network: Any,
    inferer: VolumeInferer,
    transform: Any,
    contrast: str,
    subject: str = "subject",
    mask_background: bool = True,
    input_keys: Sequence[str] | None = None,
) -> VolumeSynthesis:
    """Synthesize from in-memory volumes: ``{contrast: (X, Y, Z) array}`` on one grid with the 4x4 ``affine``
    (RAS, as nibabel/MONAI give it). ``transform`` is the same ``build_volume_transforms(...)`` pipeline as for
    files; its loading step is skipped. The result is on the arrays' grid."""
    keys = list(input_keys) if input_keys is not None else list(volumes)
    aff = torch.as_tensor(np.asarray(affine, dtype=np.float64))
    if tuple(aff.shape) != (4, 4):
        raise DataError(f"affine must be 4x4, got shape {tuple(aff.shape)}")
    item: dict[str, Any] = {"subject": subject}
    for key in keys:
        if key not in volumes:
            raise DataError(f"subject {subject}: no {key!r} volume among the arrays given {sorted(volumes)}")
        arr = np.asarray(volumes[key], dtype=np.float64)
        if arr.ndim != 3:
            raise DataError(f"subject {subject}: {key!r} must be a 3D (X, Y, Z) array, got shape {arr.shape}")
        item[key] = MetaTensor(torch.from_numpy(arr.copy())[None], affine=aff.clone())
    stacks = prepare_subject(item, _without_loading(transform))
    mask = np.zeros(np.asarray(volumes[keys[0]]).shape, dtype=bool)
    for key in pipeline_inputs(transform):
        if key in volumes:
            mask |= np.asarray(volumes[key]) != 0
    return synthesize_stacks(stacks, network, inferer, subject, contrast, mask_background, mask)
