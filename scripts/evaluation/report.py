"""Visual report: one PNG per subject with inputs, synthesis, ground truth, absolute error and uncertainty.

Volumes are (X, Y, Z) in RAS orientation (as :func:`scripts.evaluation.matching.load_volume` returns them) and in
[0, 1]. Axial slices are shown with x to the right and y (anterior) up, i.e. the patient's right on the right
(neurological convention). The lesion outline is drawn in red on every panel. Uses matplotlib's object API with the
Agg canvas (no pyplot state, works headless) and writes the PNG atomically.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scripts.evaluation.tables import atomic_write_many

__all__ = [
    "PANEL_HEIGHT_IN",
    "PANEL_WIDTH_IN",
    "figure_size_px",
    "pick_report_slices",
    "render_subject_figure",
    "render_subject_png",
]

PANEL_WIDTH_IN = 2.2
PANEL_HEIGHT_IN = 2.4
TITLE_HEIGHT_IN = 0.5


def figure_size_px(n_columns: int, n_rows: int, dpi: int = 100) -> tuple[int, int]:
    """(width, height) in pixels of a report with ``n_columns`` panels per row and ``n_rows`` slices."""
    width = n_columns * PANEL_WIDTH_IN
    height = n_rows * PANEL_HEIGHT_IN + TITLE_HEIGHT_IN
    return int(round(width * dpi)), int(round(height * dpi))


def pick_report_slices(
    lesion: np.ndarray | None, brain: np.ndarray | None, count: int = 1, axis: int = -1
) -> list[int]:
    """Slices to show: the ``count`` slices with the largest lesion area, else the middle of the brain's extent."""
    reference = lesion if lesion is not None and np.any(lesion) else brain
    if reference is None:
        raise ValueError("pick_report_slices needs a lesion or a brain mask")
    ax = axis % reference.ndim
    area = np.count_nonzero(np.asarray(reference) > 0, axis=tuple(a for a in range(reference.ndim) if a != ax))
    if reference is lesion:
        order = np.argsort(-area, kind="stable")[:count]
        return sorted(int(i) for i in order)
    present = np.flatnonzero(area)
    if present.size == 0:
        present = np.arange(area.size)
    centre = (present[0] + present[-1]) / 2
    offsets = (np.arange(count) - (count - 1) / 2) * max(1, (present[-1] - present[0]) // (count + 1))
    return sorted({int(np.clip(round(centre + o), 0, area.size - 1)) for o in offsets})


def _take(volume: np.ndarray, index: int, axis: int, box: tuple[slice, slice] | None = None) -> np.ndarray:
    image = np.take(volume, index, axis=axis) if volume.ndim == 3 else volume
    return image if box is None else image[box]


def _display_box(masks: list[np.ndarray], margin: int = 4) -> tuple[slice, slice] | None:
    """Bounding box (plus a margin) of the union of the shown slices' foreground, so the brain fills the panels."""
    union = np.any(np.stack(masks), axis=0)
    if not union.any():
        return None
    box = []
    for axis in range(2):
        hits = np.flatnonzero(union.any(axis=1 - axis))
        box.append(slice(max(int(hits[0]) - margin, 0), min(int(hits[-1]) + 1 + margin, union.shape[axis])))
    return box[0], box[1]


def _show(ax, image: np.ndarray, lesion: np.ndarray | None, title: str, **kwargs):
    handle = ax.imshow(image.T, origin="lower", interpolation="nearest", **kwargs)
    if lesion is not None and np.any(lesion):
        ax.contour(lesion.T.astype(float), levels=[0.5], colors="red", linewidths=0.8)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    return handle


def render_subject_png(
    inputs: Mapping[str, np.ndarray],
    synthesis: np.ndarray,
    ground_truth: np.ndarray,
    *,
    lesion: np.ndarray | None = None,
    uncertainty: np.ndarray | None = None,
    brain: np.ndarray | None = None,
    slices: Sequence[int] | None = None,
    axis: int = -1,
    title: str = "",
    target_name: str = "target",
    dpi: int = 100,
) -> bytes:
    """Render the report of one subject and return the PNG bytes (see :func:`render_subject_figure`).

    Args:
        inputs: contrast name -> volume (X, Y, Z) or slice (X, Y), in [0, 1], usually the three inputs.
        synthesis, ground_truth: same shape as the inputs, in [0, 1].
        lesion: optional lesion mask (outline drawn), same shape.
        uncertainty: optional uncertainty map, same shape; adds a panel with its own colorbar.
        brain: optional brain mask, used to pick slices when there is no lesion and to crop the panels to the
            brain (default: ground truth > 0).
        slices: slice indices along ``axis`` (3D input only); default :func:`pick_report_slices`.
        title: figure title (subject, method, metrics...).
        target_name: name of the synthesised contrast, used in the panel titles.
    """
    synthesis, ground_truth = np.asarray(synthesis, dtype=np.float32), np.asarray(ground_truth, dtype=np.float32)
    arrays = {"synthesis": synthesis, **{f"input {k}": np.asarray(v) for k, v in inputs.items()}}
    if lesion is not None:
        arrays["lesion"] = np.asarray(lesion)
    if uncertainty is not None:
        arrays["uncertainty"] = np.asarray(uncertainty)
    for name, array in arrays.items():
        if array.shape != ground_truth.shape:
            raise ValueError(f"report: {name} has shape {array.shape}, ground truth has {ground_truth.shape}")
    if ground_truth.ndim == 3:
        ax_index = axis % 3
        if slices is None:
            mask = brain if brain is not None else ground_truth > 0
            slices = pick_report_slices(lesion, mask, count=1, axis=ax_index)
    elif ground_truth.ndim == 2:
        ax_index, slices = 0, [0]
    else:
        raise ValueError(f"report: expected 2D or 3D arrays, got shape {ground_truth.shape}")

    foreground = np.asarray(brain) > 0 if brain is not None else ground_truth > 0
    box = _display_box([_take(foreground, i, ax_index) for i in slices])
    error = np.abs(synthesis - ground_truth)
    shown_error = np.stack([_take(error, i, ax_index, box) for i in slices])
    error_max = max(float(np.percentile(shown_error, 99.5)), 1e-3)
    n_columns = len(inputs) + 3 + (uncertainty is not None)
    width_px, height_px = figure_size_px(n_columns, len(slices), dpi)
    figure = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi, layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.subplots(len(slices), n_columns, squeeze=False)
    gray = {"cmap": "gray", "vmin": 0.0, "vmax": 1.0}
    for row, index in enumerate(slices):
        les = None if lesion is None else _take(np.asarray(lesion), index, ax_index, box) > 0
        suffix = f" (z={index})" if ground_truth.ndim == 3 else ""
        panels = [(f"{name}{suffix}", _take(np.asarray(v), index, ax_index, box)) for name, v in inputs.items()]
        panels += [(f"synthesis {target_name}", _take(synthesis, index, ax_index, box))]
        panels += [(f"ground truth {target_name}", _take(ground_truth, index, ax_index, box))]
        for col, (name, image) in enumerate(panels):
            _show(grid[row, col], image, les, name, **gray)
        col = len(panels)
        handle = _show(
            grid[row, col],
            _take(error, index, ax_index, box),
            les,
            "|synthesis - truth|",
            cmap="magma",
            vmin=0.0,
            vmax=error_max,
        )
        figure.colorbar(handle, ax=grid[row, col], fraction=0.046, pad=0.02).ax.tick_params(labelsize=7)
        if uncertainty is not None:
            unc = _take(np.asarray(uncertainty, dtype=np.float32), index, ax_index, box)
            handle = _show(grid[row, col + 1], unc, les, "uncertainty", cmap="viridis")
            figure.colorbar(handle, ax=grid[row, col + 1], fraction=0.046, pad=0.02).ax.tick_params(labelsize=7)
    if title:
        figure.suptitle(title, fontsize=10)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def render_subject_figure(out_path: str | Path, *args, dpi: int = 100, **kwargs) -> tuple[int, int]:
    """Render the report of one subject (arguments of :func:`render_subject_png`) and write it atomically.

    Returns the PNG's (width, height) in pixels, which :func:`figure_size_px` predicts.
    """
    png = render_subject_png(*args, dpi=dpi, **kwargs)
    atomic_write_many({Path(out_path): png})
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    return width, height
