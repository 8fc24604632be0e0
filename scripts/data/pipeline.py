"""The whole data pipeline from Python: subject-level transforms and the 2D slice dataset built on them.

``build_volume_transforms`` returns the same ``Compose`` that ``configs/prepare.yaml`` wires key by key:

    LoadSubjectd -> CheckVolumesd -> EnsureSameGridd -> RecordGridd -> Orientationd(LPS) -> BrainMaskd
    -> BinarizeMaskd(lesion) -> NonzeroPercentileNormalized -> ExtractAxialSlicesd -> TaskStackd

Applied to one datalist item it gives the subject's stacks (``image`` (N, C, H, W), ``label`` (N, 1, H, W), masks,
``geometry``). ``SliceDataset`` indexes those stacks slice by slice for 2D training and evaluation.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.transforms import Compose, Orientationd

from .checks import CheckVolumesd, EnsureSameGridd, RecordGridd
from .datalist import load_datalist
from .errors import DataError, call_unwrapping
from .loading import LoadSubjectd
from .slicing import ExtractAxialSlicesd
from .stacking import TaskStackd
from .tasks import MASK_KEYS, Task, resolve_task
from .transforms import BinarizeMaskd, BrainMaskd, LabelRegionsd, NonzeroPercentileNormalized

__all__ = [
    "CANONICAL_AXCODES",
    "VolumePipeline",
    "build_volume_transforms",
    "prepare_subject",
    "expected_num_slices",
    "SliceDataset",
    "build_slice_dataset",
]

#: Canonical orientation: BraTS/SRI24 layout (axis 0 -> Left, 1 -> Posterior, 2 -> Superior), i.e. the layout the
#: published weights were trained on, so BraTS files pass through unchanged.
CANONICAL_AXCODES = "LPS"
#: Axis-code convention of nibabel and MONAI's RAS-space affines: the second letter of each pair is the + direction.
RAS_LABELS: tuple[tuple[str, str], ...] = (("L", "R"), ("P", "A"), ("I", "S"))
ARRAY_KEYS: tuple[str, ...] = ("image", "label", "brain_mask", "lesion")
MASK_STACKS: frozenset[str] = frozenset({"brain_mask", "lesion"})


class VolumePipeline(Compose):
    """A ``Compose`` that re-raises ``DataError`` from inside MONAI's "applying transform" wrapper."""

    def __call__(self, input_: Any, *args: Any, **kwargs: Any) -> Any:
        return call_unwrapping(super().__call__, input_, *args, **kwargs)


