"""MU-Diff's two x0-predicting generators: G1 (contrast-specific) and G2 (contrast-aware)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .layers import LatentMappingNetwork, TimestepEmbedding
from .stems import ContrastAwareStem, ContrastSpecificStem
from .unet import NCSNppBackbone

__all__ = ["NCSNppGenerator", "ContrastSpecificGenerator", "ContrastAwareGenerator"]


class NCSNppGenerator(nn.Module):
    """Parts shared by both generators: ``time_embed`` (nf -> 4nf -> 4nf), ``latent_mapping``, ``stem``, ``unet``.

    Subclasses choose the stem (``_make_stem``) and the forward signature.

    Args:
        image_size: nominal slice size (256); only decides where ``attn_resolutions`` applies.
        in_channels: channels of the noisy target and of the output (1).
        cond_channels: number of conditioning contrasts, one channel each (3).
        nf: base width (the reference's ``num_channels_dae``, 64).
        ch_mult: per-level width multipliers ((1, 2, 4): levels at 256, 128, 64).
        num_res_blocks: residual blocks per encoder level (2).
        attn_resolutions: resolutions with attention inside U-Net levels ((16,), i.e. none at 256 x 256; the
            bottleneck always has one attention block).
        nz: latent size (100). z_emb_dim: latent style size (256). n_mlp: mapping-network depth (3).
        dropout: dropout in the residual blocks (0). fir_kernel: FIR resampling taps ((1, 3, 3, 1)).
    """

    def __init__(
        self,
        image_size: int = 256,
        in_channels: int = 1,
        cond_channels: int = 3,
        nf: int = 64,
        ch_mult: Sequence[int] = (1, 2, 4),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (16,),
        nz: int = 100,
        z_emb_dim: int = 256,
        n_mlp: int = 3,
        dropout: float = 0.0,
        fir_kernel: Sequence[float] = (1, 3, 3, 1),
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.cond_channels = cond_channels
        self.nz = nz
        self.time_embed = TimestepEmbedding(nf, 4 * nf, 4 * nf, nn.SiLU())
        self.latent_mapping = LatentMappingNetwork(nz, z_emb_dim, n_mlp)
        self.stem = self._make_stem(in_channels, cond_channels, nf, z_emb_dim)
        self.unet = NCSNppBackbone(
            stem_channels=nf * (1 + cond_channels),
            pyramid_channels=in_channels,
            out_channels=in_channels,
            nf=nf,
            ch_mult=ch_mult,
            num_res_blocks=num_res_blocks,
            attn_resolutions=attn_resolutions,
            image_size=image_size,
            temb_dim=4 * nf,
            zemb_dim=z_emb_dim,
            dropout=dropout,
            fir_kernel=fir_kernel,
        )

    def _make_stem(self, in_channels: int, cond_channels: int, nf: int, z_emb_dim: int) -> nn.Module:
        raise NotImplementedError


class ContrastSpecificGenerator(NCSNppGenerator):
    """G1: independent encoders for x_{t+1} and each contrast, then the NCSN++ U-Net; predicts x0 in [-1, 1].

    ``forward(x_tp1 (B, 1, H, W), cond (B, 3, H, W), t (B,) int64, z (B, nz)) -> x0_hat (B, 1, H, W)``.
    Constructor arguments: see ``NCSNppGenerator``; the defaults give 20,472,065 parameters.
    """

    def _make_stem(self, in_channels: int, cond_channels: int, nf: int, z_emb_dim: int) -> nn.Module:
        return ContrastSpecificStem(in_channels, cond_channels, nf)

    def forward(self, x_tp1: torch.Tensor, cond: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        temb = self.time_embed(t)
        zemb = self.latent_mapping(z)
        h0 = self.stem(x_tp1, cond)
        return torch.tanh(self.unet(h0, x_tp1, temb, zemb))


class ContrastAwareGenerator(NCSNppGenerator):
    """G2: contrast encoders modulated by G1's estimate + gated cross-contrast fusion, then its own U-Net.

    ``forward(x_tp1 (B, 1, H, W), cond (B, 3, H, W), t (B,), z (B, nz), pseudo_target (B, 1, H, W))
    -> x0_hat (B, 1, H, W)``. ``pseudo_target`` is G1's x0 estimate (not detached: G2's losses train G1 too).
    Constructor arguments: see ``NCSNppGenerator``; the defaults give 21,399,681 parameters.
    """

    def _make_stem(self, in_channels: int, cond_channels: int, nf: int, z_emb_dim: int) -> nn.Module:
        return ContrastAwareStem(in_channels, cond_channels, nf, z_emb_dim)

    def forward(
        self, x_tp1: torch.Tensor, cond: torch.Tensor, t: torch.Tensor, z: torch.Tensor, pseudo_target: torch.Tensor
    ) -> torch.Tensor:
        temb = self.time_embed(t)
        zemb = self.latent_mapping(z)
        h0 = self.stem(x_tp1, cond, pseudo_target)
        return torch.tanh(self.unet(h0, x_tp1, temb, zemb))
