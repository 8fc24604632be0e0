r"""Whole-subject synthesis with the U-Net baseline: NIfTI inputs -> ``<subject>_syn_<target>.nii.gz`` on their grid.

The U-Net is just another per-slice predictor (``RegressionInferer``) of the bundle's one ``Synthesizer``: the subject
goes through the same pipeline as training (``scripts.data.build_volume_transforms`` without the target), the U-Net
runs on its slice stack in batches, and the stack is restored onto the original voxel grid and written exactly as
MU-Diff's syntheses are (atomically, never over an input, the names ``scripts.evaluation`` matches).

Command line: ``python -m scripts synthesize_unet`` (``scripts.commands.synthesize_unet``); the architecture, task
and slicing are read from the training config, so they cannot drift apart.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from scripts.data import DataError, build_volume_transforms, load_datalist, resolve_task
from scripts.inference.synthesizer import RegressionInferer, Synthesizer
from scripts.inference.writer import output_paths
from torch import nn

from .unet import load_unet

__all__ = ["output_path", "unet_synthesizer", "synthesize_datalist", "settings_from_config", "run"]

logger = logging.getLogger(__name__)

#: Training-config keys the synthesis reads (data handling must match training exactly).
CONFIG_KEYS: tuple[str, ...] = ("task", "slice_mode", "num_slices", "spatial_size", "reader", "datalist_file")


def output_path(output_dir: str | os.PathLike, subject: str, target: str) -> Path:
    """``<output_dir>/<subject>_syn_<target>.nii.gz``, the name ``scripts.evaluation`` matches (the writer's)."""
    return output_paths(output_dir, subject, target)["syn"]


def unet_synthesizer(
    network: nn.Module,
    transform: Callable[[dict], dict],
    target: str,
    batch_size: int = 16,
    mask_background: bool = True,
) -> Synthesizer:
    """The bundle's one ``Synthesizer`` with the U-Net (or any module mapping ``cond`` to a [-1, 1] slice) as its
    per-slice predictor: the same pipeline, restore and writer as MU-Diff's syntheses."""
    return Synthesizer(
        network,
        transform,
        RegressionInferer(batch_size),
        target,
        mask_background=mask_background,
        provenance={"method": "U-Net baseline (scripts.baselines)"},
    )


def synthesize_datalist(
    checkpoint: str | os.PathLike,
    datalist_file: str | os.PathLike,
    output_dir: str | os.PathLike,
    split: str = "test",
    task: str = "brats_t1ce",
    slice_mode: str = "reference",
    num_slices: int = 80,
    spatial_size: int | Sequence[int] | None = 256,
    reader: str = "nibabel",
    network_kwargs: Mapping[str, Any] | None = None,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    mask_background: bool = True,
    subjects: Sequence[str] | None = None,
) -> list[Path]:
    """Synthesize the task's target for every subject of one datalist split (or the listed ``subjects``).

    The data arguments must be the ones the U-Net was trained with (``settings_from_config`` reads them from the
    training config). In ``volume`` mode without ``spatial_size`` slices are padded to a multiple of the U-Net's
    size divisor. Returns the written paths.
    """
    net = load_unet(checkpoint, device=device, **dict(network_kwargs or {}))
    t = resolve_task(task)
    divisor = max(8, net.size_divisor)
    transform = build_volume_transforms(
        task=t,
        mode=slice_mode,
        num_slices=num_slices,
        spatial_size=spatial_size,
        divisor=divisor,
        reader=reader,
        with_target=False,
    )
    items = load_datalist(datalist_file, split)
    if subjects is not None:
        wanted = [str(s) for s in subjects]
        known = {str(it.get("subject")) for it in items}
        unknown = [s for s in wanted if s not in known]
        if unknown:
            raise DataError(f"{datalist_file}: subjects {unknown} are not in split {split!r}")
        items = [it for it in items if str(it.get("subject")) in wanted]
    synthesizer = unet_synthesizer(net, transform, t.target, batch_size, mask_background)
    return [paths["syn"] for _, paths in synthesizer.run(items, output_dir, device)]


def settings_from_config(config_file: str | Sequence[str], **overrides: Any) -> dict[str, Any]:
    """Data settings, network arguments and checkpoint path of a U-Net training config (``train_unet.yaml``
    plus overlays), after ``overrides`` (config ids, e.g. ``spatial_size=64``)."""
    from monai.bundle import ConfigParser

    files = [config_file] if isinstance(config_file, (str, os.PathLike)) else list(config_file)
    for f in files:
        if not os.path.isfile(f):
            raise FileNotFoundError(f"config file not found: {f}")
    parser = ConfigParser()
    parser.read_config(files)
    parser.update(overrides)
    settings = {k: parser.get_parsed_content(k) for k in CONFIG_KEYS}
    net_cfg = parser.get("network_def")
    if not isinstance(net_cfg, Mapping) or "RegressionUNet" not in str(net_cfg.get("_target_", "")):
        raise ValueError(f"{files}: 'network_def' is not a scripts.baselines.unet.RegressionUNet")
    settings["network_kwargs"] = {
        k: parser.get_parsed_content(f"network_def#{k}") for k in net_cfg if not str(k).startswith("_")
    }
    settings["checkpoint"] = os.path.join(parser.get_parsed_content("ckpt_dir"), "model.pt")
    return settings


def _as_list(value: Any) -> list[str]:
    if isinstance(value, str) and value.strip().startswith("["):
        import ast

        value = ast.literal_eval(value)
    return [value] if isinstance(value, str) else list(value)


def run(
    output_dir: str,
    config_file: str | Sequence[str] = "configs/train_unet.yaml",
    split: str = "test",
    checkpoint: str | None = None,
    datalist_file: str | None = None,
    subjects: Sequence[str] | None = None,
    batch_size: int = 16,
    device: str | None = None,
    mask_background: bool = True,
    **overrides: Any,
) -> list[str]:
    """CLI body: read the training config (plus ``overrides`` of its ids, e.g. ``--spatial_size 64``, exactly as
    given to ``monai.bundle run``), synthesize one split and return the written paths."""
    settings = settings_from_config(_as_list(config_file), **overrides)
    if device is None:
        device = "cuda:0" if torch.cuda.is_available() else "cpu"
    paths = synthesize_datalist(
        checkpoint or settings["checkpoint"],
        datalist_file or settings["datalist_file"],
        output_dir,
        split=split,
        task=settings["task"],
        slice_mode=settings["slice_mode"],
        num_slices=settings["num_slices"],
        spatial_size=settings["spatial_size"],
        reader=settings["reader"],
        network_kwargs=settings["network_kwargs"],
        batch_size=batch_size,
        device=device,
        mask_background=mask_background,
        subjects=_as_list(subjects) if subjects is not None else None,
    )
    return [str(p) for p in paths]
