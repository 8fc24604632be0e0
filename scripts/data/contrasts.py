"""The contrast vocabulary, in one place: canonical names, the spellings datasets use for them, and the BraTS set.

Datalist layouts (``datalist.py``) map their own file-name tokens to these names; the evaluation, MONAI Label and
the segmentation read names through ``canonical_contrast``.
"""

from __future__ import annotations

__all__ = ["BRATS_CONTRASTS", "CONTRAST_ALIASES", "canonical_contrast"]

#: The four structural contrasts of BraTS, in the order the segmentation network reads them
BRATS_CONTRASTS: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")

#: canonical name -> the spellings found in file names and requests (lower case)
CONTRAST_ALIASES: dict[str, tuple[str, ...]] = {
    "t1": ("t1", "t1n", "t1w"),
    "t1ce": ("t1ce", "t1c", "t1gd", "t1post"),
    "t2": ("t2", "t2w"),
    "flair": ("flair", "fla", "t2f"),
}
_ALIAS_TO_CANONICAL = {alias: name for name, aliases in CONTRAST_ALIASES.items() for alias in aliases}


def canonical_contrast(name: str) -> str:
    """Lower-case contrast name with aliases folded (``T1c`` -> ``t1ce``); unknown names are just lower-cased."""
    lowered = name.lower()
    return _ALIAS_TO_CANONICAL.get(lowered, lowered)
