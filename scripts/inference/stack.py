"""Slice-batched MU-Diff synthesis of one subject's slice stack, on tensors (no files).

``VolumeInferer`` is the MONAI ``Inferer`` the bundle's evaluator calls with a whole subject's conditioning stack
``(N, 3, H, W)``; it runs ``MUDiffSampler`` over batches of slices on the network's device and returns a
``StackSynthesis`` (mean synthesis, optional per-pixel standard deviation over N stochastic samples, optional
critic attention map). MONAI Label or any other caller can use it on in-memory stacks the same way.

Seeding. Every random draw of slice ``s`` (starting noise x_T, per-step latents z and posterior noise) comes from a
CPU generator seeded with ``(seed, slice id, sample index)``. A slice's synthesis therefore depends only on the seed
and its id, not on the batch size, on the other slices in the run, or on the device (CUDA runs the same draws; only
floating-point arithmetic differs).

Prefetching. On a GPU, drawing a batch's noise on the CPU (about 2 ms per 256 x 256 slice and sample) would
otherwise wait for the previous batch's result and leave the GPU idle meanwhile; with ``prefetch`` the next batch's
draws are made in a background thread into pinned memory while the GPU runs the current batch, and copied
asynchronously. The draws themselves are the same, so the output is identical with and without it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, NamedTuple

import numpy as np
import torch
from monai.inferers import Inferer
from scripts.cli_args import parse_int
from scripts.diffusion import MUDiffSampler, VPSchedule
from scripts.diffusion.moments import RunningMoments
from scripts.networks.wrappers import unwrap
from torch import nn
from tqdm import tqdm

from .errors import InferenceError
from .weights import CriticCheckpoint, load_critic

__all__ = ["AttentionCritic", "StackSynthesis", "VolumeInferer", "build_attention_critic", "slice_generator"]

logger = logging.getLogger(__name__)

#: Generator stream of the attention map's forward-noise draw (sample streams are 0..num_samples-1).
ATTENTION_STREAM = 1 << 20
#: The critic's minibatch-stddev groups at most this many samples; chunks of this size always divide evenly.
CRITIC_CHUNK = 4


class StackSynthesis(NamedTuple):
    """Result for a stack of N slices; tensors on the CPU, float32, (N, 1, H, W).

    ``mean``: the synthesis in [-1, 1] (one sample, or the mean of ``num_samples``); ``std``: per-pixel standard
    deviation of the samples in the same [-1, 1] units (None when ``num_samples == 1``); ``attention``: the critic's
    map in (0, 1) (None unless requested and a critic was loaded).
    """

    mean: torch.Tensor
    std: torch.Tensor | None
    attention: torch.Tensor | None
    num_samples: int


def slice_generator(seed: int, slice_id: int, stream: int = 0) -> torch.Generator:
    """CPU generator for one slice and one sample (``stream``), decorrelated with numpy's SeedSequence."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(slice_id), int(stream)]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


def _draw(shape: Sequence[int], generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=generator)


