"""MU-Diff networks in pure PyTorch: the two NCSN++ generators, the shared critic and the uncertainty map."""

from .critic import TimeConditionedCritic
from .generators import ContrastAwareGenerator, ContrastSpecificGenerator
from .mudiff import MUDiff
from .uncertainty import CriticUncertaintyMap

__all__ = [
    "MUDiff",
    "ContrastSpecificGenerator",
    "ContrastAwareGenerator",
    "TimeConditionedCritic",
    "CriticUncertaintyMap",
]
