"""The one place that assembles inference: checked weights on a device, the subject pipeline, a per-slice predictor,
the restore onto the subject's grid and the writer.

Why one class: the command line, the MONAI Label service and the U-Net baseline used to build the same chain each
in its own code (three writers with three header rules, two ``synthesize_subject`` with their arguments in
different orders). Now each is a few lines around a ``Synthesizer``:

- ``Synthesizer.from_config(parser)``: MU-Diff from ``configs/inference.yaml`` (plus overlays and overrides): the
  network prepared with the config's speed switches, weights checked against it and its task, the ``VolumeInferer``;
- ``Synthesizer(network, ..., predictor=RegressionInferer(...))``: any per-slice predictor, e.g. the U-Net baseline.

The bundle's own evaluator (``configs/inference.yaml``) wires the same pieces (the pipeline, ``VolumeInferer``,
``restore_synthesis``, ``write_synthesis``) as MONAI engine components.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.inferers import Inferer
from scripts.cli_args import parse_int
from scripts.data import DataError
from scripts.networks.optimize import prepare_for_inference
from torch import nn

from .errors import InferenceError
from .stack import StackSynthesis, VolumeInferer
from .volume import VolumeSynthesis, synthesize_subject
from .weights import load_generators
from .writer import check_outputs_are_not_inputs, ensure_output_dir, write_synthesis

__all__ = ["RegressionInferer", "Synthesizer", "check_items", "config_components"]

logger = logging.getLogger(__name__)


def check_items(items: Sequence[Mapping[str, Any]], inputs: Sequence[str]) -> None:
    """Refuse, before any synthesis, items that lack an input contrast or whose files do not exist."""
    if not items:
        raise DataError("no subjects to synthesize")
    seen: set[str] = set()
    for index, item in enumerate(items):
        sid = str(item.get("subject") or "")
        if not sid:
            raise DataError(f"item #{index} has no 'subject' id (it names the output file)")
        if sid in seen:
            raise DataError(f"subject {sid!r} is listed twice; each subject names one output file")
        seen.add(sid)
        missing = [c for c in inputs if not item.get(c)]
        if missing:
            present = sorted(k for k in item if k != "subject")
            raise DataError(f"subject {sid}: missing input contrast(s) {missing} (entries present: {present})")
        for c in inputs:
            if not os.path.isfile(str(item[c])):
                raise DataError(f"subject {sid}: {item[c]} ({c!r}) not found")


class RegressionInferer(Inferer):
    """A deterministic per-slice predictor with ``VolumeInferer``'s interface: ``network(cond) -> (B, 1, H, W)`` in
    [-1, 1], batch by batch on the network's device (the U-Net baseline)."""

    def __init__(self, batch_size: int = 16) -> None:
        super().__init__()
        self.batch_size = parse_int(batch_size, "batch_size", InferenceError, minimum=1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(batch_size={self.batch_size})"

    @torch.no_grad()
    def __call__(
        self, inputs: torch.Tensor | np.ndarray, network: Any, slice_ids: Sequence[int] | None = None
    ) -> StackSynthesis:
        stack = torch.as_tensor(np.asarray(inputs) if isinstance(inputs, np.ndarray) else inputs, dtype=torch.float32)
        if stack.ndim != 4:
            raise InferenceError(f"expected a slice stack (N, C, H, W), got shape {tuple(stack.shape)}")
        device = next(network.parameters()).device
        parts = [
            network(stack[i : i + self.batch_size].to(device)).float().cpu()
            for i in range(0, len(stack), self.batch_size)
        ]
        mean = torch.cat(parts) if parts else torch.zeros((0, 1, *stack.shape[-2:]))
        return StackSynthesis(mean, None, None, 1)


def config_components(parser: Any) -> dict[str, Any]:
    """``Synthesizer`` arguments for MU-Diff from ``configs/inference.yaml`` (a ``ConfigParser`` with overrides)."""
    task = parser.get_parsed_content("task_def")
    slice_mode = parser.get_parsed_content("slice_mode")
    spatial_size = parser.get_parsed_content("spatial_size")
    predictor = parser.get_parsed_content("inferer")
    if not isinstance(predictor, VolumeInferer):
        raise InferenceError(f"config key 'inferer' must be a VolumeInferer, got {type(predictor).__name__}")
    switches = {k: parser.get_parsed_content(k) for k in ("channels_last", "compile", "compile_mode")}

    def load(network: nn.Module, weights: str) -> Mapping[str, Any] | None:
        return load_generators(network, weights, task, slice_mode, spatial_size)

    return {
        "network": parser.get_parsed_content("network_def"),
        "transform": parser.get_parsed_content("preprocessing"),
        "predictor": predictor,
        "target": task.target,
        "inputs": task.inputs,
        "weights": str(parser.get_parsed_content("ckpt_path")),
        "load_weights": load,
        "prepare": lambda net: prepare_for_inference(net, **switches),
        "mask_background": bool(parser.get_parsed_content("mask_background")),
        "provenance": dict(parser.get_parsed_content("provenance")),
    }


class Synthesizer:
    """A network with checked weights, ready to synthesize subjects on any device.

    Args:
        network: the network template (weights are loaded into per-device copies; with ``load_weights`` None it is
            used as it is, already loaded).
        transform: ``build_volume_transforms(..., with_target=False)``: the subject pipeline the network was
            trained with.
        predictor: ``VolumeInferer`` (MU-Diff) or ``RegressionInferer`` (deterministic networks).
        target: the synthesized contrast (names the output file).
        inputs: the input contrasts a subject must have (default: the pipeline's).
        weights: the weights file (reloaded when it changes on disk).
        load_weights: ``load_weights(network, weights) -> training record or None``, raising on weights that do not
            fit (``load_generators`` for MU-Diff).
        prepare: applied to each per-device copy after loading (speed switches, eval mode).
        mask_background: zero the output outside the inputs' brain.
        provenance: settings recorded in every written file's header.
    """

    def __init__(
        self,
        network: nn.Module,
        transform: Callable[[dict], dict],
        predictor: Any,
        target: str,
        inputs: Sequence[str] | None = None,
        weights: str | os.PathLike | None = None,
        load_weights: Callable[[nn.Module, str], Mapping[str, Any] | None] | None = None,
        prepare: Callable[[nn.Module], nn.Module] | None = None,
        mask_background: bool = True,
        provenance: Mapping[str, Any] | None = None,
    ) -> None:
        from .volume import pipeline_inputs

        self.template = network
        self.transform = transform
        self.predictor = predictor
        self.target = str(target)
        self.inputs = tuple(inputs) if inputs is not None else tuple(pipeline_inputs(transform))
        self.weights = None if weights is None else str(weights)
        self._load_weights = load_weights
        self._prepare = prepare
        self.mask_background = bool(mask_background)
        self.provenance = dict(provenance or {})
        self.record: Mapping[str, Any] | None = None
        self._cache: dict[str, tuple[nn.Module, Any, float]] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, parser: Any) -> Synthesizer:
        """MU-Diff as ``configs/inference.yaml`` (a parsed ``ConfigParser`` with any overrides) describes it."""
        return cls(**config_components(parser))

    def networks(self, device: str | torch.device = "cpu") -> tuple[nn.Module, Any]:
        """(network, attention critic or None) on ``device``; loaded once per device and again when the weights
        file changes (MONAI Label keeps a service running while weights are retrained)."""
        key = str(torch.device(device))
        with self._lock:
            mtime = os.stat(self.weights).st_mtime if self.weights and os.path.isfile(self.weights) else -1.0
            cached = self._cache.get(key)
            if cached is not None and cached[2] == mtime:
                return cached[0], cached[1]
            if self._load_weights is None:
                network = self.template
            else:
                network = copy.deepcopy(self.template)
                self.record = self._load_weights(network, self.weights)
            network = network.to(key).eval()
            if self._prepare is not None:
                network = self._prepare(network)
            attention = getattr(self.predictor, "attention", None)
            if attention is not None:
                attention = copy.deepcopy(attention).to(key).eval()
            self._cache[key] = (network, attention, mtime)
            logger.info("weights %s loaded on %s", self.weights or "(given)", key)
            return network, attention

    def clear(self) -> None:
        """Drop the per-device networks (to free memory)."""
        with self._lock:
            self._cache.clear()

    def predictor_for(self, attention: Any, num_samples: int | None = None, seed: Any = "default") -> Any:
        """The predictor for one call: the configured one, or (MU-Diff) with another ``num_samples`` / ``seed``
        and the device's attention critic."""
        base = self.predictor
        if not isinstance(base, VolumeInferer):
            return base
        samples = base.num_samples if num_samples is None else num_samples
        return VolumeInferer(
            base.sampler, base.batch_size, samples, base.seed if seed == "default" else seed, attention
        )

    def synthesize(
        self,
        item: Mapping[str, Any],
        device: str | torch.device = "cpu",
        num_samples: int | None = None,
        seed: Any = "default",
    ) -> VolumeSynthesis:
        """Synthesize the target for one datalist item (input paths + ``subject``) on the inputs' own grid."""
        check_items([item], self.inputs)
        return self._synthesize(item, device, num_samples, seed)

    def _synthesize(
        self, item: Mapping[str, Any], device: str | torch.device, num_samples: int | None = None, seed: Any = "default"
    ) -> VolumeSynthesis:
        network, attention = self.networks(device)
        predictor = self.predictor_for(attention, num_samples, seed)
        return synthesize_subject(item, self.transform, network, predictor, self.target, self.mask_background)

    def write(
        self, result: VolumeSynthesis, out_dir: str | os.PathLike, extra: Mapping[str, Any] | None = None
    ) -> dict[str, Path]:
        """Write ``<subject>_syn_<target>.nii.gz`` (+ ``_unc_``, ``attention/``) atomically, never over an input."""
        provenance = {**self.provenance, **dict(extra or {})}
        if self.record is not None and self.record.get("source"):
            provenance.setdefault("training_record", self.record.get("source"))
        return write_synthesis(result, out_dir, provenance)

    def run(
        self, items: Sequence[Mapping[str, Any]], out_dir: str | os.PathLike, device: str | torch.device = "cpu"
    ) -> Iterator[tuple[VolumeSynthesis, dict[str, Path]]]:
        """Check every item, the output folder and the weights before the first subject (a mistake stops the run
        before any work), then synthesize and write each subject in turn, yielding ``(result, written files)``."""
        check_items(items, self.inputs)
        ensure_output_dir(out_dir)
        check_outputs_are_not_inputs(out_dir, items, self.target)
        self.networks(device)  # weights that do not fit (or another task) stop the run here
        return ((result, self.write(result, out_dir)) for result in (self._synthesize(it, device) for it in items))
