"""Load MU-Diff generator (and optional critic) weights for inference, refusing anything that does not fit.

Why a loader of our own: ``load_state_dict`` on weights of another configuration ends in a long torch error, and a
model trained for another task loads without any error at all and then synthesizes the wrong contrast. Here:

- ``models/model.pt`` may be a plain ``MUDiff`` state dict (``g1.*``, ``g2.*``; what training and the published-weight
  converter write), a ``{"model": ...}`` / ``{"state_dict": ...}`` wrapper, or a training resume checkpoint
  (``format: mudiff-resume-1``; its ``network`` entry is used).
- Keys and shapes are compared with the configured network first; a mismatch raises ``InferenceError`` naming the
  file, the first differing keys/shapes and what the checkpoint's sizes suggest (``nf``, ``nz``).
- The *training record* of the weights is checked against the inference settings: the record the weights carry in
  their state dict (``scripts.networks.described``), or for weights written before they described themselves the
  fingerprint of ``resume.pt`` in the same folder. Another task is an error; another slice size or mode a warning.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from monai.handlers import CheckpointLoader
from scripts.data import DataError, resolve_task
from scripts.networks.described import EXTRA_STATE_KEY, NetworkConfigError, description_of
from scripts.networks.wrappers import unwrap
from torch import nn

from .errors import InferenceError

__all__ = [
    "RESUME_FORMAT",
    "MUDiffCheckpointLoader",
    "check_training_record",
    "generator_state",
    "inference_settings",
    "load_critic",
    "load_generators",
    "read_checkpoint",
    "training_record",
    "weights_description",
]

logger = logging.getLogger(__name__)

RESUME_FORMAT = "mudiff-resume-1"
_MAX_LISTED = 5


def read_checkpoint(path: str | os.PathLike, what: str = "weights") -> Any:
    """``torch.load(weights_only=True)`` on CPU; a missing or unreadable file raises ``InferenceError``."""
    path = Path(path)
    if not path.is_file():
        raise InferenceError(
            f"{what} file {path} not found; train a model (configs/train.yaml) or convert the published weights "
            "(python -m scripts.convert_weights ...), or point the config key ckpt_path / --weights at the file"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many unrelated types for damaged or non-torch files
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise InferenceError(f"{what} file {path} cannot be read as a weights-only torch file ({first})") from None


def _is_state_dict(obj: Any) -> bool:
    """Tensors by name; a module's ``_extra_state`` entry (``MUDiff``'s own description) may be anything."""
    return (
        isinstance(obj, Mapping)
        and bool(obj)
        and all(isinstance(v, torch.Tensor) for k, v in obj.items() if not str(k).endswith(EXTRA_STATE_KEY))
    )


def generator_state(obj: Any, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The ``MUDiff`` state dict inside a loaded checkpoint object (plain, wrapped, or a resume checkpoint)."""
    if isinstance(obj, Mapping) and obj.get("format") == RESUME_FORMAT:
        objects = obj.get("objects") or {}
        if not _is_state_dict(objects.get("network")):
            raise InferenceError(f"{path}: resume checkpoint without a 'network' state dict")
        return dict(objects["network"])
    if isinstance(obj, Mapping) and len(obj) == 1 and next(iter(obj)) in ("model", "state_dict"):
        obj = next(iter(obj.values()))
    if not _is_state_dict(obj):
        kind = type(obj).__name__ if not isinstance(obj, Mapping) else f"a dict with keys {sorted(map(str, obj))[:6]}"
        raise InferenceError(f"{path}: expected a MU-Diff state dict (g1.*, g2.* tensors), got {kind}")
    state = dict(obj)
    if all(k.startswith("module.") for k in state):  # saved from a DDP-wrapped network
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _config_hint(state: Mapping[str, torch.Tensor]) -> str:
    """What the checkpoint's own tensor shapes say about its configuration (a pointer for the user)."""
    hints = []
    emb = state.get("g1.time_embed.linear1.weight")
    if emb is not None and emb.ndim == 2:
        hints.append(f"nf={emb.shape[1]}")
    lat = state.get("g1.latent_mapping.layers.0.weight")
    if lat is not None and lat.ndim == 2:
        hints.append(f"nz={lat.shape[1]}, z_emb_dim={lat.shape[0]}")
    return f"The checkpoint's shapes suggest {', '.join(hints)}. " if hints else ""


