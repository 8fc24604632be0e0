r"""Convert the published MU-Diff checkpoints (reference parameter names) to this bundle's ``models/model.pt``.

    python -m scripts convert_weights published --g1 gen_diffusive_1.pth --g2 gen_diffusive_2.pth \
        --out models/model.pt --task brats_t1ce [--nf 64 --ch_mult "[1,2,4]" --num_res_blocks 2 ...]
    python -m scripts convert_weights to_reference --model models/model.pt --out_dir ref_ckpts/
    python -m scripts convert_weights critic --src d_state.pt --out critic.pt [--ngf 64 --t_emb_dim 256]

Every conversion is strict: missing keys, unexpected keys and shape mismatches are reported together, as one
``error:`` line (``scripts.convert_weights`` explains the mapping; docs/weights.md the workflow).
"""

from __future__ import annotations

from typing import Any

from scripts.cli import run_fire
from scripts.convert_weights import REFERENCE_PREFIX, convert_critic, convert_published, convert_to_reference

__all__ = ["critic", "main", "published", "to_reference"]


def published(g1: str, g2: str, out: str = "models/model.pt", task: str | None = None, **config: Any) -> None:
    """Published G1 + G2 state dicts -> one ``model.pt`` with its record (network configuration, task)."""
    convert_published(g1, g2, out, task=task, **config)


def to_reference(model: str = "models/model.pt", out_dir: str = ".", prefix: str = REFERENCE_PREFIX, **config: Any):
    """Our ``model.pt`` -> the reference's two generator files (reference parameter names)."""
    convert_to_reference(model, out_dir, prefix, **config)


def critic(src: str, out: str, in_channels: int = 1, ngf: int = 64, t_emb_dim: int = 256) -> None:
    """A reference critic (discriminator) state dict -> ours."""
    convert_critic(src, out, True, in_channels, ngf, t_emb_dim)


def main(argv: list[str] | None = None) -> int:
    return run_fire({"published": published, "to_reference": to_reference, "critic": critic}, argv)
