"""The deterministic regression baseline: MONAI's 2D U-Net mapping the three conditioning contrasts to the target.

It sees exactly the tensors MU-Diff sees (``cond`` (B, 3, H, W) in [-1, 1], background -1) and predicts the target
slice directly, with no noise and no latent: the same input always gives the same output. A synthesis model that
does not beat this (and the copy baseline in ``scripts/evaluation/copy_baseline.py``) has not learned anything the
adversarial diffusion machinery is needed for.

Output range. The last layer is followed by ``tanh``, as the MU-Diff generators are, so predictions lie in (-1, 1)
during training too. A hard clamp would zero the gradient of every pixel past the bound, and the background
(exactly -1, most of each slice) would sit on that bound; tanh keeps a gradient there and approaches -1
asymptotically (about 2e-3 away after the demo training, i.e. below 1e-3 on the [0, 1] scale).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.networks.nets import UNet
from scripts.networks import checkpoints
from scripts.networks.checkpoints import CheckpointError, load_checked, mismatch_report
from scripts.networks.described import DescribedModule, description_of
from torch import nn

__all__ = ["CheckpointError", "RegressionUNet", "load_unet", "read_state_dict"]


class RegressionUNet(DescribedModule):
    """``monai.networks.nets.UNet`` (2D, ``in_channels`` -> 1) followed by ``tanh``.

    Args:
        in_channels: conditioning contrasts stacked as channels (3 for every paper task).
        out_channels: synthesized contrasts (1).
        channels: feature channels per level; ``len(channels) - 1`` down-samplings.
        strides: stride of each down-sampling (``len(channels) - 1`` entries); H and W must be divisible by
            their product (16 for the default 4 levels of stride 2).
        num_res_units: residual units per block (MONAI ``UNet`` argument).
        norm: normalisation layer name (MONAI ``Norm``).
        act: activation layer name (MONAI ``Act``).
        dropout: dropout probability inside the blocks.

    ``forward(cond: (B, in_channels, H, W)) -> (B, out_channels, H, W)`` in (-1, 1).
    The state dict keys are ``unet.*`` (MONAI's own names below that prefix); the weights describe themselves
    (``DescribedModule``: the arguments above and ``record``, what they were trained for).
    """

    weights_format = "unet-weights/1"

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 1,
        channels: Sequence[int] = (32, 64, 128, 256, 512),
        strides: Sequence[int] = (2, 2, 2, 2),
        num_res_units: int = 2,
        norm: str = "batch",
        act: str = "prelu",
        dropout: float = 0.0,
        record: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        channels, strides = tuple(int(c) for c in channels), tuple(int(s) for s in strides)
        if len(channels) < 2 or len(strides) != len(channels) - 1:
            raise ValueError(
                f"RegressionUNet: need at least 2 levels and len(strides) == len(channels) - 1, "
                f"got channels={list(channels)}, strides={list(strides)}"
            )
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.channels, self.strides = channels, strides
        self.num_res_units = int(num_res_units)
        self.unet = UNet(
            spatial_dims=2,
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            channels=channels,
            strides=strides,
            num_res_units=self.num_res_units,
            norm=norm,
            act=act,
            dropout=dropout,
        )
        self.output_act = nn.Tanh()
        config = {"in_channels": self.in_channels, "out_channels": self.out_channels, "channels": channels}
        config.update(strides=strides, num_res_units=self.num_res_units, norm=norm, act=act, dropout=dropout)
        self._describe(config, record)

    @property
    def size_divisor(self) -> int:
        """H and W must be multiples of this (the product of the strides)."""
        out = 1
        for s in self.strides:
            out *= s
        return out

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        if cond.ndim != 4 or cond.shape[1] != self.in_channels:
            raise ValueError(f"RegressionUNet expects (B, {self.in_channels}, H, W), got {tuple(cond.shape)}")
        h, w = cond.shape[-2:]
        if h % self.size_divisor or w % self.size_divisor:
            raise ValueError(f"RegressionUNet: H and W must be multiples of {self.size_divisor}, got {h}x{w}")
        return self.output_act(self.unet(cond))

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, channels={list(self.channels)}, "
            f"strides={list(self.strides)}, num_res_units={self.num_res_units}"
        )


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The U-Net's state dict in ``path`` (plain, or MONAI's ``{"model": state_dict}``); ``CheckpointError`` else."""
    return checkpoints.read_state_dict(
        path,
        what="U-Net checkpoint",
        expected="the U-Net weights saved by configs/train_unet.yaml (a plain state dict)",
        advice="train one with configs/train_unet.yaml",
    )


def load_unet(
    checkpoint: str | os.PathLike,
    network: RegressionUNet | None = None,
    device: str | torch.device = "cpu",
    **network_kwargs: Any,
) -> RegressionUNet:
    """Build (or take) a ``RegressionUNet`` and load ``checkpoint`` into it strictly; returns it in eval mode.

    ``network_kwargs`` are ``RegressionUNet`` arguments; they must describe the architecture the checkpoint was
    trained with (the ``network_def`` of the training config), otherwise a ``CheckpointError`` says what differs.
    Without a network and arguments, weights that describe themselves build their own network.
    """
    state = read_state_dict(checkpoint)
    described = description_of(state)
    if network is None and not network_kwargs and described is not None:
        network_kwargs = dict(described["config"])
    net = network if network is not None else RegressionUNet(**network_kwargs)
    advice = "Pass the channels/strides/num_res_units the checkpoint was trained with"
    if any(str(k).startswith(("g1.", "g2.")) for k in state) and mismatch_report(net.state_dict(), state):
        advice = "It looks like a MU-Diff generator checkpoint (keys g1.*/g2.*), not a U-Net"
    load_checked(net, state, checkpoint, "the weights", advice)
    return net.to(device).eval()
