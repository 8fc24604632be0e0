"""The reference code's ``.npy`` layout: export our preparation to it, and read it as a dataset.

Layout (spec 5.1/5.2): ``<root>/{train,val,test}/<contrast>.npy``, each ``(N, 256, 256)`` float in [0, 1], slice i of
every contrast from the same subject and z. Arrays are stored *before* the loader's H<->W transpose, i.e. as
``resize(data[:, :, z])``; ``ReferenceNpyDataset`` applies the transpose and ``(x - 0.5) / 0.5`` like the reference
loader. Our export additionally writes ``brain_mask.npy``/``lesion.npy`` (uint8) and ``slices.json`` (subject and
slice of every row); the reference code ignores them, the dataset uses them when present.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from scripts.data.datalist import load_datalist
from scripts.data.errors import DataError
from scripts.data.io_utils import staged_files, write_json
from scripts.data.pipeline import build_volume_transforms, expected_num_slices, prepare_subject
from scripts.data.stacking import to_symmetric
from scripts.data.tasks import Task, resolve_task

__all__ = ["NPY_SPLITS", "npy_split_dir", "export_reference_npy", "ReferenceNpyDataset"]

#: datalist split name -> reference folder name
NPY_SPLITS: dict[str, str] = {"training": "train", "validation": "val", "test": "test"}


def npy_split_dir(split: str) -> str:
    """Folder name of a split in the reference layout (accepts ``training``/``train`` etc.)."""
    if split in NPY_SPLITS:
        return NPY_SPLITS[split]
    if split in NPY_SPLITS.values():
        return split
    raise DataError(f"unknown split {split!r}; use one of {sorted({*NPY_SPLITS, *NPY_SPLITS.values()})}")


def export_reference_npy(
    datalist: str | Mapping[str, Sequence[Mapping[str, Any]]],
    output_dir: str,
    contrasts: Sequence[str] = ("flair", "t2", "t1", "t1ce"),
    splits: Sequence[str] = ("training", "validation", "test"),
    dtype: str = "float32",
    with_masks: bool = True,
    **pipeline_kwargs: Any,
) -> dict[str, int]:
    """Prepare every subject in reference mode and write the reference ``.npy`` layout; returns slices per split.

    Args:
        datalist: a datalist JSON path, or a mapping split -> items.
        contrasts: contrasts to export (every subject must have them).
        dtype: array dtype (the reference saved float64; float32 halves the size and loses nothing it uses).
        with_masks: also write ``brain_mask.npy`` and, when any subject has one, ``lesion.npy``.
        pipeline_kwargs: extra ``build_volume_transforms`` arguments (reader, resample, ...).
    """
    if len(contrasts) < 2:
        raise DataError("export_reference_npy needs at least two contrasts")
    task = Task("export", tuple(contrasts[:-1]), contrasts[-1])
    transform = build_volume_transforms(task=task, mode="reference", keep_contrasts=True, **pipeline_kwargs)
    written: dict[str, int] = {}
    for split in splits:
        items = load_datalist(datalist, split) if isinstance(datalist, (str, os.PathLike)) else list(datalist[split])
        folder = os.path.join(output_dir, npy_split_dir(split))
        written[split] = _export_split(items, folder, transform, list(contrasts), np.dtype(dtype), with_masks)
    return written


def _export_split(
    items: Sequence[Mapping[str, Any]],
    folder: str,
    transform: Any,
    contrasts: list[str],
    dtype: np.dtype,
    with_masks: bool,
) -> int:
    """Write one split; arrays are filled through memory maps of temp files so big datasets never sit in RAM."""
    counts = [expected_num_slices(it, transform) for it in items]
    if None in counts:  # header not readable with nibabel: process once just to count
        counts = [len(prepare_subject(it, transform)["geometry"]["slice_indices"]) for it in items]
    total = int(sum(counts))
    names = list(contrasts)
    if with_masks:
        names += ["brain_mask"] + (["lesion"] if any("lesion" in it for it in items) else [])
    kinds = {name: np.dtype(np.uint8) if name in ("brain_mask", "lesion") else dtype for name in names}
    maps: dict[str, np.ndarray] = {}
    rows: list[dict[str, Any]] = []
    with staged_files({name: os.path.join(folder, f"{name}.npy") for name in names}) as temps:
        try:
            pos = 0
            for item, count in zip(items, counts, strict=True):
                out = prepare_subject(item, transform)
                n = len(out["geometry"]["slice_indices"])
                if n != count:
                    raise DataError(f"subject {item.get('subject')}: {n} slices prepared but {count} expected")
                if not maps:
                    height, width = out[contrasts[0]].shape[1:]
                    for name in names:
                        maps[name] = np.lib.format.open_memmap(temps[name], "w+", kinds[name], (total, width, height))
                for c in contrasts:  # stored before the loader's transpose: (N, W, H) = resize(data[:, :, z])
                    maps[c][pos : pos + n] = np.transpose(out[c], (0, 2, 1))
                if "brain_mask" in maps:
                    maps["brain_mask"][pos : pos + n] = np.transpose(out["brain_mask"][:, 0], (0, 2, 1)) > 0
                if "lesion" in maps and out.get("lesion") is not None:
                    maps["lesion"][pos : pos + n] = np.transpose(out["lesion"][:, 0], (0, 2, 1)) > 0
                sid = str(item.get("subject", ""))
                rows += [{"subject": sid, "slice_index": int(z)} for z in out["geometry"]["slice_indices"]]
                pos += n
            for arr in maps.values():
                arr.flush()
            if not maps:  # empty split: empty arrays, so the layout stays complete
                for name in names:
                    with open(temps[name], "wb") as handle:
                        np.save(handle, np.zeros((0, 256, 256), kinds[name]))
        finally:
            maps.clear()  # close the memory maps before the files move
    write_json(os.path.join(folder, "slices.json"), rows)
    return len(rows)


class ReferenceNpyDataset(torch.utils.data.Dataset):
    """Slices from the reference ``.npy`` layout, as the same dict items ``SliceDataset`` yields.

    Args:
        root: folder holding ``train/``, ``val/``, ``test/``.
        split: ``training``/``train``, ``validation``/``val`` or ``test``.
        task: task name / ``Task`` (selects and orders the contrasts).
        with_target: load the target contrast (``label``).

    ``brain_mask`` comes from ``brain_mask.npy`` when present; otherwise it is "> 0 in any task contrast", which
    misses brain voxels below the 1st percentile (they normalize to 0). Values outside [0, 1] or non-finite values
    raise a ``DataError`` naming the file and row.
    """

    def __init__(
        self, root: str, split: str = "test", task: str | Task | Mapping = "brats_t1ce", with_target: bool = True
    ):
        self.task = resolve_task(task)
        self.folder = os.path.join(root, npy_split_dir(split))
        if not os.path.isdir(self.folder):
            raise DataError(f"{self.folder}: split folder not found")
        keys = list(self.task.contrasts if with_target else self.task.inputs)
        self.arrays: dict[str, np.ndarray] = {}
        for key in keys:
            path = os.path.join(self.folder, f"{key}.npy")
            if not os.path.isfile(path):
                present = sorted(f for f in os.listdir(self.folder) if f.endswith(".npy"))
                raise DataError(f"{path}: not found (task {self.task.describe()}; files present: {present})")
            try:
                arr = np.load(path, mmap_mode="r", allow_pickle=False)
            except Exception as exc:  # noqa: BLE001 - corrupt/unreadable npy
                raise DataError(f"{path}: cannot be read as a .npy array ({type(exc).__name__}: {exc})") from None
            if arr.ndim != 3:
                raise DataError(f"{path}: expected (N, H, W) slices, got shape {arr.shape}")
            self.arrays[key] = arr
        shapes = {k: a.shape for k, a in self.arrays.items()}
        if len(set(shapes.values())) != 1:
            raise DataError(f"{self.folder}: contrast arrays differ in shape {shapes}; slice i must match across files")
        self.masks = {}
        for name in ("brain_mask", "lesion"):
            path = os.path.join(self.folder, f"{name}.npy")
            if os.path.isfile(path):
                arr = np.load(path, mmap_mode="r", allow_pickle=False)
                if arr.shape != next(iter(shapes.values())):
                    raise DataError(
                        f"{path}: shape {arr.shape} differs from the contrasts' {next(iter(shapes.values()))}"
                    )
                self.masks[name] = arr
        rows_path = os.path.join(self.folder, "slices.json")
        self.rows = None
        if os.path.isfile(rows_path):
            with open(rows_path, encoding="utf-8") as f:
                self.rows = json.load(f)
        self.with_target = with_target

    def __len__(self) -> int:
        return int(next(iter(self.arrays.values())).shape[0])

    def _slice(self, key: str, i: int) -> np.ndarray:
        """Row ``i`` of a contrast, transposed like the reference loader, checked to be finite and in [0, 1]."""
        sl = np.asarray(self.arrays[key][i], dtype=np.float64)
        if not np.isfinite(sl).all():
            raise DataError(f"{os.path.join(self.folder, key + '.npy')}: non-finite values in row {i}")
        if sl.min() < -1e-6 or sl.max() > 1 + 1e-6:
            raise DataError(
                f"{os.path.join(self.folder, key + '.npy')}: row {i} has values in [{sl.min():g}, {sl.max():g}], "
                "expected [0, 1] (reference layout)"
            )
        return np.asarray(self.arrays[key][i]).T

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"row {i} out of range for {len(self)} slices")
        i = int(i) % len(self)
        inputs = np.stack([self._slice(c, i) for c in self.task.inputs])
        item: dict[str, Any] = {"image": torch.from_numpy(to_symmetric(inputs))}
        if self.with_target:
            item["label"] = torch.from_numpy(to_symmetric(self._slice(self.task.target, i)[None]))
        if "brain_mask" in self.masks:
            mask = np.asarray(self.masks["brain_mask"][i]).T > 0
        else:
            mask = (inputs > 0).any(0) | ((self._slice(self.task.target, i) > 0) if self.with_target else False)
        item["brain_mask"] = torch.from_numpy(mask[None].astype(np.float32))
        if "lesion" in self.masks:
            item["lesion"] = torch.from_numpy((np.asarray(self.masks["lesion"][i]).T > 0)[None].astype(np.float32))
            item["has_lesion"] = True
        row = self.rows[i] if self.rows is not None and i < len(self.rows) else {}
        item["subject"] = str(row.get("subject", f"npy:{os.path.basename(self.folder)}"))
        item["slice_index"] = int(row.get("slice_index", i))
        item["position"] = i
        return item
