"""Random draws shared by the schedule and the sampler.

Every stochastic step of MU-Diff (timesteps, latents, Gaussian noise) goes through these two helpers so that a
caller can make a run reproducible with one ``torch.Generator``, or replay recorded draws by passing tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["draw_normal", "make_generator"]


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed`` (CPU and CUDA generators give different streams)."""
    return torch.Generator(device=torch.device(device)).manual_seed(int(seed))


def draw_normal(
    shape: Sequence[int],
    *,
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Standard normal tensor of ``shape`` on ``device``.

    Without a generator the global RNG of ``device`` is used, which consumes the same stream as the reference's
    ``torch.randn_like``. With a generator the numbers are drawn on the generator's own device and then moved, so
    a seeded CPU generator gives identical draws whether the model runs on CPU or CUDA.
    """
    if generator is None:
        return torch.randn(tuple(shape), device=device, dtype=dtype)
    return torch.randn(tuple(shape), generator=generator, device=generator.device, dtype=dtype).to(device)
