"""Load MU-Diff generator (and optional critic) weights for inference, refusing anything that does not fit.

Why a loader of our own: ``load_state_dict`` on weights of another configuration ends in a long torch error, and a
model trained for another task loads without any error at all and then synthesizes the wrong contrast. Here:

- ``models/model.pt`` may be a plain ``MUDiff`` state dict (``g1.*``, ``g2.*``; what training and the published-weight
  converter write), a ``{"model": ...}`` / ``{"state_dict": ...}`` wrapper, or a training resume checkpoint
  (``format: mudiff-resume-1``; its ``network`` entry is used).
- Keys and shapes are compared with the configured network first; a mismatch raises ``CheckpointError`` naming the
  file, the first differing keys/shapes and what the checkpoint's sizes suggest (``nf``, ``nz``).
- Reading, unwrapping and the mismatch report are ``scripts.networks.checkpoints``'s, shared by every loader.
- The *training record* of the weights is checked against the inference settings: the record the weights carry in
  their state dict (``scripts.networks.described``), or for weights written before they described themselves the
  fingerprint of ``resume.pt`` in the same folder. Another task is an error; another slice size or mode a warning.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from monai.handlers import CheckpointLoader
from scripts.data import DataError, resolve_task
from scripts.diffusion.schedule import VPSchedule
from scripts.networks import checkpoints
from scripts.networks.checkpoints import RESUME_FORMAT, CheckpointError, is_state_dict, load_checked, mismatch_report
from scripts.networks.critic import TimeConditionedCritic
from scripts.networks.described import EXTRA_STATE_KEY, constructor_defaults, description_of
from scripts.networks.mudiff import MUDiff
from scripts.networks.wrappers import unwrap
from torch import nn

__all__ = [
    "RESUME_FORMAT",
    "CriticCheckpoint",
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

#: where to get weights, appended to "not found"
_WEIGHTS_ADVICE = (
    "train a model (configs/train.yaml) or convert the published weights (python -m scripts convert_weights ...), "
    "or point the config key ckpt_path / --weights at the file"
)


def read_checkpoint(path: str | os.PathLike, what: str = "weights") -> Any:
    """``torch.load(weights_only=True)`` on CPU; a missing or unreadable file raises ``CheckpointError``."""
    return checkpoints.read_checkpoint(path, what, _WEIGHTS_ADVICE if what == "weights" else "")


def generator_state(obj: Any, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The ``MUDiff`` state dict inside a loaded checkpoint object (plain, wrapped, or a resume checkpoint)."""
    return checkpoints.state_dict_in(obj, path, "network", "a MU-Diff state dict (g1.*, g2.* tensors)")


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


#: Inference config ids set from a weights file's training record when it has them: the data it was trained on and
#: the diffusion schedule it was trained with (sampling with another schedule gives wrong images without an error)
SCHEDULE_KEYS = ("num_timesteps", "beta_min", "beta_max")
RECORD_KEYS = ("task", "slice_mode", "num_slices", "spatial_size") + SCHEDULE_KEYS


def weights_description(path: str | os.PathLike) -> dict[str, Any] | None:
    """The ``{"format", "config", "record"}`` that weights at ``path`` carry, or None (e.g. converted published
    weights); a missing or unreadable file raises ``CheckpointError``."""
    return description_of(generator_state(read_checkpoint(path), path))