def _mismatch_message(
    path: str | os.PathLike, expected: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], what: str
) -> str | None:
    missing = [k for k in expected if k not in state and not k.endswith(EXTRA_STATE_KEY)]  # optional entry
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs network {tuple(expected[k].shape)}"
        for k in expected
        if k in state and isinstance(state[k], torch.Tensor) and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if not (missing or unexpected or shapes):
        return None
    parts = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if items:
            more = f" (+{len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
            parts.append(f"{len(items)} {label}: {items[:_MAX_LISTED]}{more}")
    return f"{path}: {what} do not fit the configured network: " + "; ".join(parts)


def training_record(path: str | os.PathLike, state: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """How the weights at ``path`` were trained (task, slice_mode, spatial_size), when that was recorded.

    Read from the weights' own description (``MUDiff``'s ``_extra_state`` ``record``; ``state`` is the loaded state
    dict when the caller has it), else (weights written before they described themselves) the fingerprint of
    ``resume.pt`` beside the file; ``None`` when neither exists (e.g. converted published weights).
    """
    path = Path(path)
    if state is None and path.is_file():
        state = generator_state(read_checkpoint(path), path)
    own = (state or {}).get(EXTRA_STATE_KEY)
    if isinstance(own, Mapping) and own.get("record"):
        return {**dict(own["record"]), "source": f"{path} (its own record)"}
    resume = path.parent / "resume.pt"
    if resume.is_file() and resume.resolve() != path.resolve():
        try:
            payload = torch.load(resume, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # noqa: BLE001 - a damaged resume file only costs us the check, not the inference
            logger.warning("%s: unreadable, the task of %s cannot be checked", resume, path)
            return None
        if isinstance(payload, Mapping) and payload.get("format") == RESUME_FORMAT:
            fingerprint = dict(payload.get("fingerprint") or {})
            return {**fingerprint, "source": str(resume)}
    return None


#: Inference config ids set from a weights file's own description (network configuration, then training record)
NETWORK_CONFIG_KEYS = {"cond_channels": "num_contrasts"}  # MUDiff argument -> config id, where they differ
RECORD_KEYS = ("task", "slice_mode", "num_slices", "spatial_size")


def weights_description(path: str | os.PathLike) -> dict[str, Any] | None:
    """The ``{"format", "config", "record"}`` that weights at ``path`` carry, or None (e.g. converted published
    weights); a missing or unreadable file raises ``InferenceError``."""
    return description_of(generator_state(read_checkpoint(path), path))


def inference_settings(path: str | os.PathLike) -> dict[str, Any]:
    """Inference config ids -> values taken from the weights' own description: the network configuration (``nf``,
    ``ch_mult``, ..., ``image_size``) and what they were trained on (``task``, ``slice_mode``, ``num_slices``,
    ``spatial_size``). Empty for weights without a description (the config's own keys are then used), and for a
    file not there yet (a release before ``download_large_files``): loading the weights names the missing file."""
    if not os.path.exists(path):
        return {}
    described = weights_description(path)
    if described is None:
        return {}
    settings = {NETWORK_CONFIG_KEYS.get(k, k): v for k, v in described["config"].items()}
    settings.update({k: described["record"][k] for k in RECORD_KEYS if described["record"].get(k) is not None})
    return settings


def _task_signature(task: Any) -> tuple[tuple[str, ...], str] | None:
    try:
        t = resolve_task(task)
    except DataError:
        return None
    return tuple(t.inputs), t.target


def check_training_record(
    path: str | os.PathLike,
    task: Any = None,
    slice_mode: str | None = None,
    spatial_size: Any = None,
    state: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Compare the weights' training record (if any) with the inference settings; another task is an error."""
    record = training_record(path, state)
    if record is None:
        logger.info("%s: no training record (none in the file, no resume.pt beside it); task not checked", path)
        return None
    source = record.get("source")
    if task is not None and record.get("task") is not None:
        ours, theirs = _task_signature(task), _task_signature(record["task"])
        if ours is not None and theirs is not None and ours != theirs:
            raise InferenceError(
                f"{path} was trained for task {record['task']!r} ({list(theirs[0])} -> {theirs[1]}, recorded in "
                f"{source}) but inference is set to {task!r} ({list(ours[0])} -> {ours[1]}); set --task (config key "
                "'task') to the weights' task or use weights trained for this one"
            )
    for key, value in (("slice_mode", slice_mode), ("spatial_size", spatial_size)):
        if value is not None and record.get(key) is not None and str(record[key]) != str(value):
            logger.warning(
                "%s was trained with %s=%s (%s) but inference uses %s=%s; results may be poor",
                path,
                key,
                record[key],
                source,
                key,
                value,
            )
    return record


def load_generators(
    network: nn.Module,
    path: str | os.PathLike,
    task: Any = None,
    slice_mode: str | None = None,
    spatial_size: Any = None,
) -> dict[str, Any] | None:
    """Load ``MUDiff`` weights from ``path`` into ``network`` after checking keys, shapes and task.

    Returns the weights' training record (or None). Raises ``InferenceError`` for a missing/unreadable file, weights
    of another network configuration, or weights trained for another task.
    """
    net = unwrap(network)
    state = generator_state(read_checkpoint(path), path)
    expected = net.state_dict()
    problem = _mismatch_message(path, expected, state, "the weights")
    if problem:
        raise InferenceError(
            f"{problem}. {_config_hint(state)}Set the network keys (nf, ch_mult, num_res_blocks, attn_resolutions, "
            "nz, z_emb_dim, n_mlp) to the configuration that trained them (weights trained with this bundle carry it)"
        )
    record = check_training_record(path, task, slice_mode, spatial_size, state)
    try:
        net.load_state_dict(state, strict=True)
    except NetworkConfigError as exc:
        raise InferenceError(f"{path}: {exc}; set the network keys to the weights' configuration") from None
    return record


def load_critic(
    path: str | os.PathLike | None, critic: nn.Module, uncertainty: nn.Module | None = None
) -> tuple[bool, str]:
    """Load the critic (and the uncertainty projection, when stored) for attention maps.

    ``path`` is a training resume checkpoint (``resume.pt``: critic + its uncertainty projection) or a plain critic
    state dict (e.g. converted with ``scripts.convert_weights critic``; the projection then keeps its seeded init, as
    in the reference where it is never trained). Returns ``(loaded, reason)``: ``(False, why)`` when ``path`` is
    None or absent, so callers can skip the map with a clear message; a file that does not fit raises.
    """
    if path is None or str(path) == "":
        return False, "no critic checkpoint configured (critic_ckpt)"
    if not Path(path).is_file():
        return False, f"critic checkpoint {path} not found (the critic is saved in training's resume.pt)"
    obj = read_checkpoint(path, what="critic checkpoint")
    uncertainty_state = None
    if isinstance(obj, Mapping) and obj.get("format") == RESUME_FORMAT:
        objects = obj.get("objects") or {}
        if not _is_state_dict(objects.get("critic")):
            return False, f"{path} holds no critic weights"
        state = dict(objects["critic"])
        uncertainty_state = objects.get("uncertainty")
    elif _is_state_dict(obj):
        state = dict(obj)
    else:
        raise InferenceError(f"{path}: neither a resume checkpoint nor a critic state dict")
    target = unwrap(critic)
    problem = _mismatch_message(path, target.state_dict(), state, "the critic weights")
    if problem:
        raise InferenceError(f"{problem}; set ngf / critic_blocks / t_emb_dim to the training configuration")
    target.load_state_dict(state, strict=True)
    if uncertainty is not None and _is_state_dict(uncertainty_state):
        unc = unwrap(uncertainty)
        problem = _mismatch_message(path, unc.state_dict(), uncertainty_state, "the uncertainty projection")
        if problem:
            raise InferenceError(problem)
        unc.load_state_dict(uncertainty_state, strict=True)
    return True, f"critic loaded from {path}"


class MUDiffCheckpointLoader(CheckpointLoader):
    """``CheckpointLoader`` for ``models/model.pt`` that checks the weights before loading (see module docstring).

    Args:
        load_path: weights file.
        load_dict: ``{"model": network}`` (the MONAI convention; only the network is loaded).
        task, slice_mode, spatial_size: inference settings compared with the weights' training record.
        name, map_location: as ``CheckpointLoader``.
    """

    def __init__(
        self,
        load_path: str,
        load_dict: dict,
        task: Any = None,
        slice_mode: str | None = None,
        spatial_size: Any = None,
        name: str | None = None,
        map_location: dict | None = None,
    ) -> None:
        super().__init__(load_path=load_path, load_dict=load_dict, name=name, map_location=map_location, strict=True)
        if len(load_dict) != 1 or not isinstance(next(iter(load_dict.values())), nn.Module):
            raise InferenceError("MUDiffCheckpointLoader: load_dict must be {'model': network}")
        self.task = task
        self.slice_mode = slice_mode
        self.spatial_size = spatial_size

    def __call__(self, engine: Any) -> None:
        network = next(iter(self.load_dict.values()))
        load_generators(network, self.load_path, self.task, self.slice_mode, self.spatial_size)
        self.logger.info(f"MU-Diff weights loaded from {self.load_path}")
