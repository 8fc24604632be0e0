"""Infer tasks of the MU-Diff MONAI Label app."""

from .mudiff_synthesis import FindStudyd, MUDiffSynthesisTask

__all__ = ["FindStudyd", "MUDiffSynthesisTask"]
