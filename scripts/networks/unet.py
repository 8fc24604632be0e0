"""The NCSN++ encoder/decoder shared by MU-Diff's two generators (everything after the stem).

Encoder levels of ``num_res_blocks`` residual blocks (+ attention where the level's resolution is in
``attn_resolutions``), a down-sampling residual block between levels and a "residual" input pyramid; a
bottleneck ResBlock -> attention -> ResBlock; decoder levels of ``num_res_blocks + 1`` residual blocks on the
concatenation with popped skips, an up-sampling residual block between levels; then GroupNorm, SiLU and a
3x3 conv (initialised near zero).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .blocks import ResnetBlockAdaGN, SelfAttention2d
from .fir import FIRConvDownsample2d
from .layers import default_num_groups, variance_scaling_

__all__ = ["EncoderLevel", "Bottleneck", "DecoderLevel", "NCSNppBackbone"]


class EncoderLevel(nn.Module):
    """One encoder resolution: ``blocks`` (each followed by its ``attentions`` entry, Identity when unused), then
    optionally ``downsample`` (a down-sampling ResBlock) and ``pyramid_downsample`` (FIR strided conv of the
    input pyramid), merged as ``(pyramid + h) / sqrt(2)``. Every block output is pushed on ``skips``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_res_blocks: int,
        use_attention: bool,
        downsample: bool,
        pyramid_channels: int,
        block_kwargs: dict,
    ) -> None:
        super().__init__()
        chans = [in_channels] + [out_channels] * num_res_blocks
        self.blocks = nn.ModuleList(
            ResnetBlockAdaGN(chans[i], chans[i + 1], **block_kwargs) for i in range(num_res_blocks)
        )
        self.attentions = nn.ModuleList(
            SelfAttention2d(out_channels) if use_attention else nn.Identity() for _ in range(num_res_blocks)
        )
        self.downsample: nn.Module | None = None
        self.pyramid_downsample: nn.Module | None = None
        if downsample:
            self.downsample = ResnetBlockAdaGN(out_channels, out_channels, down=True, **block_kwargs)
            self.pyramid_downsample = FIRConvDownsample2d(
                pyramid_channels, out_channels, block_kwargs.get("fir_kernel", (1, 3, 3, 1))
            )
        self.merge_scale = 1.0 / math.sqrt(2.0)

    def forward(
        self, h: torch.Tensor, pyramid: torch.Tensor, temb: torch.Tensor, zemb: torch.Tensor, skips: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        for block, attention in zip(self.blocks, self.attentions):  # noqa: B905 (TorchScript has no strict=)
            h = attention(block(h, temb, zemb))
            skips.append(h)
        if self.downsample is not None and self.pyramid_downsample is not None:
            h = self.downsample(h, temb, zemb)
            pyramid = (self.pyramid_downsample(pyramid) + h) * self.merge_scale
            h = pyramid
            skips.append(h)
        return h, pyramid


class Bottleneck(nn.Module):
    """``block1`` -> ``attention`` -> ``block2`` at the lowest resolution; channels unchanged."""

    def __init__(self, channels: int, block_kwargs: dict) -> None:
        super().__init__()
        self.block1 = ResnetBlockAdaGN(channels, channels, **block_kwargs)
        self.attention = SelfAttention2d(channels)
        self.block2 = ResnetBlockAdaGN(channels, channels, **block_kwargs)

    def forward(self, h: torch.Tensor, temb: torch.Tensor, zemb: torch.Tensor) -> torch.Tensor:
        return self.block2(self.attention(self.block1(h, temb, zemb)), temb, zemb)


class DecoderLevel(nn.Module):
    """One decoder resolution: ``blocks`` on ``cat([h, skips.pop()])``, then ``attention`` (Identity when
    unused), then optionally ``upsample`` (an up-sampling ResBlock)."""

    def __init__(
        self,
        in_channels: int,
        skip_channels: Sequence[int],
        out_channels: int,
        use_attention: bool,
        upsample: bool,
        block_kwargs: dict,
    ) -> None:
        super().__init__()
        blocks = []
        ch = in_channels
        for skip_ch in skip_channels:
            blocks.append(ResnetBlockAdaGN(ch + skip_ch, out_channels, **block_kwargs))
            ch = out_channels
        self.blocks = nn.ModuleList(blocks)
        self.attention = SelfAttention2d(out_channels) if use_attention else nn.Identity()
        self.upsample: nn.Module | None = (
            ResnetBlockAdaGN(out_channels, out_channels, up=True, **block_kwargs) if upsample else None
        )

    def forward(
        self, h: torch.Tensor, temb: torch.Tensor, zemb: torch.Tensor, skips: list[torch.Tensor]
    ) -> torch.Tensor:
        for block in self.blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), temb, zemb)
        h = self.attention(h)
        if self.upsample is not None:
            h = self.upsample(h, temb, zemb)
        return h


