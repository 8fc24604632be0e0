"""MU-Diff training: loss terms, the Ignite trainer, resume checkpoints and handlers."""

from scripts.networks.wrappers import unwrap

from . import checkpoint, handlers, losses, modules, preflight, trainer
from .modules import GeneratorPair
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