def build_volume_transforms(
    task: str | Task | Mapping | None = "brats_t1ce",
    inputs: Sequence[str] | None = None,
    target: str | None = None,
    mode: str = "reference",
    num_slices: int = 80,
    spatial_size: int | Sequence[int] | None = None,
    divisor: int = 8,
    short_volume: str = "all",
    reader: str = "nibabel",
    with_target: bool = True,
    with_masks: bool = True,
    reference_key: str | None = None,
    resample: bool = False,
    grid_atol: float = 1e-3,
    axcodes: str = CANONICAL_AXCODES,
    percentiles: Sequence[float] = (1.0, 99.0),
    keep_contrasts: bool = False,
    label_regions: Mapping[str, Sequence[int]] | None = None,
) -> VolumePipeline:
    """Subject-level pipeline: datalist item (file paths) -> slice stacks of one task.

    Args:
        task: paper task name (``brats_t1ce``...), ``"a,b,c->d"``, ``Task`` or mapping; ``inputs``/``target`` override.
        mode: ``"reference"`` (80 middle slices resized to 256, as the published model) or ``"volume"``
            (all slices, padded, exactly invertible with ``restore_volume``).
        num_slices, short_volume: reference-mode slice count and the rule for shorter volumes ("all" / "error").
        spatial_size, divisor: output slice size (see ``ExtractAxialSlicesd``).
        reader: ``"nibabel"`` or ``"itk"``.
        with_target: load the target and emit ``label`` (False at inference, where the target is missing).
        with_masks: load ``lesion``/``brain_mask`` files when the item has them.
        reference_key: contrast defining the voxel grid (default: first input).
        resample: resample contrasts on another grid onto the reference grid instead of raising.
        grid_atol: affine tolerance for "same grid".
        axcodes: canonical orientation; keep ``"LPS"`` for the published weights.
        percentiles: lower/upper percentiles of the positive voxels used for normalization.
        keep_contrasts: also keep per-contrast [0, 1] stacks in the output.
        label_regions: region name -> lesion labels, each sliced like a mask into its own (N, 1, H, W) stack
            (``LabelRegionsd``; e.g. the BraTS regions for segmentation), before ``lesion`` is binarized.
    """
    t = resolve_task(task, inputs, target)
    contrasts = list(t.contrasts if with_target else t.inputs)
    ref = reference_key or t.inputs[0]
    if ref not in contrasts:
        raise DataError(f"reference_key {ref!r} is not one of the loaded contrasts {contrasts}")
    masks = list(MASK_KEYS) if with_masks else []
    dropped = [*([] if with_target else [t.target]), *([] if with_masks else MASK_KEYS)]
    lower, upper = (float(p) for p in percentiles)
    regions = dict(label_regions or {})
    clash = sorted(set(regions) & {*contrasts, *MASK_KEYS, "image", "label"})
    if clash:
        raise DataError(f"label_regions: names {clash} are already data keys")
    return VolumePipeline(
        [
            LoadSubjectd(keys=contrasts, optional_keys=masks, reader=reader, drop_keys=dropped),
            CheckVolumesd(keys=contrasts, mask_keys=masks),
            EnsureSameGridd(keys=contrasts, reference_key=ref, mask_keys=masks, resample=resample, atol=grid_atol),
            RecordGridd(reference_key=ref),
            Orientationd(keys=[*contrasts, *masks], axcodes=axcodes, labels=RAS_LABELS, allow_missing_keys=True),
            BrainMaskd(keys=contrasts),
            LabelRegionsd(regions),  # no-op without regions or without a lesion file
            BinarizeMaskd(keys=["lesion"]),  # no-op when the subject has no lesion file
            NonzeroPercentileNormalized(keys=contrasts, lower=lower, upper=upper),
            ExtractAxialSlicesd(
                keys=contrasts,
                mask_keys=["brain_mask", "lesion", *regions],
                mode=mode,
                num_slices=num_slices,
                spatial_size=spatial_size,
                divisor=divisor,
                short_volume=short_volume,
            ),
            TaskStackd(
                task=t,
                require_target=with_target,
                keep_contrasts=keep_contrasts,
                mask_keys=("brain_mask", "lesion", *regions),
            ),
        ]
    )


def prepare_subject(item: Mapping[str, Any], transform: Callable) -> dict[str, Any]:
    """Run the subject pipeline on one datalist item; a bad input raises a plain ``DataError``."""
    return call_unwrapping(transform, dict(item))


def _find(transform: Any, kind: type) -> Any:
    for t in getattr(transform, "transforms", ()):
        if isinstance(t, kind):
            return t
    return None


def expected_num_slices(item: Mapping[str, Any], transform: Any) -> int | None:
    """Slices ``transform`` will produce for ``item``, read from the grid file's NIfTI header without loading the
    data; ``None`` when it cannot be told (no header-readable file, or a pipeline without the usual steps)."""
    extract = _find(transform, ExtractAxialSlicesd)
    grid = _find(transform, RecordGridd)
    orient = _find(transform, Orientationd)
    path = item.get(grid.reference_key) if grid is not None else None
    if extract is None or orient is None or not isinstance(path, str) or not os.path.isfile(path):
        return None
    try:
        header_img = nib.load(path)
        ornt = nib.orientations.io_orientation(header_img.affine)
        axcodes = getattr(orient.ornt_transform, "axcodes", None) or CANONICAL_AXCODES
        world_axis = {"L": 0, "R": 0, "P": 1, "A": 1, "I": 2, "S": 2}[axcodes[2]]
        axial = int(np.flatnonzero(ornt[:, 0] == world_axis)[0])
        return extract.expected_num_slices(int(header_img.shape[axial]))
    except Exception:  # noqa: BLE001 - an unreadable file is reported properly when the subject is processed
        return None


def _settings_of(obj: Any, depth: int = 1) -> dict[str, str]:
    """Public plain-valued attributes of a transform (and of its transform attributes, one level down)."""
    fields: dict[str, str] = {}
    for k, v in sorted(vars(obj).items()):
        if k.startswith("_"):
            continue
        if dataclasses.is_dataclass(v) or isinstance(v, (int, float, str, bool, tuple, list, type, type(None))):
            fields[k] = repr(v)
        elif depth > 0 and hasattr(v, "__dict__") and callable(v):
            fields[k] = json.dumps(_settings_of(v, depth - 1), sort_keys=True)
    return fields


