"""Resume checkpoints: everything needed to continue a run bit-for-bit, written atomically each epoch."""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from scripts.networks.checkpoints import RESUME_FORMAT, CheckpointError, atomic_torch_save, read_checkpoint
from scripts.networks.wrappers import unwrap

logger = logging.getLogger(__name__)


class ResumeCheckpointError(CheckpointError):
    """A resume checkpoint exists but cannot continue this run (other configuration, unreadable file)."""


def rng_state() -> dict[str, Any]:
    """The python, numpy and torch (CPU and CUDA) RNG states as tensors and primitives (weights_only-safe)."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
        "numpy": {
            "name": np_name,
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    nps = state["numpy"]
    np.random.set_state(
        (nps["name"], nps["keys"].numpy().astype(np.uint32), nps["pos"], nps["has_gauss"], nps["gauss"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _optional(obj: Any) -> bool:
    """Objects a resume checkpoint may lack (added after checkpoints of this format were first written)."""
    return bool(getattr(obj, "optional", False))


def _distributed() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class BestMetricState:
    """A validation evaluator's best key metric and its epoch, as an object of the resume checkpoint.

    Why: MONAI's evaluator keeps the best value only in memory. A resumed run without it takes its first validated
    epoch for the best and lets ``BestModelSaver`` overwrite the best model with a worse one. Checkpoints written
    before this entry existed still load (it is optional); the best model is then rewritten at the next validation.
    """

    optional = True

    def __init__(self, evaluator: Engine) -> None:
        self.evaluator = evaluator

    def state_dict(self) -> dict[str, Any]:
        state = self.evaluator.state
        return {
            "best_metric": float(getattr(state, "best_metric", -1)),
            "best_metric_epoch": int(getattr(state, "best_metric_epoch", -1)),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.evaluator.state.best_metric = float(state["best_metric"])
        self.evaluator.state.best_metric_epoch = int(state["best_metric_epoch"])


class ResumeCheckpoint:
    """Save the whole training state at each epoch end and reload it when the same run starts again.

    ``objects`` maps names to things with ``state_dict``/``load_state_dict`` (networks, optimizers, schedulers,
    the EMA model); the engine it is attached to is added as ``trainer`` (its epoch and iteration). RNG states
    are added so that a resumed run draws the same numbers as an uninterrupted one. ``fingerprint`` (a JSON-able
    dict, e.g. the network hyper-parameters and the task) is stored too; a checkpoint written by another
    configuration is refused before training starts.

    Attach to the trainer: loading happens at ``STARTED`` (if the file exists), saving at ``EPOCH_COMPLETED``.
    Attach it after the validation handler so that the saved RNG state follows the epoch's validation.
    Under torch.distributed every process's RNG state is gathered and process 0 alone writes the file; each
    process loads the weights and its own RNG state back.
    """

    def __init__(
        self,
        path: str,
        objects: Mapping[str, Any],
        fingerprint: Mapping[str, Any] | None = None,
        save_interval: int = 1,
        enabled: bool = True,
    ) -> None:
        self.path = str(path)
        self.objects = {k: v for k, v in objects.items() if v is not None}
        self.fingerprint = json.loads(json.dumps(fingerprint or {}, sort_keys=True, default=str))
        self.save_interval = max(int(save_interval), 1)
        self.enabled = enabled

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            return
        self.objects.setdefault("trainer", engine)
        engine.add_event_handler(Events.STARTED, self.load)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), self.save)

    def _state_of(self, obj: Any) -> Any:
        return unwrap(obj).state_dict() if isinstance(obj, torch.nn.Module) else obj.state_dict()

    def save(self, engine: Engine) -> None:
        rank, world = _distributed()
        states = [rng_state()]
        if world > 1:
            states = [None] * world
            dist.all_gather_object(states, rng_state())
        if rank != 0:
            return
        payload = {
            "format": RESUME_FORMAT,
            "fingerprint": self.fingerprint,
            "objects": {name: self._state_of(obj) for name, obj in self.objects.items()},
            "rng": states,
        }
        atomic_torch_save(payload, self.path)
        engine.logger.info(f"resume checkpoint written: {self.path} (epoch {engine.state.epoch})")

    def check(self) -> dict[str, Any] | None:
        """Read the checkpoint (if any) and verify it belongs to this configuration; None when absent."""
        if not os.path.exists(self.path):
            return None
        try:
            payload = read_checkpoint(self.path, "resume checkpoint")
        except CheckpointError as exc:
            raise ResumeCheckpointError(f"{exc}; delete it or point `resume_ckpt` elsewhere") from None
        if not isinstance(payload, dict) or payload.get("format") != RESUME_FORMAT:
            raise ResumeCheckpointError(f"{self.path} is not a MU-Diff resume checkpoint")
        if payload["fingerprint"] != self.fingerprint:
            old, new = payload["fingerprint"], self.fingerprint
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            details = ", ".join(f"{k}: checkpoint {old.get(k)!r} vs config {new.get(k)!r}" for k in diff)
            raise ResumeCheckpointError(
                f"resume checkpoint {self.path} was written by another configuration ({details}). "
                "Delete it or point `resume_ckpt` elsewhere to start a new run."
            )
        missing = sorted(k for k in set(self.objects) - set(payload["objects"]) if not _optional(self.objects[k]))
        if missing:
            raise ResumeCheckpointError(f"resume checkpoint {self.path} lacks {missing}")
        return payload

    def load(self, engine: Engine) -> None:
        payload = self.check()
        if payload is None:
            return
        prior_max_epochs = engine.state.max_epochs
        for name, obj in self.objects.items():
            if name not in payload["objects"]:  # an optional entry that an older checkpoint lacks
                engine.logger.warning(f"{self.path} has no {name!r} entry (written by an older version); not restored")
                continue
            target = unwrap(obj) if isinstance(obj, torch.nn.Module) else obj
            target.load_state_dict(payload["objects"][name])
        if prior_max_epochs is not None:
            engine.state.max_epochs = prior_max_epochs
        rank, world = _distributed()
        states = payload["rng"]
        if len(states) == world:
            set_rng_state(states[rank])
        else:
            engine.logger.warning(
                f"{self.path} holds RNG states of {len(states)} processes, this run has {world}: "
                "weights and optimizers are restored, random draws are not"
            )
        engine.logger.info(f"resumed from {self.path} at epoch {engine.state.epoch}")
        done, wanted = engine.state.epoch, engine.state.max_epochs
        if wanted is not None and done >= wanted:
            logger.warning(
                f"{self.path} has already finished epoch {done} of {wanted} (--epochs), so there is nothing left to "
                "train. To train more, raise --epochs; to start fresh, use another --ckpt_dir or move resume.pt away"
            )


class BestModelSaver:
    """Write the evaluated network's plain state dict to ``path`` whenever the key metric improves.

    Attach to the validation evaluator (MONAI's evaluators track ``best_metric_epoch``). The file is a plain
    state dict (what ``ckpt_export``, the inference config and MONAI Label load), written atomically and only by
    process 0 under torch.distributed. Unlike ignite's saver it runs no collective, so it may be skipped freely.
    """

    def __init__(self, network: torch.nn.Module, path: str) -> None:
        self.network = network
        self.path = str(path)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if _distributed()[0] != 0 or getattr(engine.state, "best_metric_epoch", -1) != engine.state.epoch:
            return
        atomic_torch_save(unwrap(self.network).state_dict(), self.path)
        name = getattr(engine.state, "key_metric_name", None) or "metric"
        engine.logger.info(f"best {name} so far ({engine.state.best_metric:.4f}): model written to {self.path}")
