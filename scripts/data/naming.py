"""The one owner of result file names: ``<subject>_syn_<contrast>.nii.gz`` (a synthesis), ``_unc_`` (its per-voxel
standard deviation over samples) and ``_att_`` (a critic attention map).

Every writer formats names here and the evaluation parses them here, so a change of naming is one edit.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import DataError

__all__ = ["RESULT_KINDS", "result_name", "parse_result_name"]

#: kind -> what the file holds
RESULT_KINDS = {"syn": "synthesis", "unc": "std over samples", "att": "critic attention map"}
_RESULT = re.compile(r"^(?P<subject>.+)_(?P<kind>syn|unc|att)_(?P<contrast>[A-Za-z0-9]+)\.nii(\.gz)?$")


def result_name(subject: str, contrast: str, kind: str = "syn") -> str:
    """``<subject>_<kind>_<contrast>.nii.gz``; a subject id that cannot be a file name is a ``DataError``."""
    if kind not in RESULT_KINDS:
        raise ValueError(f"result kind must be one of {sorted(RESULT_KINDS)}, got {kind!r}")
    if not subject or os.sep in subject or "/" in subject or (os.altsep and os.altsep in subject):
        raise DataError(f"subject id {subject!r} cannot be used in a file name")
    if subject in (".", ".."):
        raise DataError(f"subject id {subject!r} cannot be used in a file name")
    return f"{subject}_{kind}_{contrast}.nii.gz"


def parse_result_name(name: str | Path) -> tuple[str, str, str] | None:
    """``(subject, kind, contrast)`` of a result file name (the subject is everything before the last marker), or
    None for any other file."""
    match = _RESULT.match(Path(name).name)
    return None if match is None else (match["subject"], match["kind"], match["contrast"])
