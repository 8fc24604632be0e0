"""The one reader, writer and mismatch report for every checkpoint the bundle touches, with one error type.

Why one owner: each loader (MU-Diff inference, the critic, the U-Net baseline, the segmentation network, the
published-weight converter, training's resume) used to read and check files its own way, so the same damaged file
gave four different messages. Files handled here:

- plain state dicts (``models/model.pt``, ``models/unet.pt``, ``models/segmentation.pt``, converted or reference
  ``.pth`` files), optionally carrying their own description (``scripts.networks.described``);
- MONAI's ``{"model": state_dict}`` and the common ``{"state_dict": ...}`` wrappers;
- training's resume checkpoint (``{"format": RESUME_FORMAT, "objects": {name: state_dict}, ...}``): the state dict
  of one of its objects (``network`` by default) is taken.

Every file is read with ``torch.load(weights_only=True)`` on the CPU and written atomically (a crash never leaves a
truncated file; a full disk is reported as one).
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from scripts.data.io_utils import atomic_write
from scripts.errors import UserError
from scripts.networks.described import EXTRA_STATE_KEY, NetworkConfigError
from torch import nn

__all__ = [
    "RESUME_FORMAT",
    "CheckpointError",
    "atomic_torch_save",
    "is_state_dict",
    "load_checked",
    "mismatch_report",
    "read_checkpoint",
    "read_state_dict",
    "state_dict_in",
]

#: ``format`` entry of training's resume checkpoint (scripts.training.checkpoint.ResumeCheckpoint)
RESUME_FORMAT = "mudiff-resume-1"
#: Keys named per category in a mismatch report
MAX_LISTED = 5
#: Below this much free space a failed save is reported as a full disk (torch only says "unexpected pos")
LOW_DISK_BYTES = 256 * 2**20
_WRAPPER_KEYS = ("model", "state_dict")
_DDP_PREFIX = "module."


class CheckpointError(UserError, ValueError):
    """A checkpoint file is missing, unreadable, of another kind, or does not fit the network it is loaded into."""


def read_checkpoint(path: str | os.PathLike, what: str = "weights", advice: str = "") -> Any:
    """``torch.load(weights_only=True)`` on the CPU; a missing or unreadable file is a ``CheckpointError`` naming
    ``what`` and the file (``advice``: how to get the file, appended to the "not found" message)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} file {path} not found" + (f"; {advice}" if advice else ""))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many unrelated types for damaged or non-torch files
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{what} file {path} cannot be read as a weights-only torch file ({first})") from None


def is_state_dict(obj: Any) -> bool:
    """Tensors by name; a module's ``_extra_state`` entry (a network's own description) may be anything."""
    return (
        isinstance(obj, Mapping)
        and bool(obj)
        and all(isinstance(v, torch.Tensor) for k, v in obj.items() if not str(k).endswith(EXTRA_STATE_KEY))
    )


def _kind(obj: Any) -> str:
    if isinstance(obj, Mapping):
        return f"a dict with keys {sorted(map(str, obj))[:6]}"
    return f"a {type(obj).__name__}"


def state_dict_in(obj: Any, path: str | os.PathLike, entry: str = "network", expected: str = "a state dict") -> dict:
    """The state dict inside a loaded checkpoint: itself, a ``{"model"|"state_dict": ...}`` wrapper's content, or a
    resume checkpoint's ``entry`` object. A DDP ``module.`` prefix on every key is removed.

    ``expected`` describes the wanted content in the error (e.g. "a MU-Diff state dict (g1.*, g2.* tensors)").
    """
    if isinstance(obj, Mapping) and obj.get("format") == RESUME_FORMAT:
        objects = obj.get("objects") or {}
        if not is_state_dict(objects.get(entry)):
            raise CheckpointError(f"{path}: resume checkpoint without a {entry!r} state dict")
        obj = objects[entry]
    elif isinstance(obj, Mapping) and len(obj) == 1 and next(iter(obj)) in _WRAPPER_KEYS:
        obj = next(iter(obj.values()))
    if not is_state_dict(obj):
        raise CheckpointError(f"{path}: expected {expected}, got {_kind(obj)}")
    state = dict(obj)
    if all(str(k).startswith(_DDP_PREFIX) for k in state):  # saved from a DDP-wrapped network
        state = {k[len(_DDP_PREFIX) :]: v for k, v in state.items()}
    return state


def read_state_dict(
    path: str | os.PathLike,
    what: str = "weights",
    entry: str = "network",
    expected: str = "a state dict",
    advice: str = "",
) -> dict[str, Any]:
    """``read_checkpoint`` + ``state_dict_in``: the state dict stored in ``path``, whatever wrapper holds it."""
    return state_dict_in(read_checkpoint(path, what, advice), path, entry, expected)


def _shape_problem(key: str, found: Any, wanted: Any) -> str | None:
    if not isinstance(wanted, torch.Tensor):
        return None
    if not isinstance(found, torch.Tensor):
        return f"{key}: checkpoint holds a {type(found).__name__}, not a tensor"
    if tuple(found.shape) != tuple(wanted.shape):
        return f"{key}: checkpoint {tuple(found.shape)} vs network {tuple(wanted.shape)}"
    return None


def mismatch_report(expected: Mapping[str, Any], state: Mapping[str, Any], limit: int = MAX_LISTED) -> str | None:
    """What keeps ``state`` from loading strictly into a module with state dict ``expected``: missing keys,
    unexpected keys and shape mismatches (the first ``limit`` of each named); None when it fits. A module's
    optional ``_extra_state`` (its description) may be absent from older files."""
    missing = [k for k in expected if k not in state and not str(k).endswith(EXTRA_STATE_KEY)]
    unexpected = [k for k in state if k not in expected]
    shapes = [p for k in expected if k in state for p in [_shape_problem(k, state[k], expected[k])] if p]
    parts = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if items:
            more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
            parts.append(f"{len(items)} {label}: {items[:limit]}{more}")
    return "; ".join(parts) or None


def load_checked(
    module: nn.Module, state: Mapping[str, Any], path: str | os.PathLike, what: str = "the weights", advice: str = ""
) -> None:
    """Load ``state`` into ``module`` strictly after comparing keys and shapes; a mismatch (or weights that
    describe another configuration) is one ``CheckpointError``: "<path>: <what> do not fit ...: <report>. <advice>"."""
    problem = mismatch_report(module.state_dict(), state)
    if problem:
        raise CheckpointError(
            f"{path}: {what} do not fit the configured {type(module).__name__}: {problem}"
            + (f". {advice}" if advice else "")
        )
    try:
        module.load_state_dict(state, strict=True)
    except NetworkConfigError as exc:
        raise CheckpointError(f"{path}: {exc}" + (f"; {advice}" if advice else "")) from None


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through the atomic writer: a crash never leaves a truncated file, and a full disk is reported
    as one (``OSError`` ENOSPC naming the file), not as torch's zip-writer error."""
    try:
        atomic_write(path, lambda tmp: torch.save(obj, tmp))
    except RuntimeError:
        folder = os.path.dirname(os.path.abspath(path))
        free = shutil.disk_usage(folder).free
        if free >= LOW_DISK_BYTES:
            raise
        raise OSError(
            errno.ENOSPC, f"no space left on device writing {path} ({free / 2**20:.0f} MiB free in {folder})"
        ) from None
