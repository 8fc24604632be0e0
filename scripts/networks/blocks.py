"""NCSN++ building blocks: the BigGAN++ residual block with time + latent (AdaGN) conditioning, self-attention."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .fir import FIRDownsample2d, FIRUpsample2d
from .layers import AdaptiveGroupNorm, can_update_in_place, default_num_groups, variance_scaling_

__all__ = ["ResnetBlockAdaGN", "SelfAttention2d"]


def _conv(in_ch: int, out_ch: int, kernel_size: int, init_scale: float = 1.0) -> nn.Conv2d:
    conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2)
    variance_scaling_(conv.weight, init_scale)
    nn.init.zeros_(conv.bias)
    return conv


class ResnetBlockAdaGN(nn.Module):
    """BigGAN++ residual block conditioned on a time embedding and a latent style (AdaGN).

    x (B, C_in, H, W), temb (B, temb_dim), zemb (B, zemb_dim) -> (B, C_out, H', W') with H' = 2H (``up``),
    H/2 (``down``) or H. Data flow: ``h = SiLU(norm1(x, zemb))``; optional FIR resampling of h and x;
    ``h = conv1(h) + time_proj(SiLU(temb))``; ``h = conv2(dropout(SiLU(norm2(h, zemb))))``; the skip is a 1x1
    conv when channels change or the block resamples; output ``(skip + h) / sqrt(2)`` (``skip_rescale``).
    ``conv2`` starts near zero (``init_scale`` 0 -> 1e-10 variance gain) so the block starts as the skip path.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        temb_dim: int = 256,
        zemb_dim: int = 256,
        up: bool = False,
        down: bool = False,
        dropout: float = 0.0,
        fir_kernel: Sequence[float] = (1, 3, 3, 1),
        skip_rescale: bool = True,
        init_scale: float = 0.0,
    ) -> None:
        super().__init__()
        if up and down:
            raise ValueError("a residual block cannot both up- and down-sample")
        out_channels = in_channels if out_channels is None else out_channels
        self.in_channels, self.out_channels = in_channels, out_channels
        self.act = nn.SiLU()
        self.norm1 = AdaptiveGroupNorm(in_channels, zemb_dim, default_num_groups(in_channels))
        self.resample: nn.Module | None
        if up:
            self.resample = FIRUpsample2d(in_channels, fir_kernel)
        elif down:
            self.resample = FIRDownsample2d(in_channels, fir_kernel)
        else:
            self.resample = None
        self.conv1 = _conv(in_channels, out_channels, 3)
        self.time_proj = nn.Linear(temb_dim, out_channels)
        variance_scaling_(self.time_proj.weight)
        nn.init.zeros_(self.time_proj.bias)
        self.norm2 = AdaptiveGroupNorm(out_channels, zemb_dim, default_num_groups(out_channels))
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _conv(out_channels, out_channels, 3, init_scale=init_scale)
        self.skip: nn.Module | None = (
            _conv(in_channels, out_channels, 1) if (in_channels != out_channels or up or down) else None
        )
        self.skip_scale = 1.0 / math.sqrt(2.0) if skip_rescale else 1.0

    def forward(self, x: torch.Tensor, temb: torch.Tensor, zemb: torch.Tensor) -> torch.Tensor:
        h = self._silu(self.norm1(x, zemb))
        if self.resample is not None:
            h = self.resample(h)
            x = self.resample(x)
        h = self.conv1(h)
        t = self.time_proj(self.act(temb))[:, :, None, None]
        h = h.add_(t) if can_update_in_place(h, t) else h + t
        h = self._silu(self.norm2(h, zemb))
        h = self.conv2(self.dropout(h))
        if self.skip is not None:
            x = self.skip(x)
        out = x + h
        return out.mul_(self.skip_scale) if not torch.is_grad_enabled() else out * self.skip_scale

    def _silu(self, h: torch.Tensor) -> torch.Tensor:
        """SiLU of a temporary: in place at inference (same values, one allocation less)."""
        return F.silu(h, inplace=True) if not torch.is_grad_enabled() else self.act(h)

    def extra_repr(self) -> str:
        mode = "up" if isinstance(self.resample, FIRUpsample2d) else "down" if self.resample is not None else "none"
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}, resample={mode}"


class SelfAttention2d(nn.Module):
    """Single-head full self-attention over all H*W positions with a residual connection.

    x (B, C, H, W) -> (B, C, H, W): ``h = GroupNorm(x)``; q, k, v are per-pixel linear maps of h;
    ``softmax(q k^T / sqrt(C)) v`` (via ``scaled_dot_product_attention``), then ``proj_out`` (initialised near
    zero); output ``(x + h) / sqrt(2)``.
    """

    def __init__(self, channels: int, skip_rescale: bool = True, init_scale: float = 0.0) -> None:
        super().__init__()
        self.channels = channels
        self.norm = nn.GroupNorm(default_num_groups(channels), channels, eps=1e-6)
        self.q = nn.Linear(channels, channels)
        self.k = nn.Linear(channels, channels)
        self.v = nn.Linear(channels, channels)
        self.proj_out = nn.Linear(channels, channels)
        for layer, scale in ((self.q, 0.1), (self.k, 0.1), (self.v, 0.1), (self.proj_out, init_scale)):
            variance_scaling_(layer.weight, scale)
            nn.init.zeros_(layer.bias)
        self.skip_scale = 1.0 / math.sqrt(2.0) if skip_rescale else 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, height, width = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        q = self.q(tokens).unsqueeze(1)
        k = self.k(tokens).unsqueeze(1)
        v = self.v(tokens).unsqueeze(1)
        h = F.scaled_dot_product_attention(q, k, v).squeeze(1)  # (B, HW, C)
        h = self.proj_out(h).transpose(1, 2).reshape(b, c, height, width)
        return (x + h) * self.skip_scale

    def extra_repr(self) -> str:
        return f"channels={self.channels}"
