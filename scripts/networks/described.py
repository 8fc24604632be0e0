"""Networks whose weights describe themselves: the constructor configuration and a record of the training.

Why: a bare state dict says neither which network configuration it needs nor what it was trained to do, so weights
copied away from their training folder could be used for the wrong task without any error. As a diffusers model
keeps its config beside its weights, a ``DescribedModule`` keeps ``{"format", "config", "record"}`` in its state
dict's ``_extra_state`` entry (PyTorch's own mechanism, so any ``load_state_dict`` reads it and ``torch.save`` /
``torch.load(weights_only=True)`` keep it). Files without the entry (converted published weights, older files)
still load.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
from scripts.errors import UserError
from torch import nn

__all__ = [
    "EXTRA_STATE_KEY",
    "DescribedModule",
    "NetworkConfigError",
    "constructor_defaults",
    "description_of",
    "half_precision",
    "plain_config",
]

#: The state-dict entry of a module's extra state (``torch.nn.Module.get_extra_state``)
EXTRA_STATE_KEY = "_extra_state"


class NetworkConfigError(UserError, ValueError):
    """Weights recorded for another network configuration than the module they are loaded into."""


def plain_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Tuples as lists, so a configuration compares equal to itself after a round trip through a file."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}


def constructor_defaults(cls: type) -> dict[str, Any]:
    """A class's keyword defaults (tuples as lists), read from its ``__init__`` signature."""
    params = inspect.signature(cls.__init__).parameters.values()
    return plain_config({p.name: p.default for p in params if p.default is not inspect.Parameter.empty})


class DescribedModule(nn.Module):
    """Base class: subclasses call ``_describe(config, record)`` in ``__init__`` and set ``weights_format``.

    ``config``: the constructor arguments (compared on load: weights made for another configuration raise
    ``NetworkConfigError`` naming each difference). ``record``: what the weights were trained for and how (task,
    slice mode, size, provenance); it is loaded with the weights and written with them.
    """

    weights_format: str = ""

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        """The constructor's defaults. Why: they are the one home of the published configuration, which weights
        without a description (converted published weights) are built with."""
        return {k: v for k, v in constructor_defaults(cls).items() if k != "record"}

    def _describe(self, config: Mapping[str, Any], record: Mapping[str, Any] | None) -> None:
        self.config = plain_config(config)
        self.record: dict[str, Any] = dict(record or {})

    def get_extra_state(self) -> dict[str, Any]:
        return {"format": self.weights_format, "config": dict(self.config), "record": dict(self.record)}

    def set_extra_state(self, state: Any) -> None:
        if not isinstance(state, Mapping) or state.get("format") != self.weights_format:
            found = state.get("format") if isinstance(state, Mapping) else type(state).__name__
            raise NetworkConfigError(f"weights of kind {found!r}, expected {self.weights_format!r}")
        theirs = plain_config(state.get("config") or {})
        differ = sorted(k for k in self.config.keys() | theirs.keys() if theirs.get(k) != self.config.get(k))
        if differ:
            listed = ", ".join(f"{k}={theirs.get(k)!r} (network: {self.config.get(k)!r})" for k in differ)
            raise NetworkConfigError(f"the weights were made for another network configuration: {listed}")
        self.record = dict(state.get("record") or {})

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if prefix + EXTRA_STATE_KEY in missing_keys:  # weights without a description load as they are
            missing_keys.remove(prefix + EXTRA_STATE_KEY)


def description_of(state: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``{"format", "config", "record"}`` a state dict carries, or None (a file without one)."""
    own = state.get(EXTRA_STATE_KEY)
    return dict(own) if isinstance(own, Mapping) and "config" in own else None


def half_precision(state: Mapping[str, Any]) -> dict[str, Any]:
    """Floating-point tensors as float16 (half the file; ``load_state_dict`` casts them back to the network's
    dtype), everything else unchanged. For shipped weights, whose outputs change by about 1e-3 (docs/README.md)."""
    out: dict[str, Any] = {}
    for key, value in state.items():
        is_float = isinstance(value, torch.Tensor) and value.is_floating_point()
        out[key] = value.detach().to(torch.float16).clone() if is_float else value
    return out
