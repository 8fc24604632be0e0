"""MU-Diff input stems: per-image encoders that replace NCSN++'s single input conv.

G1 (contrast-specific): independent encoders for the noisy target and each contrast, concatenated.
G2 (contrast-aware): a style vector from G1's estimate (the pseudo target) modulates the contrast encoders,
and pairwise gated fusion mixes neighbouring contrasts (pairs (1,2), (2,3), (3,1)) before concatenation.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import AdaptiveGroupNorm, default_num_groups, variance_scaling_

__all__ = [
    "ConvFeatureEncoder",
    "StyleEncoder",
    "ModulatedConvEncoder",
    "GatedPairFusion",
    "ContrastSpecificStem",
    "ContrastAwareStem",
]


def _conv3x3(in_ch: int, out_ch: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)
    variance_scaling_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class ConvFeatureEncoder(nn.Module):
    """``conv1`` 3x3 -> GroupNorm (no affine) -> SiLU -> ``conv2`` 3x3: (B, C_in, H, W) -> (B, features, H, W)."""

    def __init__(self, in_channels: int = 1, features: int = 64, eps: float = 1e-6) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, features)
        self.norm = nn.GroupNorm(default_num_groups(features), features, eps=eps, affine=False)
        self.act = nn.SiLU()
        self.conv2 = _conv3x3(features, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.act(self.norm(self.conv1(x))))


class StyleEncoder(nn.Module):
    """Global style of an image: ``conv1`` -> GroupNorm -> SiLU -> ``conv2`` -> global average pool -> ``fc``.

    (B, C_in, H, W) -> (B, style_dim). The reference hard-codes ``fc`` as Linear(64, 256); here it is
    Linear(features, style_dim), identical at the published nf = 64, z_emb_dim = 256.
    """

    def __init__(self, in_channels: int = 1, features: int = 64, style_dim: int = 256, eps: float = 1e-6) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, features)
        self.norm = nn.GroupNorm(default_num_groups(features), features, eps=eps, affine=False)
        self.act = nn.SiLU()
        self.conv2 = _conv3x3(features, features)
        self.fc = nn.Linear(features, style_dim)
        variance_scaling_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(self.act(self.norm(self.conv1(x))))
        return self.fc(h.mean(dim=(2, 3)))


class ModulatedConvEncoder(nn.Module):
    """``conv1`` -> AdaGN(style) -> SiLU -> ``conv2``.

    x (B, C_in, H, W), style (B, style_dim) -> (B, features, H, W).
    """

    def __init__(self, in_channels: int = 1, features: int = 64, style_dim: int = 256) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, features)
        self.norm = AdaptiveGroupNorm(features, style_dim, default_num_groups(features))
        self.act = nn.SiLU()
        self.conv2 = _conv3x3(features, features)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.act(self.norm(self.conv1(x), style)))


class GatedPairFusion(nn.Module):
    """Gated fusion of a source contrast i into a destination contrast j, gated by all contrasts' features.

    ``a = sigmoid(source_gate(F))``, ``b = sigmoid(mix_gate(F))``, ``out = b * transform(a * f_i) + (1 - b) * f_j``
    with F = concat of all N contrast features (B, N*features, H, W) and f_i, f_j (B, features, H, W).
    """

    def __init__(self, features: int = 64, num_inputs: int = 3) -> None:
        super().__init__()
        self.source_gate = _conv3x3(num_inputs * features, features)
        self.mix_gate = _conv3x3(num_inputs * features, features)
        self.transform = _conv3x3(features, features)

    def forward(self, all_feats: torch.Tensor, source: torch.Tensor, dest: torch.Tensor) -> torch.Tensor:
        a = torch.sigmoid(self.source_gate(all_feats))
        b = torch.sigmoid(self.mix_gate(all_feats))
        return b * self.transform(a * source) + (1.0 - b) * dest


class ContrastSpecificStem(nn.Module):
    """G1's stem: one ``ConvFeatureEncoder`` for the noisy target and one per contrast, no cross-talk.

    x (B, in_channels, H, W), cond (B, num_cond, H, W) -> h0 (B, nf * (1 + num_cond), H, W) in the order
    [x, c1, c2, ...].
    """

    def __init__(self, in_channels: int = 1, num_cond: int = 3, nf: int = 64) -> None:
        super().__init__()
        self.num_cond = num_cond
        self.out_channels = nf * (1 + num_cond)
        self.x_encoder = ConvFeatureEncoder(in_channels, nf)
        self.cond_encoders = nn.ModuleList(ConvFeatureEncoder(1, nf) for _ in range(num_cond))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        feats = [self.x_encoder(x)]
        for i, encoder in enumerate(self.cond_encoders):
            feats.append(encoder(cond[:, i : i + 1]))
        return torch.cat(feats, dim=1)


class ContrastAwareStem(nn.Module):
    """G2's stem (rho, phi_2 and tau of the paper's figure).

    The pseudo target p (G1's estimate) gives a style ``s = style_encoder(p)``; each contrast is encoded by a
    ``ModulatedConvEncoder`` driven by s; ``fusions[k]`` fuses contrast k into contrast k+1 (cyclically). The
    result is ``concat(x_encoder(x), fused_12, fused_23, fused_31)``.
    Shapes: x (B, in_channels, H, W), cond (B, num_cond, H, W), p (B, in_channels, H, W)
    -> (B, nf * (1 + num_cond), H, W).
    """

    def __init__(self, in_channels: int = 1, num_cond: int = 3, nf: int = 64, style_dim: int = 256) -> None:
        super().__init__()
        if num_cond < 2:
            raise ValueError(f"contrast-aware fusion needs at least 2 conditioning contrasts, got {num_cond}")
        self.num_cond = num_cond
        self.out_channels = nf * (1 + num_cond)
        self.style_encoder = StyleEncoder(in_channels, nf, style_dim)
        self.x_encoder = ConvFeatureEncoder(in_channels, nf)
        self.cond_encoders = nn.ModuleList(ModulatedConvEncoder(1, nf, style_dim) for _ in range(num_cond))
        self.fusions = nn.ModuleList(GatedPairFusion(nf, num_cond) for _ in range(num_cond))

    def forward(self, x: torch.Tensor, cond: torch.Tensor, pseudo_target: torch.Tensor) -> torch.Tensor:
        style = self.style_encoder(pseudo_target)
        feats: list[torch.Tensor] = []
        for i, encoder in enumerate(self.cond_encoders):
            feats.append(encoder(cond[:, i : i + 1], style))
        all_feats = torch.cat(feats, dim=1)
        out = [self.x_encoder(x)]
        for k, fusion in enumerate(self.fusions):
            out.append(fusion(all_feats, feats[k], feats[(k + 1) % self.num_cond]))
        return torch.cat(out, dim=1)
