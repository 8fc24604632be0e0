"""FIR (finite impulse response) resampling by a factor of 2, as depthwise convolutions in pure PyTorch.

The reference uses StyleGAN2's ``upfirdn2d`` CUDA extension with the kernel ``outer(k, k) / sum`` for
``k = [1, 3, 3, 1]``. The three ops it needs are exactly expressible as (transposed) depthwise convolutions:

* down-sampling: blur with padding ``K/2 - 1`` then keep every second pixel (one strided conv);
* up-sampling: zero insertion, then blur with gain 4 (one strided transposed conv);
* strided convolution with FIR pre-filter (the input pyramid): blur with padding ``K/2``, then a 3x3 conv
  with stride 2.

Kernels are non-persistent buffers sized for the channel count, so they follow ``.to(device/dtype)``, are not
recreated per call and never appear in a state dict.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import variance_scaling_

__all__ = ["fir_kernel_2d", "FIRDownsample2d", "FIRUpsample2d", "FIRConvDownsample2d"]


def fir_kernel_2d(taps: Sequence[float]) -> torch.Tensor:
    """Separable 2-D FIR kernel ``outer(taps, taps) / sum`` (K, K), float32; taps must have even length >= 2."""
    values = [float(v) for v in taps]
    if len(values) < 2 or len(values) % 2 != 0:
        raise ValueError(f"fir_kernel must be a 1-D sequence of even length >= 2, got {list(taps)}")
    total = sum(values) ** 2
    if total == 0:
        raise ValueError(f"fir_kernel {list(taps)} sums to zero and cannot be normalised")
    return torch.tensor([[a * b / total for b in values] for a in values], dtype=torch.float32)


def _depthwise(kernel: torch.Tensor, channels: int) -> torch.Tensor:
    """Repeat a (K, K) kernel into a depthwise conv weight (channels, 1, K, K)."""
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    return kernel[None, None].repeat(channels, 1, 1, 1)


class FIRDownsample2d(nn.Module):
    """FIR blur then decimate by 2: (B, C, H, W) -> (B, C, H/2, W/2) (H, W even).

    Equals the reference's ``downsample_2d(x, k, factor=2)`` (pad ``(K-2)/2`` on each side, true convolution,
    stride 2).
    """

    def __init__(self, channels: int, fir_kernel: Sequence[float] = (1, 3, 3, 1)) -> None:
        super().__init__()
        k = fir_kernel_2d(fir_kernel)
        self.channels = channels
        self.padding = (k.shape[0] - 2) // 2
        # conv2d is a correlation; flip so that the op is the true convolution upfirdn2d computes.
        self.register_buffer("kernel", _depthwise(torch.flip(k, [0, 1]), channels), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.kernel.to(x.dtype), stride=2, padding=self.padding, groups=self.channels)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel_size={self.kernel.shape[-1]}"


class FIRUpsample2d(nn.Module):
    """Zero-insertion up-sampling by 2 followed by an FIR blur with gain 4: (B, C, H, W) -> (B, C, 2H, 2W).

    Equals the reference's ``upsample_2d(x, k, factor=2)``; computed as one depthwise transposed conv.
    """

    def __init__(self, channels: int, fir_kernel: Sequence[float] = (1, 3, 3, 1)) -> None:
        super().__init__()
        k = fir_kernel_2d(fir_kernel) * 4.0
        self.channels = channels
        self.padding = k.shape[0] // 2 - 1
        # conv_transpose2d already scatters with the unflipped kernel (a true convolution).
        self.register_buffer("kernel", _depthwise(k, channels), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
                return self._forward_float32(x)
        return F.conv_transpose2d(x, self.kernel.to(x.dtype), stride=2, padding=self.padding, groups=self.channels)

    @torch.jit.unused
    def _forward_float32(self, x: torch.Tensor) -> torch.Tensor:
        """Under CPU autocast: oneDNN has no fast bfloat16 depthwise transposed convolution (it took 13 % of a
        generator's time); in float32 it is about 12x faster and exact, and the next convolution casts anyway."""
        with torch.autocast("cpu", enabled=False):
            x = x.float()
            return F.conv_transpose2d(x, self.kernel.to(x.dtype), stride=2, padding=self.padding, groups=self.channels)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel_size={self.kernel.shape[-1]}"


class FIRConvDownsample2d(nn.Module):
    """3x3 convolution with stride 2 preceded by an FIR blur: (B, C_in, H, W) -> (B, C_out, H/2, W/2).

    The reference's ``Downsample(with_conv=True, fir=True)`` used by the input pyramid
    (``conv_downsample_2d``: pad ``K/2`` on each side, blur, then conv stride 2 without padding, plus bias).
    The learnable 3x3 weight lives in ``conv`` (variance-scaling init, zero bias).
    """

    def __init__(self, in_channels: int, out_channels: int, fir_kernel: Sequence[float] = (1, 3, 3, 1)) -> None:
        super().__init__()
        k = fir_kernel_2d(fir_kernel)
        self.in_channels = in_channels
        self.blur_padding = k.shape[0] // 2
        self.register_buffer("kernel", _depthwise(torch.flip(k, [0, 1]), in_channels), persistent=False)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=2, padding=0)
        variance_scaling_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.kernel.to(x.dtype), padding=self.blur_padding, groups=self.in_channels)
        return self.conv(x)