def inference_settings(path: str | os.PathLike) -> dict[str, Any]:
    """Inference config ids -> values for the weights at ``path``: the network configuration (the weights' own, or
    the published one, ``MUDiff``'s defaults, for weights without a description), the schedule (the record's, or
    ``VPSchedule``'s defaults), and the data settings the weights were trained on where their record has them
    (``task``, ``slice_mode``, ``num_slices``, ``spatial_size``). A file not there yet (a release before
    ``download_large_files``) gets the defaults: loading the weights names the missing file."""
    settings = {**MUDiff.default_config(), **{k: constructor_defaults(VPSchedule)[k] for k in SCHEDULE_KEYS}}
    described = weights_description(path) if os.path.exists(path) else None
    if described is None:
        return settings
    settings.update(described["config"])  # MUDiff arguments are the config ids
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
            asked = getattr(task, "name", task)
            raise CheckpointError(
                f"{path} was trained for task {record['task']!r} ({list(theirs[0])} -> {theirs[1]}, recorded in "
                f"{source}) but inference is set to {asked!r} ({list(ours[0])} -> {ours[1]}); set --task (config key "
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

    Returns the weights' training record (or None). Raises ``CheckpointError`` for a missing/unreadable file, weights
    of another network configuration, or weights trained for another task.
    """
    net = unwrap(network)
    state = generator_state(read_checkpoint(path), path)
    advice = (
        f"{_config_hint(state)}Set the network keys (nf, ch_mult, num_res_blocks, attn_resolutions, nz, z_emb_dim, "
        "n_mlp) to the configuration that trained them (weights trained with this bundle carry it)"
    )
    problem = mismatch_report(net.state_dict(), state)
    if problem:  # before the task check: weights of another network say so first
        raise CheckpointError(f"{path}: the weights do not fit the configured network: {problem}. {advice}")
    record = check_training_record(path, task, slice_mode, spatial_size, state)
    load_checked(net, state, path, "the weights", advice)
    return record


@dataclass(frozen=True)
class CriticCheckpoint:
    """The attention critic's checkpoint, read once: its configuration builds the critic, its weights fill it.

    ``path`` is training's ``resume.pt`` (critic + its uncertainty projection) or a plain critic state dict (e.g.
    converted with ``python -m scripts convert_weights critic``; the projection then keeps its seeded init, as in the
    reference where it is never trained). ``critic`` is None when there is nothing to load; ``reason`` says why, so
    the attention map can be skipped with a clear message. A file that exists but cannot be read raises.
    """

    path: str | None
    critic: dict[str, Any] | None = None
    uncertainty: dict[str, Any] | None = None
    reason: str = ""

    @classmethod
    def read(cls, path: str | os.PathLike | None) -> CriticCheckpoint:
        if path is None or str(path) == "":
            return cls(None, reason="no critic checkpoint configured (critic_ckpt)")
        path = str(path)
        if not Path(path).is_file():
            return cls(path, reason=f"critic checkpoint {path} not found (the critic is saved in training's resume.pt)")
        obj = read_checkpoint(path, what="critic checkpoint")
        uncertainty = None
        if isinstance(obj, Mapping) and obj.get("format") == RESUME_FORMAT:
            if not is_state_dict((obj.get("objects") or {}).get("critic")):
                return cls(path, reason=f"{path} holds no critic weights")
            uncertainty = obj["objects"].get("uncertainty")
        state = checkpoints.state_dict_in(obj, path, "critic", "a resume checkpoint or a critic state dict")
        return cls(path, state, uncertainty if is_state_dict(uncertainty) else None, f"critic loaded from {path}")

    def settings(self) -> dict[str, Any]:
        """Config ids of the critic (``ngf``, ``t_emb_dim``, ``critic_blocks``) as its weights describe them;
        ``TimeConditionedCritic``'s defaults when there are none or they carry no description."""
        config = TimeConditionedCritic.default_config()
        if self.critic is not None:
            config.update((description_of(self.critic) or {}).get("config") or {})
        return {"ngf": config["ngf"], "t_emb_dim": config["t_emb_dim"], "critic_blocks": config["num_blocks"]}


def load_critic(
    source: str | os.PathLike | CriticCheckpoint | None, critic: nn.Module, uncertainty: nn.Module | None = None
) -> tuple[bool, str]:
    """Load the critic (and the uncertainty projection, when stored) for attention maps.

    Returns ``(loaded, reason)``: ``(False, why)`` when there is no critic to load (see ``CriticCheckpoint``);
    weights that do not fit the critic raise ``CheckpointError``.
    """
    checkpoint = _critic_checkpoint(source)
    if checkpoint.critic is None:
        return False, checkpoint.reason
    advice = (
        "a critic file without a description needs ngf / critic_blocks / t_emb_dim set to its training configuration"
    )
    load_checked(unwrap(critic), checkpoint.critic, checkpoint.path, "the critic weights", advice)
    if uncertainty is not None and checkpoint.uncertainty is not None:
        load_checked(unwrap(uncertainty), checkpoint.uncertainty, checkpoint.path, "the uncertainty projection")
    return True, checkpoint.reason


def _critic_checkpoint(source: str | os.PathLike | CriticCheckpoint | None) -> CriticCheckpoint:
    return source if isinstance(source, CriticCheckpoint) else CriticCheckpoint.read(source)


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
            raise TypeError("MUDiffCheckpointLoader: load_dict must be {'model': network}")
        self.task = task
        self.slice_mode = slice_mode
        self.spatial_size = spatial_size

    def __call__(self, engine: Any) -> None:
        network = next(iter(self.load_dict.values()))
        load_generators(network, self.load_path, self.task, self.slice_mode, self.spatial_size)
        self.logger.info(f"MU-Diff weights loaded from {self.load_path}")
