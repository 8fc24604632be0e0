"""Write a ``VolumeSynthesis`` as NIfTI files named the way ``scripts.evaluation`` matches them, atomically.

Files (``<out>`` = the output folder):

- ``<out>/<subject>_syn_<contrast>.nii.gz``: the synthesis, float32 in [0, 1];
- ``<out>/<subject>_unc_<contrast>.nii.gz``: per-voxel standard deviation over the samples (only for N > 1);
- ``<out>/attention/<subject>_att_<contrast>.nii.gz``: critic attention map (only when requested; kept out of the
  prediction folder itself because the evaluation accepts only ``_syn_``/``_unc_`` files there).

Each file has the reference input's shape, affine and header codes (sform/qform codes, units), a ``descrip`` saying
which slices were synthesized, and a JSON header extension (code 6, "comment") with the full provenance.
All files of a subject are first written to temporary files in their destination folders and then moved into place,
so an error never leaves a partial file; an output path that is one of the subject's inputs is refused, and stale
``_unc_``/``_att_`` files from an earlier run with other settings are removed.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scripts.data.errors import DataError
from scripts.data.io_utils import ensure_writable_dir, staged_files
from scripts.data.naming import result_name

from .errors import InferenceError
from .volume import VolumeSynthesis

__all__ = [
    "ATTENTION_DIR",
    "check_outputs_are_not_inputs",
    "ensure_output_dir",
    "output_paths",
    "synthesis_image",
    "write_synthesis",
]

logger = logging.getLogger(__name__)

ATTENTION_DIR = "attention"


def output_paths(out_dir: str | os.PathLike, subject: str, contrast: str) -> dict[str, Path]:
    """``{"syn": ..., "unc": ..., "att": ...}`` paths of one subject's outputs."""
    try:
        names = {kind: result_name(subject, contrast, kind) for kind in ("syn", "unc", "att")}
    except DataError as exc:
        raise InferenceError(str(exc)) from None
    out = Path(out_dir)
    return {"syn": out / names["syn"], "unc": out / names["unc"], "att": out / ATTENTION_DIR / names["att"]}


def ensure_output_dir(out_dir: str | os.PathLike) -> Path:
    """Create ``out_dir`` if needed and prove it is writable (a probe file), before any expensive work."""
    try:
        return ensure_writable_dir(out_dir)
    except PermissionError as exc:
        raise InferenceError(f"{exc}; choose --out_dir") from None


def _same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def _refuse_inputs(paths: Mapping[str, Path], inputs: Mapping[str, Any]) -> None:
    for kind, path in paths.items():
        for key, src in inputs.items():
            if isinstance(src, (str, os.PathLike)) and os.path.exists(src) and _same_file(path, src):
                raise InferenceError(f"output {path} ({kind}) is the subject's input {key!r}; choose another out_dir")


def check_outputs_are_not_inputs(out_dir: str | os.PathLike, items: Sequence[Mapping[str, Any]], contrast: str) -> None:
    """Refuse, before any synthesis runs, an output file that would replace one of a subject's input files."""
    for item in items:
        inputs = {k: v for k, v in item.items() if k != "subject"}
        _refuse_inputs(output_paths(out_dir, str(item.get("subject")), contrast), inputs)


def reference_header(path: str | None, affine: np.ndarray) -> nib.Nifti1Header | None:
    """The grid file's header when it is a NIfTI on exactly this affine (codes and units are copied from it)."""
    if not path or not os.path.isfile(path):
        return None
    try:
        img = nib.load(path)
    except Exception:  # noqa: BLE001 - the pipeline already read it; without it we just write default codes
        return None
    if not isinstance(img, nib.Nifti1Image) or not np.allclose(img.affine, affine, atol=1e-4):
        return None
    return img.header


def synthesis_image(
    volume: np.ndarray,
    affine: np.ndarray,
    descrip: str,
    reference: nib.Nifti1Header | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> nib.Nifti1Image:
    """A float32 NIfTI on ``affine`` with the reference header's codes and units, no intensity scaling."""
    img = nib.Nifti1Image(np.asarray(volume, dtype=np.float32), np.asarray(affine, dtype=np.float64))
    hdr = img.header
    if reference is not None:  # same codes as the input, so every reader derives the same affine from both
        hdr.set_xyzt_units(*reference.get_xyzt_units())
        img.set_sform(affine, code=int(reference["sform_code"]))
        img.set_qform(affine, code=int(reference["qform_code"]))
    else:
        img.set_sform(affine, code=1)
        img.set_qform(affine, code=1)
    hdr.set_slope_inter(1.0, 0.0)
    hdr["descrip"] = descrip[:80].encode("ascii", "replace")
    if provenance:
        text = json.dumps(dict(provenance), sort_keys=True, default=str).encode("utf-8")
        hdr.extensions.append(nib.nifti1.Nifti1Extension("comment", text))
    return img


def write_synthesis(
    result: VolumeSynthesis,
    out_dir: str | os.PathLike,
    provenance: Mapping[str, Any] | None = None,
    input_files: Mapping[str, str] | None = None,
) -> dict[str, Path]:
    """Write the subject's files (see module docstring); returns ``{"syn"|"unc"|"att": path}`` of what was written.

    Args:
        result: the synthesis on the original grid.
        out_dir: output folder (created; must be writable).
        provenance: settings recorded in each file's JSON header extension (weights, seed, mode, ...).
        input_files: the subject's input paths (default ``result.input_files``); none may be overwritten.
    """
    paths = output_paths(out_dir, result.subject, result.contrast)
    _refuse_inputs(paths, dict(result.input_files if input_files is None else input_files))
    ensure_output_dir(out_dir)
    reference = reference_header(result.grid_file, result.affine)
    cov = result.coverage
    record = {
        "subject": result.subject,
        "contrast": result.contrast,
        "coverage": cov.to_dict(),
        "num_samples": result.num_samples,
        "grid_file": result.grid_file,
        **dict(provenance or {}),
    }
    images = {"syn": synthesis_image(result.synthesis, result.affine, cov.describe(result.contrast), reference, record)}
    if result.uncertainty is not None:
        text = cov.describe(result.contrast, "std ")
        images["unc"] = synthesis_image(
            result.uncertainty, result.affine, text, reference, {**record, "quantity": "std over samples, [0,1] units"}
        )
    if result.attention is not None:
        text = cov.describe(result.contrast, "att ")
        images["att"] = synthesis_image(
            result.attention, result.affine, text, reference, {**record, "quantity": "critic attention map"}
        )
    try:
        with staged_files({kind: paths[kind] for kind in images}) as temps:
            for kind, img in images.items():
                nib.save(img, temps[kind])
    except OSError as exc:
        raise InferenceError(f"writing {paths['syn']} failed: {exc}") from None
    for kind in ("unc", "att"):
        if kind not in images and paths[kind].exists():
            paths[kind].unlink()  # from an earlier run with other settings: it would not describe this synthesis
            logger.info("removed stale %s", paths[kind])
    written = {kind: paths[kind] for kind in images}
    logger.info("%s: wrote %s", result.subject, ", ".join(str(p) for p in written.values()))
    return written