def _slice_draws(
    generators: Sequence[torch.Generator | None], hw: tuple[int, int], steps: int, nz: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x_T (B, 1, H, W), z (T, B, nz), noise (T, B, 1, H, W); per slice in the sampler's order (x_T, then z and
    noise for each step)."""
    x_t, zs, noises = [], [], []
    for gen in generators:
        x_t.append(_draw((1, 1, *hw), gen))
        z_s, n_s = [], []
        for _ in range(steps):
            z_s.append(_draw((1, nz), gen))
            n_s.append(_draw((1, 1, *hw), gen))
        zs.append(torch.stack(z_s))
        noises.append(torch.stack(n_s))
    return torch.cat(x_t), torch.cat(zs, dim=1), torch.cat(noises, dim=1)


class AttentionCritic(nn.Module):
    """The critic-derived attention map of a synthesis (the training's M, spec 2.5), for display.

    The final synthesis x0 is paired the way the critic saw t = 0 pairs in training: x_t = x0 and
    x_{t+1} = a_1 x0 + sigma_1 eps (one forward step); ``M = upsample(sigmoid(att_conv(mid_features)))`` in (0, 1).
    """

    def __init__(self, critic: nn.Module, uncertainty: nn.Module, schedule: VPSchedule | None = None) -> None:
        super().__init__()
        self.critic = critic
        self.uncertainty = uncertainty
        self.schedule = schedule if schedule is not None else VPSchedule()

    @torch.no_grad()
    def forward(self, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x0, noise: (B, 1, H, W) -> map (B, 1, H, W) in (0, 1)."""
        schedule = self.schedule.to(x0.device)
        t = torch.zeros(x0.shape[0], dtype=torch.long, device=x0.device)
        x_t, x_tp1 = schedule.q_sample_pairs(x0, t, noise_t=torch.zeros_like(x0), noise_tp1=noise)
        maps = []
        for start in range(0, x0.shape[0], CRITIC_CHUNK):
            part = slice(start, start + CRITIC_CHUNK)
            _, features = self.critic(x_t[part], x_tp1[part], t[part])
            maps.append(self.uncertainty(features, size=tuple(x0.shape[-2:])))
        return torch.cat(maps).float()


def build_attention_critic(
    enabled: bool,
    critic: nn.Module | None,
    uncertainty: nn.Module | None,
    checkpoint: str | CriticCheckpoint | None,
    device: torch.device | str = "cpu",
    schedule: VPSchedule | None = None,
) -> AttentionCritic | None:
    """The critic for attention maps, or None (with a logged reason) when disabled or no critic weights exist.

    ``checkpoint``: a path, or the ``CriticCheckpoint`` the critic's configuration was read from (read only once).
    """
    if not enabled:
        return None
    if critic is None or uncertainty is None:
        logger.warning("attention map skipped: no critic network configured")
        return None
    loaded, reason = load_critic(checkpoint, critic, uncertainty)
    if not loaded:
        logger.warning("attention map skipped: %s", reason)
        return None
    logger.info(reason)
    return AttentionCritic(critic, uncertainty, schedule).to(device).eval()


def _network_device(network: Any) -> torch.device:
    param = next(network.parameters(), None) if isinstance(network, nn.Module) else None
    return param.device if param is not None else torch.device("cpu")


def _latent_size(network: Any) -> int:
    nz = getattr(unwrap(network, owner_of="nz"), "nz", None)
    if not isinstance(nz, int):
        raise InferenceError(f"{type(network).__name__} has no integer attribute 'nz' (latent size); not a MUDiff")
    return nz


class VolumeInferer(Inferer):
    """Run ``MUDiffSampler`` over a subject's slice stack in batches: ``inferer(stack, network) -> StackSynthesis``.

    Args:
        sampler: the reverse-diffusion sampler (its ``amp`` flag selects bf16 autocast; its own ``num_samples`` must
            be 1 because the draws are supplied per slice). Default: ``MUDiffSampler()``.
        batch_size: slices per network call.
        num_samples: stochastic samples per slice; > 1 gives ``std`` (and ``mean`` is their average).
        seed: seed of the per-slice draws (see module docstring); None draws from torch's global RNG.
        attention: an ``AttentionCritic`` (see ``build_attention_critic``) or None for no attention map.
        prefetch: draw the next batch's noise in a background thread (pinned memory on CUDA) while the device
            works on the current one; None: on for every device but the CPU, where the thread would only compete
            with the computation for cores. Same output either way.
    """

    def __init__(
        self,
        sampler: MUDiffSampler | None = None,
        batch_size: int = 8,
        num_samples: int = 1,
        seed: int | None = 0,
        attention: AttentionCritic | None = None,
        prefetch: bool | None = None,
    ) -> None:
        super().__init__()
        self.sampler = sampler if sampler is not None else MUDiffSampler()
        if self.sampler.num_samples != 1:
            raise InferenceError(
                f"VolumeInferer: set num_samples on the VolumeInferer, not on the sampler (got sampler.num_samples="
                f"{self.sampler.num_samples})"
            )
        self.batch_size = parse_int(batch_size, "batch_size", InferenceError, minimum=1)
        self.num_samples = parse_int(num_samples, "num_samples", InferenceError, minimum=1)
        self.seed = None if seed is None else parse_int(seed, "seed", InferenceError)
        self.attention = attention
        self.prefetch = None if prefetch is None else bool(prefetch)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(batch_size={self.batch_size}, num_samples={self.num_samples}, seed={self.seed}, "
            f"amp={self.sampler.amp}, attention={self.attention is not None}, prefetch={self.prefetch})"
        )

    def _generators(self, ids: Sequence[int], stream: int) -> list[torch.Generator | None]:
        return [None if self.seed is None else slice_generator(self.seed, i, stream) for i in ids]

    def _draws(
        self,
        parts: Sequence[slice],
        ids: Sequence[int],
        hw: tuple[int, int],
        steps: int,
        nz: int,
        pin: bool,
        threaded: bool,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(x_T, z, noise) for every (batch, sample) in the order the loop consumes them; ``threaded`` keeps one
        job ahead in a background thread."""

        def job(part: slice, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            out = _slice_draws(self._generators(ids[part], k), hw, steps, nz)
            return tuple(t.pin_memory() for t in out) if pin else out  # type: ignore[return-value]

        jobs = [(part, k) for part in parts for k in range(self.num_samples)]
        if not threaded:
            yield from (job(*j) for j in jobs)
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mudiff-draws") as pool:
            pending: Future | None = pool.submit(job, *jobs[0]) if jobs else None
            for nxt in [*jobs[1:], None]:
                current = pending.result()  # type: ignore[union-attr]
                pending = pool.submit(job, *nxt) if nxt is not None else None
                yield current

    @torch.no_grad()
    def __call__(
        self, inputs: torch.Tensor | np.ndarray, network: Any, slice_ids: Sequence[int] | None = None
    ) -> StackSynthesis:
        """Synthesize every slice of ``inputs`` (N, C, H, W) in [-1, 1].

        Args:
            inputs: conditioning stack (any device; batches are moved to the network's device).
            network: ``MUDiff`` (or a wrapper of it).
            slice_ids: one id per slice for seeding (default 0..N-1; the pipeline's axial indices are better).
        """
        stack = torch.as_tensor(np.asarray(inputs) if isinstance(inputs, np.ndarray) else inputs)
        if stack.ndim != 4:
            raise InferenceError(f"expected a slice stack (N, C, H, W), got shape {tuple(stack.shape)}")
        n, _, h, w = stack.shape
        ids = list(range(n)) if slice_ids is None else [int(i) for i in slice_ids]
        if len(ids) != n:
            raise InferenceError(f"{len(ids)} slice ids for {n} slices")
        device = _network_device(network)
        nz, steps = _latent_size(network), self.sampler.schedule.num_timesteps
        mean = torch.empty((n, 1, h, w), dtype=torch.float32)
        std = torch.empty_like(mean) if self.num_samples > 1 else None
        attention = torch.empty_like(mean) if self.attention is not None else None
        parts = [slice(start, min(start + self.batch_size, n)) for start in range(0, n, self.batch_size)]
        prefetch = device.type != "cpu" if self.prefetch is None else self.prefetch
        draws = self._draws(parts, ids, (h, w), steps, nz, pin=prefetch and device.type == "cuda", threaded=prefetch)
        # a whole subject takes minutes on a CPU: a bar on a terminal (none in logs or pipes: disable=None)
        bar = tqdm(total=n, unit="slice", desc="synthesizing", leave=False, disable=None if len(parts) > 1 else True)
        for part in parts:
            cond = stack[part].to(device=device, dtype=torch.float32)
            moments = RunningMoments()
            for _ in range(self.num_samples):
                x_t, z, noise = (t.to(device, non_blocking=True) for t in next(draws))
                moments.update(self.sampler(cond, network, x_T=x_t, z_per_step=z, noise_per_step=noise).float())
            batch_mean = moments.mean
            mean[part] = batch_mean.cpu()
            if std is not None:
                std[part] = moments.std().cpu()
            if attention is not None:
                gens = self._generators(ids[part], ATTENTION_STREAM)
                eps = torch.cat([_draw((1, 1, h, w), g) for g in gens]).to(device)
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=self.sampler.amp):
                    attention[part] = self.attention(batch_mean, eps).cpu()
            logger.debug("synthesized slices %d-%d of %d", part.start, part.stop - 1, n)
            bar.update(part.stop - part.start)
        bar.close()
        return StackSynthesis(mean, std, attention, self.num_samples)
