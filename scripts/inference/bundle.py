"""The pieces ``configs/inference.yaml`` wires into a MONAI ``SupervisedEvaluator`` (one iteration = one subject).

    SubjectDataset (datalist item -> the subject's slice stacks) -> DataLoader(batch_size=1, collate_fn=first_item)
    -> prepare_subject_batch (stack, slice ids) -> VolumeInferer (batched sampling) -> RestoreSynthesisd (original
    grid) -> SaveSynthesisd (NIfTI files, atomic)

A subject is one iteration because the model is 2D but its output is a 3D volume: the inferer batches the slices
itself, and the postprocessing needs the whole stack to restore the volume.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.data import Dataset, MetaTensor
from monai.transforms import MapTransform
from scripts.data import DataError, prepare_subject
from scripts.data.slicing import SliceGeometry

from .stack import StackSynthesis
from .volume import input_brain_mask, pipeline_inputs, restore_synthesis
from .writer import check_outputs_are_not_inputs, ensure_output_dir, write_synthesis

__all__ = [
    "CheckOutputFolder",
    "RestoreSynthesisd",
    "SaveSynthesisd",
    "SubjectDataset",
    "first_item",
    "prepare_subject_batch",
    "source_files",
]

logger = logging.getLogger(__name__)


def source_files(item: Mapping[str, Any]) -> dict[str, str]:
    """The file entries of a datalist item (everything but ``subject``)."""
    return {str(k): str(v) for k, v in item.items() if k != "subject" and isinstance(v, (str, os.PathLike))}


class SubjectDataset(Dataset):
    """One item per subject: the pipeline's stacks plus ``subject``, ``source_files`` (the input paths) and
    ``volume_mask`` (the inputs' brain mask on the original grid).

    Bad input raises ``DataError`` directly (not MONAI's "applying transform" wrapper); duplicate or missing subject
    ids are refused up front, since they would overwrite each other's output file.
    """

    def __init__(self, data: Sequence[Mapping[str, Any]], transform: Any, source: str | None = None) -> None:
        items = [dict(it) for it in data]
        if not items:
            where = f" in {source}" if source else " (empty datalist split)"
            raise DataError(f"no subjects to synthesize{where}; choose another split or datalist")
        ids = [str(it.get("subject") or "") for it in items]
        if "" in ids:
            raise DataError(f"datalist item #{ids.index('')} has no 'subject' id (it names the output file)")
        dupes = sorted({s for s in ids if ids.count(s) > 1})
        if dupes:
            raise DataError(f"subject ids listed more than once: {dupes}; each names one output file")
        super().__init__(items, transform)

    def _transform(self, index: int) -> dict[str, Any]:
        item = self.data[index]
        out = prepare_subject(item, self.transform)
        if "grid" in out:
            out["volume_mask"] = input_brain_mask(item, pipeline_inputs(self.transform), out["grid"])
        out["subject"] = str(item["subject"])
        out["source_files"] = source_files(item)
        return out


def first_item(batch: Sequence[Any]) -> Any:
    """``collate_fn`` for ``batch_size=1``: the subject's dict as is (its geometry must not be collated)."""
    if len(batch) != 1:
        raise ValueError(f"subject-level inference loads one subject per iteration, got a batch of {len(batch)}")
    return batch[0]


def prepare_subject_batch(
    batchdata: Mapping[str, Any], device: Any = None, non_blocking: bool = False, **kwargs: Any
) -> tuple[torch.Tensor, None, tuple, dict[str, Any]]:
    """Evaluator ``prepare_batch``: ``(stack (N, C, H, W), no target, (), {"slice_ids": axial indices})``.

    The stack stays on the CPU; ``VolumeInferer`` moves one batch of slices at a time to the network's device.
    """
    ids = SliceGeometry.from_dict(batchdata["geometry"]).slice_indices
    return torch.as_tensor(batchdata["image"]), None, (), {"slice_ids": ids}


class RestoreSynthesisd(MapTransform):
    """``pred`` (a ``StackSynthesis``) -> ``VolumeSynthesis`` under ``synthesis_key`` and ``pred`` as a (1, X, Y, Z)
    ``MetaTensor`` with the original affine (what MONAI Label and ``SaveImaged`` expect).

    Args:
        keys: the prediction key (``pred``).
        contrast: synthesized contrast (the task's target), used in file names.
        mask_background: zero outputs outside the inputs' brain mask.
    """

    def __init__(
        self,
        keys: str | Sequence[str] = "pred",
        contrast: str = "t1ce",
        mask_background: bool = True,
        synthesis_key: str = "synthesis",
        geometry_key: str = "geometry",
    ) -> None:
        super().__init__(keys, allow_missing_keys=False)
        self.contrast = contrast
        self.mask_background = mask_background
        self.synthesis_key = synthesis_key
        self.geometry_key = geometry_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        key = self.keys[0]
        pred = d[key]
        if isinstance(pred, torch.Tensor):
            pred = StackSynthesis(pred, None, None, 1)
        if not isinstance(pred, StackSynthesis):
            raise TypeError(f"RestoreSynthesisd: {key!r} must be a StackSynthesis or a tensor, got {type(pred)}")
        subject = str(d.get("subject", "subject"))
        result = restore_synthesis(
            pred,
            d[self.geometry_key],
            subject,
            self.contrast,
            d.get("brain_mask"),
            self.mask_background,
            d.get("volume_mask"),
        )
        result.grid_file = (d.get("grid") or {}).get("file")
        result.input_files = dict(d.get("source_files") or {})
        d[self.synthesis_key] = result
        d[key] = MetaTensor(torch.from_numpy(result.synthesis[None]), affine=torch.from_numpy(result.affine))
        return d


class SaveSynthesisd(MapTransform):
    """Write the ``VolumeSynthesis`` under ``synthesis_key`` with ``write_synthesis``; paths go to ``written``.

    Args:
        output_dir: output folder.
        provenance: settings recorded in the files' header extension (weights, seed, ...).
    """

    def __init__(
        self,
        output_dir: str,
        provenance: Mapping[str, Any] | None = None,
        synthesis_key: str = "synthesis",
        written_key: str = "written",
    ) -> None:
        super().__init__([synthesis_key], allow_missing_keys=False)
        self.output_dir = output_dir
        self.provenance = dict(provenance or {})
        self.synthesis_key = synthesis_key
        self.written_key = written_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        paths = write_synthesis(d[self.synthesis_key], self.output_dir, self.provenance)
        d[self.written_key] = {k: str(v) for k, v in paths.items()}
        return d


class CheckOutputFolder:
    """Handler: fail at engine start, before any synthesis, when the output folder cannot be written or an output
    file would replace one of the subjects' inputs (``datalist`` and ``contrast`` given)."""

    def __init__(
        self, output_dir: str, datalist: Sequence[Mapping[str, Any]] = (), contrast: str | None = None
    ) -> None:
        self.output_dir = output_dir
        self.datalist = list(datalist)
        self.contrast = contrast

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        ensure_output_dir(self.output_dir)
        if self.contrast is not None:
            check_outputs_are_not_inputs(self.output_dir, self.datalist, self.contrast)
