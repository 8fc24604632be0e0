"""Whole-subject synthesis with the U-Net baseline: NIfTI inputs -> ``<subject>_syn_<target>.nii.gz`` on their grid.

The subject goes through the same pipeline as training (``scripts.data.build_volume_transforms`` without the
target), the U-Net runs on its slice stack in batches, and ``scripts.data.restore_volume`` puts the stack back on the
original voxel grid (original orientation, shape and affine), in [0, 1]. Files are written atomically and never over
an input. The names are the ones ``scripts.evaluation`` matches, so the folder can be scored beside MU-Diff's.

Command line (architecture, task and slicing are read from the training config, so they cannot drift apart)::

    python -m scripts.baselines.synthesize --config_file configs/train_unet.yaml --split test \
        --output_dir output/unet [--checkpoint models/unet/model.pt] [--batch_size 16] [--device cpu] \
        [--subjects "[a,b]"] [--<config id> VALUE ...]

Any other ``--key value`` overrides that id of the training config, as with ``monai.bundle run``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from scripts.cli import run_fire
from scripts.data import DataError, build_volume_transforms, load_datalist, prepare_subject, resolve_task
from scripts.data.io_utils import save_nifti
from scripts.data.naming import result_name
from scripts.inference.stack import StackSynthesis
from scripts.inference.volume import input_brain_mask, pipeline_inputs, restore_synthesis
from torch import nn

from .unet import load_unet

__all__ = ["output_path", "predict_stack", "synthesize_subject", "synthesize_datalist", "settings_from_config", "main"]

logger = logging.getLogger(__name__)

#: Training-config keys the synthesis reads (data handling must match training exactly).
CONFIG_KEYS: tuple[str, ...] = ("task", "slice_mode", "num_slices", "spatial_size", "reader", "datalist_file")


def output_path(output_dir: str | os.PathLike, subject: str, target: str) -> Path:
    """``<output_dir>/<subject>_syn_<target>.nii.gz``, the name ``scripts.evaluation`` matches."""
    return Path(output_dir) / result_name(subject, target)


@torch.no_grad()
def predict_stack(
    network: nn.Module,
    cond: np.ndarray | torch.Tensor,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    brain_mask: np.ndarray | torch.Tensor | None = None,
) -> torch.Tensor:
    """Run ``network`` over a slice stack in batches.

    Args:
        network: maps ``(B, C, H, W)`` in [-1, 1] to ``(B, 1, H, W)`` in [-1, 1].
        cond: the stack ``(N, C, H, W)``.
        batch_size: slices per forward pass.
        device: where the network runs (it is moved there).
        brain_mask: optional ``(N, 1, H, W)``; prediction outside it is set to the background value -1.

    Returns:
        ``(N, 1, H, W)`` float32 on the CPU.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    x = torch.as_tensor(np.asarray(cond) if not isinstance(cond, torch.Tensor) else cond, dtype=torch.float32)
    network = network.to(device).eval()
    out = [network(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)]
    pred = torch.cat(out) if out else torch.zeros((0, 1, *x.shape[-2:]))
    if brain_mask is not None:
        mask = torch.as_tensor(np.asarray(brain_mask)) > 0
        pred = torch.where(mask.reshape(pred.shape), pred, torch.full_like(pred, -1.0))
    return pred


def _grid_image(path: str) -> nib.Nifti1Image | None:
    try:
        img = nib.load(path)
    except Exception:  # noqa: BLE001 - only used to copy header codes; the pipeline already read this file
        return None
    return img if isinstance(img, nib.Nifti1Image) else None


def _nifti_like(volume: np.ndarray, affine: np.ndarray, reference: nib.Nifti1Image | None) -> nib.Nifti1Image:
    """A float32 image on ``affine`` with the reference file's sform/qform codes and units (no intensity scaling)."""
    img = nib.Nifti1Image(volume.astype(np.float32), affine)
    if reference is not None:
        hdr = reference.header
        img.header.set_xyzt_units(*hdr.get_xyzt_units())
        img.set_sform(affine, code=int(hdr["sform_code"]) or 1)
        img.set_qform(affine, code=int(hdr["qform_code"]) or 1)
    img.header.set_slope_inter(1.0, 0.0)
    return img


def _check_not_an_input(out: Path, item: Mapping[str, Any]) -> None:
    target = os.path.realpath(out)
    for key, value in item.items():
        if isinstance(value, str) and os.path.exists(value) and os.path.realpath(value) == target:
            raise DataError(f"output {out} is the subject's input {key!r}; choose another output_dir")


def synthesize_subject(
    network: nn.Module,
    item: Mapping[str, Any],
    transform: Callable[[dict], dict],
    target: str,
    output_dir: str | os.PathLike,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    mask_background: bool = True,
    grid_key: str | None = None,
) -> Path:
    """Synthesize ``target`` for one datalist item and write it next to nothing it read.

    Args:
        network: the U-Net (any module mapping ``cond`` to a [-1, 1] slice works).
        item: datalist item: input contrast paths and ``subject``.
        transform: ``build_volume_transforms(..., with_target=False)`` with the training settings.
        target: contrast name used in the file name.
        output_dir: created when missing.
        batch_size, device: inference batching.
        mask_background: set voxels outside the inputs' brain mask (non-zero in any input) to background, as the
            ground truth is; slices the slice mode does not cover are background (0) either way.
        grid_key: item key of the file whose header codes are copied (default: the pipeline's grid contrast).

    Returns:
        The written path ``<output_dir>/<subject>_syn_<target>.nii.gz`` (float32, [0, 1], the input's grid).
    """
    subject = str(item.get("subject") or "")
    out = output_path(output_dir, subject, target)
    _check_not_an_input(out, item)
    stacks = prepare_subject(item, transform)
    if "geometry" not in stacks:
        raise DataError(f"subject {subject}: the pipeline gave no 'geometry'; use build_volume_transforms")
    mask = stacks.get("brain_mask") if mask_background else None
    pred = predict_stack(network, stacks["image"], batch_size=batch_size, device=device, brain_mask=mask)
    # back on the grid exactly as MU-Diff's syntheses are (same brain mask, same restore)
    volume_mask = input_brain_mask(item, pipeline_inputs(transform), stacks["grid"]) if "grid" in stacks else None
    restored = restore_synthesis(
        StackSynthesis(pred, None, None, 1), stacks["geometry"], subject, target, mask, mask_background, volume_mask
    )
    volume, affine = restored.synthesis, restored.affine
    grid_file = item.get(grid_key) if grid_key else None
    reference = _grid_image(grid_file) if isinstance(grid_file, str) else None
    save_nifti(out, _nifti_like(volume, affine, reference))
    logger.info("%s: wrote %s", subject, out)
    return out


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
    return [
        synthesize_subject(
            net,
            it,
            transform,
            t.target,
            output_dir,
            batch_size=batch_size,
            device=device,
            mask_background=mask_background,
            grid_key=t.inputs[0],
        )
        for it in items
    ]


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


def main(argv: list[str] | None = None) -> int:
    """Entry point: prints the written files; bad input is one ``error:`` line and exit status 2."""
    return run_fire(run, argv, serialize=lambda paths: "\n".join(paths))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(main())
