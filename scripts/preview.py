"""A PNG grid of prepared slices, a visual check of the data (command line: ``python -m scripts preview``; bundle:
``configs/prepare.yaml``).

Rows are slices (the middle slice of each subject, plus its largest-lesion slice when it has a lesion); columns
are the conditioning inputs in task order, the target, the brain mask and the lesion outline on the target.
Slices are shown as the networks see them: (H, W) = (posterior->, left->), i.e. anterior at the top and the
patient's right on the image's left (radiological view).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from scripts.data.errors import DataError  # noqa: E402
from scripts.data.io_utils import atomic_write  # noqa: E402
from scripts.data.pipeline import SliceDataset  # noqa: E402
from scripts.data.tasks import Task, resolve_task  # noqa: E402

__all__ = ["pick_slices", "render_preview", "PreviewWriter", "SAMPLE_DATALIST"]

BUNDLE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_DATALIST = os.path.join(BUNDLE_ROOT, "sample_data", "datalist.json")


def pick_slices(dataset: SliceDataset, per_subject: int = 2) -> list[int]:
    """Global slice indices to show: each subject's middle slice, then its largest-lesion slice, then others."""
    chosen: list[int] = []
    for s, count in enumerate(dataset.counts):
        if count == 0:
            continue
        start = int(dataset.offsets[s])
        stacks = dataset.subject_stacks(s)
        picks = [count // 2]
        if "lesion" in stacks:
            area = np.asarray(stacks["lesion"]).reshape(count, -1).sum(1)
            if area.max() > 0:
                picks.append(int(area.argmax()))
        picks += [count // 4, (3 * count) // 4]
        unique = list(dict.fromkeys(picks))[: max(1, per_subject)]
        chosen += [start + p for p in unique]
    return chosen


def render_preview(items: Sequence[dict[str, Any]], task: Task, path: str, dpi: int = 80) -> str:
    """Draw one row per slice item (inputs, target, brain mask, lesion outline) and save it atomically."""
    if not items:
        raise DataError("nothing to preview: no slices")
    has_label = "label" in items[0]
    cols = [*task.inputs, *([f"{task.target} (target)"] if has_label else []), "brain mask", "lesion"]
    fig, axes = plt.subplots(len(items), len(cols), figsize=(2.2 * len(cols), 2.3 * len(items)), squeeze=False)
    for r, item in enumerate(items):
        image = np.asarray(item["image"])
        panels = [image[c] for c in range(image.shape[0])]
        if has_label:
            panels.append(np.asarray(item["label"])[0])
        panels.append(np.asarray(item["brain_mask"])[0] * 2 - 1)
        base = panels[len(task.inputs)] if has_label else panels[0]
        panels.append(base)
        for c, (ax, panel) in enumerate(zip(axes[r], panels, strict=True)):
            ax.imshow(panel, cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(cols[c], fontsize=9)
        lesion = item.get("lesion")
        if lesion is not None and bool(item.get("has_lesion", True)) and np.asarray(lesion).any():
            axes[r][-1].contour(np.asarray(lesion)[0], levels=[0.5], colors="red", linewidths=0.8)
        axes[r][0].set_ylabel(f"{item['subject']}\nz={item['slice_index']}", fontsize=8)
    fig.suptitle(f"{task.describe()}  (top: anterior, image left: patient right)", fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))
    plt.close(fig)
    return path


class PreviewWriter:
    """Callable config component: ``PreviewWriter(dataset, task, output_dir)()`` writes and returns the PNG path."""

    def __init__(
        self,
        dataset: SliceDataset,
        task: str | Task | dict,
        output_dir: str = "output/preview",
        filename: str = "preview.png",
        slices_per_subject: int = 2,
        dpi: int = 80,
    ) -> None:
        self.dataset = dataset
        self.task = resolve_task(task)
        self.path = os.path.join(output_dir, filename)
        self.slices_per_subject = slices_per_subject
        self.dpi = dpi

    def __call__(self) -> str:
        idx = pick_slices(self.dataset, self.slices_per_subject)
        path = render_preview([self.dataset[i] for i in idx], self.task, self.path, self.dpi)
        print(f"preview written to {os.path.abspath(path)} ({len(idx)} slices)")
        return path
