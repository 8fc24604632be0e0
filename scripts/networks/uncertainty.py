"""The critic-derived "uncertainty" map M (the reference's ``att_conv`` in ``train.py``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import variance_scaling_

__all__ = ["CriticUncertaintyMap"]


class CriticUncertaintyMap(nn.Module):
    """``M = upsample(sigmoid(conv1x1(features)))``: critic features (B, C, h, w) -> map (B, 1, H, W) in (0, 1).

    In the reference this 1x1 conv is never optimised (not in any optimizer), so M is a fixed random linear
    projection of the critic's features. By default (``trainable=False``) the projection is a pair of
    persistent buffers ``weight`` (1, C, 1, 1) and ``bias`` (1,), initialised with variance scaling from
    ``seed`` (identical on every rank, saved with the trainer's checkpoint); ``trainable=True`` makes them
    parameters instead (a documented deviation). Upsampling is bilinear with ``align_corners=False``.
    """

    def __init__(self, in_channels: int = 512, trainable: bool = False, seed: int | None = 0) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.trainable = trainable
        weight = torch.empty(1, in_channels, 1, 1)
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        variance_scaling_(weight, 1.0, generator=generator)
        bias = torch.zeros(1)
        if trainable:
            self.weight = nn.Parameter(weight)
            self.bias = nn.Parameter(bias)
        else:
            self.register_buffer("weight", weight)
            self.register_buffer("bias", bias)

    def forward(self, features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        m = torch.sigmoid(F.conv2d(features, self.weight.to(features.dtype), self.bias.to(features.dtype)))
        return F.interpolate(m, size=size, mode="bilinear", align_corners=False)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, trainable={self.trainable}"
