"""Small Ignite handlers the bundle configs attach: progress, learning rates, image grids, scheduler steps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar
from scripts.networks.wrappers import unwrap
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


class TrainingProgressBar:
    """An Ignite tqdm bar over the epoch's iterations showing the named scalar outputs of the trainer."""

    def __init__(self, output_keys: Sequence[str] = ("g_loss", "d_loss"), persist: bool = False) -> None:
        self.output_keys = list(output_keys)
        self.persist = persist

    def attach(self, engine: Engine) -> None:
        keys = self.output_keys

        def scalars(out: Any) -> dict[str, float]:
            first = out[0] if isinstance(out, list) else out  # decollated output repeats the scalars per sample
            return {k: first[k] for k in keys if k in first}

        ProgressBar(persist=self.persist).attach(engine, output_transform=scalars)


class EpochSchedulerStepper:
    """Steps learning-rate schedulers once per epoch (the reference's cosine annealing is per epoch)."""

    def __init__(self, schedulers: Sequence[LRScheduler]) -> None:
        self.schedulers = list(schedulers)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        for scheduler in self.schedulers:
            scheduler.step()


class LearningRateLogger:
    """Writes each optimizer's learning rate to TensorBoard (and the log) at every epoch start."""

    def __init__(self, optimizers: Mapping[str, Optimizer], summary_writer: Any = None, log_dir: str = "./runs"):
        self.optimizers = dict(optimizers)
        self.summary_writer = summary_writer
        self.log_dir = log_dir

    def attach(self, engine: Engine) -> None:
        if self.summary_writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.summary_writer = SummaryWriter(log_dir=self.log_dir)
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        for name, optimizer in self.optimizers.items():
            lr = optimizer.param_groups[0]["lr"]
            self.summary_writer.add_scalar(f"lr/{name}", lr, engine.state.epoch)
            engine.logger.info(f"epoch {engine.state.epoch}: lr_{name} = {lr:.3g}")


class ImageGridLogger:
    """Logs a TensorBoard grid of the conditioning inputs, the synthesis and the target from an engine's output.

    Attach to the validation evaluator: at each run's end it takes the last batch's first ``max_rows`` slices,
    maps [-1,1] (or [0,1]) intensities to [0,1] and writes one image whose columns are inputs..., pred, label.
    The step is the engine's epoch: MONAI's evaluators run with the trainer's epoch, so grids line up with curves.
    """

    def __init__(
        self,
        summary_writer: Any = None,
        log_dir: str = "./runs",
        tag: str = "validation/inputs_synthesis_target",
        max_rows: int = 4,
    ) -> None:
        self.summary_writer = summary_writer
        self.log_dir = log_dir
        self.tag = tag
        self.max_rows = max_rows

    def attach(self, engine: Engine) -> None:
        if self.summary_writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.summary_writer = SummaryWriter(log_dir=self.log_dir)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._keep)
        engine.add_event_handler(Events.COMPLETED, self)

    def _keep(self, engine: Engine) -> None:
        self._last = engine.state.output, engine.state.batch

    @staticmethod
    def _to_unit(x: torch.Tensor) -> torch.Tensor:
        x = x.detach().float().cpu()
        return ((x + 1) / 2 if x.min() < 0 else x).clamp(0, 1)

    def __call__(self, engine: Engine) -> None:
        if not hasattr(self, "_last"):
            return
        output, batch = self._last
        source = output if isinstance(output, Mapping) else batch
        if isinstance(output, list):  # decollated output: a list of per-sample dicts
            source = {k: torch.stack([o[k] for o in output]) for k in ("image", "pred", "label")}
        image, pred, label = (torch.as_tensor(source[k])[: self.max_rows] for k in ("image", "pred", "label"))
        columns = [self._to_unit(image[:, c : c + 1]) for c in range(image.shape[1])]
        columns += [self._to_unit(pred), self._to_unit(label)]
        rows = [torch.cat([col[r, 0] for col in columns], dim=1) for r in range(image.shape[0])]
        grid = torch.cat(rows, dim=0)[None]
        self.summary_writer.add_image(self.tag, grid, engine.state.epoch)


class GeneratorEMA:
    """Optional exponential moving average of the generators (the reference's ``--use_ema``, off when published).

    Always present in the config so other keys can ask for ``eval_network``: the EMA copy when enabled, else the
    trained network itself. ``decay`` is the reference's ``ema_decay`` (ignite's momentum is ``1 - decay``).
    Its state (the EMA weights) goes into the resume checkpoint.
    """

    def __init__(self, network: torch.nn.Module, decay: float = 0.999, enabled: bool = False) -> None:
        from ignite.handlers import EMAHandler

        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {decay}")
        self.network = network
        self.enabled = enabled
        self.handler = EMAHandler(network, momentum=1.0 - decay) if enabled else None

    @property
    def eval_network(self) -> torch.nn.Module:
        return self.handler.ema_model if self.handler is not None else self.network

    def attach(self, engine: Engine) -> None:
        if self.handler is not None:
            engine.add_event_handler(Events.STARTED, self.sync_with_network)
            self.handler.attach(engine)

    def sync_with_network(self, engine: Engine) -> None:
        """At the start of a fresh run, restart the average from the network's current weights.

        The copy is made when the config is parsed; under torch.distributed that is before DDP broadcasts rank 0's
        weights, so without this every other rank would average from its own initialisation. A resumed run
        (iteration > 0, or the resume checkpoint loaded after this) keeps the saved average.
        """
        if self.handler is not None and engine.state.iteration == 0:
            self.handler.ema_model.load_state_dict(unwrap(self.network).state_dict())

    def state_dict(self) -> dict[str, Any]:
        return self.handler.ema_model.state_dict() if self.handler is not None else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self.handler is not None:
            self.handler.ema_model.load_state_dict(state)


class GradientClipper:
    """Clips the gradient norm of ``parameters`` after each generator backward (``max_norm`` None: off)."""

    def __init__(self, parameters: Any, max_norm: float | None = None) -> None:
        self.parameters = [p for p in parameters if p.requires_grad]
        self.max_norm = max_norm

    def attach(self, engine: Engine) -> None:
        from monai.engines.utils import IterationEvents

        if self.max_norm is not None:
            engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        torch.nn.utils.clip_grad_norm_(self.parameters, float(self.max_norm))
