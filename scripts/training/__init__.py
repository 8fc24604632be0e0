"""MU-Diff training: loss terms, the Ignite trainer, resume checkpoints and handlers."""

from . import checkpoint, handlers, losses, modules, preflight, trainer
from .modules import GeneratorPair, unwrap
from .trainer import MUDiffTrainer, NonFiniteLossError

__all__ = [
    "GeneratorPair",
    "MUDiffTrainer",
    "NonFiniteLossError",
    "checkpoint",
    "handlers",
    "losses",
    "modules",
    "preflight",
    "trainer",
    "unwrap",
]
