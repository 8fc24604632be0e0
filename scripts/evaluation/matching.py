"""Find and load the NIfTI files an evaluation compares, with errors that name the file.

Matching rule (documented in docs/evaluation.md):
- A prediction is a NIfTI file ``<subject>_syn_<contrast>.nii[.gz]`` in the prediction folder (the subject is
  everything before the last ``_syn_``). ``<subject>_unc_<contrast>.nii[.gz]`` is its optional uncertainty map.
  Any other NIfTI file in the prediction folder is an error.
- A file belongs to a subject when one of its parent folders (below the search root) is named exactly like the
  subject, or its file name starts with the subject followed by ``_``, ``-`` or ``.``.
- A file shows a contrast when one of the tokens of its name (the name without the subject prefix and the NIfTI
  extension, split on ``_``, ``-`` and ``.``) names the same contrast, case-insensitively, counting the usual
  aliases (t1/t1n/t1w, t1ce/t1c/t1gd/t1post, t2/t2w, flair/fla/t2f).
- Exactly one reference file must match; none or several is an error listing what was found.

A datalist needs no matching: ``ReferenceFiles.from_items`` takes each subject's files from its datalist item
(the bundle's evaluation), ``ReferenceFiles.search`` applies the rule above under folders (the command line).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scripts.data.contrasts import canonical_contrast
from scripts.data.errors import DataError
from scripts.data.naming import parse_result_name

__all__ = [
    "Prediction",
    "ReferenceFiles",
    "check_same_grid",
    "find_contrast_file",
    "find_subject_file",
    "list_predictions",
    "list_subject_folders",
    "load_volume",
]

_NIFTI = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)


def is_nifti(path: Path) -> bool:
    """A NIfTI file, not a hidden one (an interrupted writer's ``.tmp_*`` leftover is never a result)."""
    return path.is_file() and not path.name.startswith(".") and bool(_NIFTI.search(path.name))


@dataclass(frozen=True)
class Prediction:
    """One synthesis file: its subject, contrast (canonical) and optional uncertainty map."""

    path: Path
    subject: str
    contrast: str
    uncertainty: Path | None = None


def list_predictions(pred_dir: str | Path) -> list[Prediction]:
    """All ``<subject>_syn_<contrast>`` NIfTI files of a folder (not recursive), sorted by subject then contrast."""
    folder = Path(pred_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"prediction folder {folder} does not exist or is not a folder")
    syn: dict[tuple[str, str], Path] = {}
    unc: dict[tuple[str, str], Path] = {}
    bad = []
    for path in sorted(p for p in folder.iterdir() if is_nifti(p)):
        parsed = parse_result_name(path.name)
        if parsed is None or parsed[1] == "att":
            bad.append(path.name)
            continue
        subject, kind, contrast = parsed
        key = (subject, canonical_contrast(contrast))
        target = syn if kind == "syn" else unc
        if key in target:
            raise DataError(
                f"two files in {folder} for subject {key[0]!r}, contrast {key[1]!r}: {target[key].name}, {path.name}"
            )
        target[key] = path
    if bad:
        raise DataError(
            f"files in {folder} do not follow '<subject>_syn_<contrast>.nii.gz' (or '_unc_' for uncertainty): {bad}"
        )
    orphans = sorted(set(unc) - set(syn))
    if orphans:
        raise DataError(f"uncertainty maps without a synthesis in {folder}: {[unc[k].name for k in orphans]}")
    if not syn:
        raise FileNotFoundError(f"no '<subject>_syn_<contrast>.nii.gz' file in {folder}")
    return [Prediction(path, s, c, unc.get((s, c))) for (s, c), path in sorted(syn.items())]


def list_subject_folders(root: str | Path) -> list[Path]:
    """Immediate sub-folders of ``root`` that hold at least one NIfTI file (one folder per subject)."""
    folder = Path(root)
    if not folder.is_dir():
        raise FileNotFoundError(f"reference folder {folder} does not exist or is not a folder")
    subjects = [d for d in sorted(folder.iterdir()) if d.is_dir() and any(is_nifti(p) for p in d.iterdir())]
    if not subjects:
        raise FileNotFoundError(f"no subject folder with NIfTI files under {folder}")
    return subjects


def _subject_remainder(path: Path, root: Path, subject: str) -> str | None:
    """The part of the file name that describes the image, or None when the file is not the subject's."""
    stem = _NIFTI.sub("", path.name)
    if stem.startswith(subject) and (len(stem) == len(subject) or stem[len(subject)] in "_-."):
        return stem[len(subject) :]
    if root.name == subject or subject in path.relative_to(root).parts[:-1]:
        return stem
    return None


def _subject_files(root: Path, subject: str) -> list[tuple[Path, str]]:
    if not root.is_dir():
        raise FileNotFoundError(f"folder {root} does not exist or is not a folder")
    found = []
    for path in sorted(root.rglob("*")):
        if not is_nifti(path) or parse_result_name(path.name) is not None:
            continue
        remainder = _subject_remainder(path, root, subject)
        if remainder is not None:
            found.append((path, remainder))
    return found


def find_contrast_file(root: str | Path, subject: str, contrast: str) -> Path:
    """The single NIfTI file under ``root`` of ``subject`` showing ``contrast`` (see the module's matching rule)."""
    root = Path(root)
    wanted = canonical_contrast(contrast)
    files = _subject_files(root, subject)
    hits = [p for p, rest in files if any(canonical_contrast(t) == wanted for t in re.split(r"[_\-.]", rest) if t)]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        seen = [str(p.relative_to(root)) for p, _ in files]
        raise FileNotFoundError(
            f"no {contrast!r} reference for subject {subject!r} under {root}; subject files: {seen}"
        )
    raise DataError(f"several {contrast!r} references for subject {subject!r}: {[str(p) for p in hits]}")


def find_subject_file(root: str | Path, subject: str, pattern: str | None = None, what: str = "mask") -> Path:
    """The single NIfTI file under ``root`` of ``subject`` whose name matches the glob ``pattern`` (any if None)."""
    root = Path(root)
    files = [p for p, _ in _subject_files(root, subject)]
    hits = [p for p in files if pattern is None or fnmatch.fnmatch(p.name.lower(), pattern.lower())]
    if len(hits) == 1:
        return hits[0]
    detail = f" matching {pattern!r}" if pattern else ""
    if not hits:
        raise FileNotFoundError(f"no {what} file for subject {subject!r}{detail} under {root}")
    raise DataError(f"several {what} files for subject {subject!r}{detail}: {[str(p) for p in hits]}; give a pattern")


#: datalist keys of the masks (lesion: lesion metrics; brain_mask: the brain region, else the reference's non-zero)
MASK_KEYS: tuple[str, ...] = ("lesion", "brain_mask")


@dataclass(frozen=True)
class ReferenceFiles:
    """Where each subject's reference contrasts and masks are: searched by name under folders, or given by datalist
    items. Build with :meth:`search` or :meth:`from_items`."""

    root: Path | None = None
    masks: Mapping[str, tuple[str, str | None]] | None = None  # kind -> (folder, glob) when searching
    items: Mapping[str, Mapping[str, Any]] | None = None  # subject -> datalist item

    @classmethod
    def search(
        cls,
        ref_dir: str | Path,
        mask_dir: str | None = None,
        mask_pattern: str | None = None,
        lesion_dir: str | None = None,
        lesion_pattern: str | None = None,
    ) -> ReferenceFiles:
        """Files found under ``ref_dir`` by the module's rule; a mask pattern alone searches ``ref_dir``."""
        masks = {}
        if mask_dir or mask_pattern:
            masks["brain_mask"] = (str(mask_dir or ref_dir), mask_pattern)
        if lesion_dir or lesion_pattern:
            masks["lesion"] = (str(lesion_dir or ref_dir), lesion_pattern)
        return cls(root=Path(ref_dir), masks=masks)

    @classmethod
    def from_items(cls, items: Sequence[Mapping[str, Any]]) -> ReferenceFiles:
        """Each subject's files exactly as its datalist item lists them (``lesion`` and ``brain_mask`` are used
        when every item has one, so all subjects are scored on the same regions)."""
        by_subject = {str(item["subject"]): item for item in items}
        kinds = [k for k in MASK_KEYS if by_subject and all(item.get(k) for item in by_subject.values())]
        return cls(items=by_subject, masks=dict.fromkeys(kinds, ("", None)))

    def has(self, kind: str) -> bool:
        """Whether a ``lesion`` / ``brain_mask`` file is used for every subject."""
        return kind in (self.masks or {})

    def _item(self, subject: str) -> Mapping[str, Any]:
        item = (self.items or {}).get(subject)
        if item is None:
            raise DataError(f"subject {subject!r} is not in the evaluated datalist split")
        return item

    def contrast(self, subject: str, contrast: str) -> Path:
        """The reference image of ``subject`` showing ``contrast``."""
        if self.items is None:
            return find_contrast_file(self.root, subject, contrast)
        path = self._item(subject).get(canonical_contrast(contrast))
        if not path:
            raise DataError(f"subject {subject}: the datalist lists no {contrast!r} file")
        return Path(path)

    def mask(self, subject: str, kind: str) -> Path | None:
        """The ``kind`` mask of ``subject`` (None when masks of that kind are not used)."""
        if not self.has(kind):
            return None
        if self.items is None:
            folder, pattern = self.masks[kind]
            return find_subject_file(folder, subject, pattern, {"brain_mask": "brain mask"}.get(kind, f"{kind} mask"))
        return Path(self._item(subject)[kind])

    def describe(self) -> dict[str, Any]:
        """Where the references came from, for the report's configuration record."""
        if self.items is None:
            return {"ref_dir": str(self.root), "masks": {k: list(v) for k, v in (self.masks or {}).items()}}
        return {"ref_dir": None, "references": "datalist items", "masks": sorted(self.masks or {})}


def load_volume(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Load a 3D NIfTI as float32 in the closest canonical (RAS) orientation, so axis 2 is axial.

    Returns (array (X, Y, Z), 4x4 affine). Raises with the file name on unreadable files, non-3D images and
    NaN/infinite voxels.
    """
    path = Path(path)
    try:
        image = nib.as_closest_canonical(nib.load(str(path)))
        data = np.asarray(image.dataobj, dtype=np.float32)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except Exception as error:  # nibabel raises many types for corrupt files
        raise DataError(f"{path}: cannot read as NIfTI ({type(error).__name__}: {error})") from None
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(f"{path}: expected a 3D volume, got shape {data.shape}")
    if not np.all(np.isfinite(data)):
        bad = int(np.count_nonzero(~np.isfinite(data)))
        raise DataError(f"{path}: contains {bad} NaN or infinite voxels")
    return data, image.affine


def check_same_grid(
    path_a: Path,
    shape_a: tuple[int, ...],
    affine_a: np.ndarray,
    path_b: Path,
    shape_b: tuple[int, ...],
    affine_b: np.ndarray,
    atol: float = 1e-3,
) -> None:
    """Raise when two volumes are not on the same voxel grid (shape and affine, after canonical reorientation)."""
    if tuple(shape_a) != tuple(shape_b):
        raise DataError(f"grid mismatch: {path_a} has shape {tuple(shape_a)} but {path_b} has {tuple(shape_b)}")
    if not np.allclose(affine_a, affine_b, atol=atol):
        raise DataError(
            f"grid mismatch: {path_a} and {path_b} have different affines (voxel-to-world):\n"
            f"{np.round(affine_a, 4)}\nvs\n{np.round(affine_b, 4)}"
        )
