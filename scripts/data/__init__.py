"""MU-Diff data pipeline: NIfTI subjects -> normalized, task-ordered 2D slices, and back.

Main entry points (see each module for details):
- ``tasks``: ``TASKS``, ``get_task``, ``resolve_task`` (paper input orders, custom tasks);
- ``pipeline``: ``build_volume_transforms``, ``SliceDataset``, ``build_slice_dataset``, ``prepare_subject``;
- ``slicing``: ``restore_volume`` / ``SliceStackToVolumed`` (slice stack -> original grid);
- ``datalist``: ``prepare_datalist``, ``load_datalist`` (folder -> datalist JSON with splits);
- ``errors.DataError``: raised for every bad input, naming the file.
"""

from .datalist import load_datalist, prepare_datalist
from .errors import DataError
from .pipeline import SliceDataset, build_slice_dataset, build_volume_transforms, prepare_subject
from .slicing import SliceStackToVolumed, restore_volume
from .tasks import TASKS, Task, get_task, resolve_task

__all__ = [
    "DataError",
    "TASKS",
    "Task",
    "get_task",
    "resolve_task",
    "build_volume_transforms",
    "build_slice_dataset",
    "prepare_subject",
    "SliceDataset",
    "restore_volume",
    "SliceStackToVolumed",
    "prepare_datalist",
    "load_datalist",
]
