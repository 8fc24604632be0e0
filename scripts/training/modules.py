"""Training-only module views: the two generators as one forward, so DDP can wrap exactly what is trained."""

from __future__ import annotations

import torch
from torch import nn


class GeneratorPair(nn.Module):
    """Runs G1 then G2 (G2 conditioned on G1's x0 estimate, not detached) in one ``forward``.

    It shares its sub-modules with the bundle's ``MUDiff`` network, so saving ``MUDiff`` saves what was trained,
    while DistributedDataParallel can wrap this module: DDP only synchronises gradients of work done in
    ``forward``, and ``MUDiff.forward`` is the single-tensor export path that returns the average.
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.g1 = network.g1
        self.g2 = network.g2

    def forward(
        self, x_tp1: torch.Tensor, cond: torch.Tensor, t: torch.Tensor, z: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,1,H,W), (B,3,H,W), (B,), (B,nz) -> the x0 estimates of G1 and G2, each (B,1,H,W)."""
        x0_g1 = self.g1(x_tp1, cond, t, z)
        x0_g2 = self.g2(x_tp1, cond, t, z, x0_g1)
        return x0_g1, x0_g2
