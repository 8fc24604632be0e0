"""Choose the copy baseline's contrast: the input most similar to the target on reference (never test) subjects.

    python -m scripts choose_copy --ref_dir DIR --target t1 --inputs t1ce,t2,flair [--num_slices 80]

Every subject folder under ``DIR`` is a reference subject (files matched by contrast name); the rule is
:func:`scripts.evaluation.copy_baseline.select_copy_contrast` (docs/evaluation.md). Prints the chosen contrast and
every candidate's score.
"""

from __future__ import annotations

from collections.abc import Sequence

from scripts.cli import run_fire
from scripts.cli_args import parse_list
from scripts.evaluation.copy_baseline import select_copy_contrast
from scripts.evaluation.matching import find_contrast_file, list_subject_folders, load_volume

__all__ = ["choose_copy", "main"]


def choose_copy(
    ref_dir: str, target: str, inputs: str | Sequence[str], num_slices: int | None = 80
) -> dict[str, object]:
    """Select the copy contrast on every subject folder under ``ref_dir``; returns the choice and the scores."""
    candidates = parse_list(inputs, "inputs")
    subjects = []
    for subject_dir in list_subject_folders(ref_dir):
        names = (target, *candidates)
        subjects.append({c: load_volume(find_contrast_file(subject_dir, subject_dir.name, c))[0] for c in names})
    selection = select_copy_contrast(subjects, target, candidates, num_slices=num_slices)
    return {"target": selection.target, "contrast": selection.contrast, "scores": selection.scores}


def main(argv: list[str] | None = None) -> int:
    return run_fire(choose_copy, argv)
