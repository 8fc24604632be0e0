"""The exception inference raises for unusable weights, settings or output folders.

Bad *input data* (missing contrast, other grid, unreadable file) raises ``scripts.data.DataError``; everything else a
user can fix without reading a stack trace (weights of another configuration or task, an output folder that cannot
be written, an output path that is an input file) raises ``InferenceError``. Both subclass ``ValueError``.
"""

from __future__ import annotations

from scripts.errors import UserError

__all__ = ["InferenceError"]


class InferenceError(UserError, ValueError):
    """Inference cannot run as configured; the message names the file or key and what to change."""