def _describe(transform: Any) -> str:
    """Stable text description of a pipeline's settings (used as part of the disk-cache key)."""
    parts = [
        f"{type(t).__name__}{json.dumps(_settings_of(t), sort_keys=True)}"
        for t in getattr(transform, "transforms", (transform,))
    ]
    return "|".join(parts)


def _file_stamp(value: Any) -> Any:
    if isinstance(value, str) and os.path.isfile(value):
        st = os.stat(value)
        return [os.path.abspath(value), st.st_size, int(st.st_mtime)]
    return value


class SliceDataset(torch.utils.data.Dataset):
    """2D slices of many subjects, produced by a subject-level pipeline (``build_volume_transforms``).

    Each item: ``image`` (C, H, W) and ``label`` (1, H, W) in [-1, 1], ``brain_mask`` (1, H, W), ``lesion``
    (1, H, W) and ``has_lesion`` when lesions are included, plus ``subject`` (str), ``subject_index``,
    ``slice_index`` (axial index in the canonical volume) and ``position`` (index in the subject's stack).

    Memory: a subject in reference mode takes about 95 MB (80 slices of 256x256: float32 image and label, uint8
    masks), so a 200-subject training set needs about 19 GB when kept in memory (the reference code holds a similar
    amount); give ``cache_dir`` for large datasets, especially with DataLoader workers (each has its own memory).

    Subjects are processed on first use and cached in memory (``max_cached_subjects`` bounds it, LRU); with
    ``cache_dir`` the processed stacks are also stored as .npy files (keyed by file stamps and pipeline settings)
    and memory-mapped, so large datasets are prepared once and shared by DataLoader workers.

    Args:
        data: datalist items (dicts of file paths with a ``subject`` id).
        transform: the subject-level pipeline.
        cache_dir: optional folder for the persistent cache.
        include_lesion: add ``lesion``/``has_lesion`` (zeros where a subject has none); default: when any item
            has a lesion file, so batches always have the same keys.
        max_cached_subjects: keep at most this many processed subjects in memory (None: all).
    """

    def __init__(
        self,
        data: Sequence[Mapping[str, Any]],
        transform: Callable,
        cache_dir: str | None = None,
        include_lesion: bool | None = None,
        max_cached_subjects: int | None = None,
    ) -> None:
        self.data = [dict(item) for item in data]
        if not self.data:
            raise DataError("SliceDataset: the datalist is empty")
        self.transform = transform
        self.cache_dir = cache_dir
        self.include_lesion = any("lesion" in it for it in self.data) if include_lesion is None else include_lesion
        self.max_cached_subjects = max_cached_subjects
        self._cache: OrderedDict[int, dict[str, Any]] = OrderedDict()
        self._settings = _describe(transform)
        self.counts = [self._expected_count(i) for i in range(len(self.data))]
        self.offsets = np.cumsum([0, *self.counts]).tolist()

    # ---- bookkeeping ---------------------------------------------------------------------------------------
    def subject_id(self, index: int) -> str:
        return str(self.data[index].get("subject") or f"subject_{index:04d}")

    def _expected_count(self, index: int) -> int:
        """Slice count from the NIfTI header (cheap); falls back to processing the subject."""
        count = expected_num_slices(self.data[index], self.transform)
        return int(len(self.subject_stacks(index)["image"])) if count is None else count

    def __len__(self) -> int:
        return int(self.offsets[-1])

    # ---- processing and caching ------------------------------------------------------------------------------
    def _cache_path(self, index: int) -> str | None:
        if not self.cache_dir:
            return None
        item = {k: _file_stamp(v) for k, v in sorted(self.data[index].items())}
        key = hashlib.sha1(json.dumps([item, self._settings], sort_keys=True, default=str).encode()).hexdigest()[:16]
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.subject_id(index))
        return os.path.join(self.cache_dir, f"{safe}-{key}")

    def _process(self, index: int) -> dict[str, Any]:
        sid = self.subject_id(index)
        out = prepare_subject(self.data[index], self.transform)
        # masks are {0, 1}: keep them as uint8 (a quarter of the memory), items convert them back to float32
        stacks = {
            k: np.asarray(out[k], dtype=np.uint8 if k in MASK_STACKS else np.float32) for k in ARRAY_KEYS if k in out
        }
        if "image" not in stacks:
            raise DataError(f"subject {sid}: the pipeline produced no 'image' stack")
        stacks["geometry"] = out.get("geometry")
        return stacks

    def _load_or_process(self, index: int) -> dict[str, Any]:
        folder = self._cache_path(index)
        if folder and os.path.isfile(os.path.join(folder, "geometry.json")):
            stacks: dict[str, Any] = {}
            for k in ARRAY_KEYS:
                f = os.path.join(folder, f"{k}.npy")
                if os.path.isfile(f):
                    stacks[k] = np.load(f, mmap_mode="r")
            with open(os.path.join(folder, "geometry.json"), encoding="utf-8") as fh:
                stacks["geometry"] = json.load(fh)
            return stacks
        stacks = self._process(index)
        if folder:
            os.makedirs(self.cache_dir, exist_ok=True)
            tmp = tempfile.mkdtemp(prefix=".tmp_", dir=self.cache_dir)
            try:
                for k in ARRAY_KEYS:
                    if k in stacks:
                        np.save(os.path.join(tmp, f"{k}.npy"), stacks[k])
                with open(os.path.join(tmp, "geometry.json"), "w", encoding="utf-8") as fh:
                    json.dump(stacks["geometry"], fh)
                os.replace(tmp, folder)
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)  # another worker won the race: its copy is identical
        return stacks

    def subject_stacks(self, index: int) -> dict[str, Any]:
        """All stacks of subject ``index`` (``image`` (N, C, H, W), ..., ``geometry``)."""
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        stacks = self._load_or_process(index)
        self._cache[index] = stacks
        if self.max_cached_subjects is not None:
            while len(self._cache) > max(1, self.max_cached_subjects):
                self._cache.popitem(last=False)
        return stacks

    def geometry(self, index: int) -> dict[str, Any]:
        """Geometry of subject ``index`` for ``restore_volume``."""
        return self.subject_stacks(index)["geometry"]

    # ---- items ----------------------------------------------------------------------------------------------
    def locate(self, i: int) -> tuple[int, int]:
        """(subject index, position in its stack) of global slice ``i``."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"slice index {i} out of range for {len(self)} slices")
        i = i % len(self)
        s = bisect.bisect_right(self.offsets, i) - 1
        return s, i - int(self.offsets[s])

    def __getitem__(self, i: int) -> dict[str, Any]:
        s, pos = self.locate(int(i))
        stacks = self.subject_stacks(s)
        n = len(stacks["image"])
        if n != self.counts[s]:
            raise DataError(f"subject {self.subject_id(s)}: {n} slices prepared but {self.counts[s]} expected")
        item: dict[str, Any] = {
            "image": torch.from_numpy(np.array(stacks["image"][pos])),
            "subject": self.subject_id(s),
            "subject_index": s,
            "slice_index": int(stacks["geometry"]["slice_indices"][pos]),
            "position": pos,
        }
        for k in ("label", "brain_mask"):
            if k in stacks:
                item[k] = torch.from_numpy(np.array(stacks[k][pos], dtype=np.float32))
        if self.include_lesion:
            has = "lesion" in stacks
            shape = (1, *item["image"].shape[1:])
            lesion = np.array(stacks["lesion"][pos], dtype=np.float32) if has else np.zeros(shape, np.float32)
            item["lesion"] = torch.from_numpy(lesion)
            item["has_lesion"] = has
        return item


def build_slice_dataset(
    datalist: str | Sequence[Mapping[str, Any]],
    split: str = "training",
    cache_dir: str | None = None,
    include_lesion: bool | None = None,
    max_cached_subjects: int | None = None,
    **pipeline_kwargs: Any,
) -> SliceDataset:
    """``SliceDataset`` over one split of a datalist JSON (or a list of items); ``pipeline_kwargs`` go to
    ``build_volume_transforms`` (task, mode, spatial_size, ...)."""
    items = load_datalist(datalist, split) if isinstance(datalist, (str, os.PathLike)) else list(datalist)
    if not items:
        raise DataError(f"split {split!r} of {datalist if isinstance(datalist, str) else 'the datalist'} is empty")
    return SliceDataset(
        items,
        build_volume_transforms(**pipeline_kwargs),
        cache_dir=cache_dir,
        include_lesion=include_lesion,
        max_cached_subjects=max_cached_subjects,
    )
