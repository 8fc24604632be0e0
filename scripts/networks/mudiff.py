"""``MUDiff``: the two generators as one module; its state dict (``g1.*``, ``g2.*``) is ``models/model.pt``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .described import DescribedModule
from .generators import ContrastAwareGenerator, ContrastSpecificGenerator

__all__ = ["MUDiff"]


class MUDiff(DescribedModule):
    """G1 (contrast-specific) and G2 (contrast-aware), built from the same hyper-parameters.

    Args: see ``scripts.networks.generators.NCSNppGenerator`` (image_size 256, in_channels 1, cond_channels 3,
    nf 64, ch_mult (1, 2, 4), num_res_blocks 2, attn_resolutions (16,), nz 100, z_emb_dim 256, n_mlp 3,
    dropout 0, fir_kernel (1, 3, 3, 1): the published configuration).

    ``predict_x0(x_tp1, cond, t, z) -> (x0_g1, x0_g2)``: one denoising step of both generators (same z; G2 is
    conditioned on G1's estimate, not detached).

    ``forward(image (B, cond_channels + in_channels, H, W), t (B,) | None, z (B, nz) | None) -> (B, in_channels,
    H, W)``: image = the contrasts followed by the noisy target x_{t+1}; t and z default to zeros; returns
    ``(x0_g1 + x0_g2) / 2``, the averaged x0 estimate (which is also the sampler's output at its last step).
    This single-tensor entry point is what ``verify_net_in_out``, TorchScript and ONNX export call.

    The weights describe themselves (``DescribedModule``): ``config`` is the arguments above, ``record`` what the
    weights were trained for (``record=`` here, or set by training).
    """

    weights_format = "mudiff-weights/1"

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
        record: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        kwargs = {
            "image_size": image_size,
            "in_channels": in_channels,
            "cond_channels": cond_channels,
            "nf": nf,
            "ch_mult": tuple(ch_mult),
            "num_res_blocks": num_res_blocks,
            "attn_resolutions": tuple(attn_resolutions),
            "nz": nz,
            "z_emb_dim": z_emb_dim,
            "n_mlp": n_mlp,
            "dropout": dropout,
            "fir_kernel": tuple(fir_kernel),
        }
        self._describe(kwargs, record)
        self.nz = nz
        self.in_channels = in_channels
        self.cond_channels = cond_channels
        self.g1 = ContrastSpecificGenerator(**kwargs)
        self.g2 = ContrastAwareGenerator(**kwargs)

    def predict_x0(
        self, x_tp1: torch.Tensor, cond: torch.Tensor, t: torch.Tensor, z: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x0_g1 = self.g1(x_tp1, cond, t, z)
        x0_g2 = self.g2(x_tp1, cond, t, z, x0_g1)
        return x0_g1, x0_g2

    def forward(
        self, image: torch.Tensor, t: torch.Tensor | None = None, z: torch.Tensor | None = None
    ) -> torch.Tensor:
        if image.dim() != 4 or image.shape[1] != self.cond_channels + self.in_channels:
            raise ValueError(
                f"MUDiff expects image (B, {self.cond_channels + self.in_channels}, H, W) = {self.cond_channels}"
                f" contrasts + the noisy target, got shape {list(image.shape)}"
            )
        cond = image[:, : self.cond_channels]
        x_tp1 = image[:, self.cond_channels :]
        batch = image.shape[0]
        if t is None:
            t = torch.zeros(batch, dtype=torch.long, device=image.device)
        if z is None:
            z = torch.zeros(batch, self.nz, dtype=image.dtype, device=image.device)
        x0_g1, x0_g2 = self.predict_x0(x_tp1, cond, t, z)
        return (x0_g1 + x0_g2) * 0.5