class NCSNppBackbone(nn.Module):
    """NCSN++ U-Net body used by both generators (stem and output tanh live in the generators).

    Args:
        stem_channels: channels of the stem output h0 (MU-Diff: ``nf * (1 + number of contrasts)``).
        pyramid_channels: channels of the input pyramid source (the noisy target, 1).
        out_channels: output channels (1).
        nf: base width; level i has ``nf * ch_mult[i]`` channels.
        ch_mult: width multipliers per resolution level.
        num_res_blocks: residual blocks per encoder level (decoder levels have one more).
        attn_resolutions: resolutions (relative to ``image_size``) with attention after each level block.
        image_size: nominal input size, only used to decide where attention goes.
        temb_dim, zemb_dim: time- and latent-embedding sizes.
        dropout, fir_kernel, skip_rescale: as in the reference (0, [1, 3, 3, 1], True).

    Shapes: h0 (B, stem_channels, H, W), pyramid (B, pyramid_channels, H, W), temb (B, temb_dim),
    zemb (B, zemb_dim) -> (B, out_channels, H, W), H and W divisible by ``2 ** (len(ch_mult) - 1)``.
    """

    def __init__(
        self,
        stem_channels: int = 256,
        pyramid_channels: int = 1,
        out_channels: int = 1,
        nf: int = 64,
        ch_mult: Sequence[int] = (1, 2, 4),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (16,),
        image_size: int = 256,
        temb_dim: int = 256,
        zemb_dim: int = 256,
        dropout: float = 0.0,
        fir_kernel: Sequence[float] = (1, 3, 3, 1),
        skip_rescale: bool = True,
    ) -> None:
        super().__init__()
        if len(ch_mult) < 1 or num_res_blocks < 1:
            raise ValueError(f"need len(ch_mult) >= 1 and num_res_blocks >= 1, got {list(ch_mult)}, {num_res_blocks}")
        num_levels = len(ch_mult)
        if image_size % (2 ** (num_levels - 1)) != 0:
            raise ValueError(
                f"image_size {image_size} must be divisible by 2**(len(ch_mult)-1) = {2 ** (num_levels - 1)}"
            )
        resolutions = [image_size // (2**i) for i in range(num_levels)]
        attn = {int(r) for r in attn_resolutions}
        block_kwargs = {
            "temb_dim": temb_dim,
            "zemb_dim": zemb_dim,
            "dropout": dropout,
            "fir_kernel": tuple(fir_kernel),
            "skip_rescale": skip_rescale,
        }
        skip_chs = [stem_channels]
        ch, pyramid_ch = stem_channels, pyramid_channels
        encoder = []
        for i, mult in enumerate(ch_mult):
            out_ch = nf * mult
            is_last = i == num_levels - 1
            encoder.append(
                EncoderLevel(ch, out_ch, num_res_blocks, resolutions[i] in attn, not is_last, pyramid_ch, block_kwargs)
            )
            skip_chs += [out_ch] * (num_res_blocks + (0 if is_last else 1))
            ch = out_ch
            if not is_last:
                pyramid_ch = out_ch
        self.encoder = nn.ModuleList(encoder)
        self.bottleneck = Bottleneck(ch, block_kwargs)
        decoder = []
        for i in reversed(range(num_levels)):
            pops = [skip_chs.pop() for _ in range(num_res_blocks + 1)]
            out_ch = nf * ch_mult[i]
            decoder.append(DecoderLevel(ch, pops, out_ch, resolutions[i] in attn, i != 0, block_kwargs))
            ch = out_ch
        if skip_chs:  # pragma: no cover - guaranteed by construction
            raise RuntimeError(f"internal error: {len(skip_chs)} unused skip connections")
        self.decoder = nn.ModuleList(decoder)
        self.out_norm = nn.GroupNorm(default_num_groups(ch), ch, eps=1e-6)
        self.out_act = nn.SiLU()
        self.out_conv = nn.Conv2d(ch, out_channels, 3, padding=1)
        variance_scaling_(self.out_conv.weight, 0.0)
        nn.init.zeros_(self.out_conv.bias)

    def forward(self, h0: torch.Tensor, pyramid: torch.Tensor, temb: torch.Tensor, zemb: torch.Tensor) -> torch.Tensor:
        skips: list[torch.Tensor] = [h0]
        h = h0
        for level in self.encoder:
            h, pyramid = level(h, pyramid, temb, zemb, skips)
        h = self.bottleneck(h, temb, zemb)
        for level in self.decoder:
            h = level(h, temb, zemb, skips)
        return self.out_conv(self.out_act(self.out_norm(h)))
