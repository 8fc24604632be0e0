"""The MU-Diff reverse sampler (spec section 3, "Sampling") as a MONAI ``Inferer``.

Starting from x_T ~ N(0, I), each of the T steps (t = T-1, ..., 0) draws one latent z per slice, lets G1 predict
x0 and G2 refine it (G2 sees G1's estimate), averages the two posterior means and adds posterior noise (none at
t = 0). At t = 0 the result is coef1[0] * (x0_G1 + x0_G2) / 2, i.e. the average of the two last x0 estimates.

Draw order (kept so seeded runs and recorded draws line up with the reference): x_T, then per step z, the two
generators, then the step's noise (drawn at t = 0 too, where it is multiplied by zero).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from monai.inferers import Inferer
from scripts.networks.wrappers import unwrap
from torch import nn

from .draws import draw_normal, make_generator
from .moments import RunningMoments
from .schedule import VPSchedule

__all__ = ["MUDiffSampler", "SampleStatistics", "SamplerOutput"]


class SamplerOutput(NamedTuple):
    """Result of ``MUDiffSampler(..., return_x0=True)``; each tensor (B, 1, H, W)."""

    sample: torch.Tensor
    x0_g1: torch.Tensor  # G1's x0 estimate at the last step (t = 0)
    x0_g2: torch.Tensor  # G2's x0 estimate at the last step (t = 0)


class SampleStatistics(NamedTuple):
    """Pixel-wise mean and standard deviation over N independent samples; each (B, 1, H, W)."""

    mean: torch.Tensor
    std: torch.Tensor
    num_samples: int


class MUDiffSampler(Inferer):
    """Reverse diffusion with the two MU-Diff generators, callable as ``inferer(inputs, network)``.

    ``inputs`` are the conditioning contrasts (B, 3, H, W) in [-1, 1]; the result is the synthesized target
    (B, 1, H, W). ``network`` is a ``MUDiff`` (``predict_x0(x_tp1, cond, t, z) -> (x0_g1, x0_g2)``, attribute
    ``nz``), optionally wrapped by DDP/DataParallel. A network without ``predict_x0`` (for instance a TorchScript
    export of ``MUDiff.forward``) is called as ``network(cat([cond, x_tp1], 1), t, z)`` and must return the
    averaged x0; that is the same sampler because the posterior mean is linear in x0, but ``return_x0`` needs
    ``predict_x0``.

    Args:
        schedule: the diffusion schedule; built from ``num_timesteps``, ``beta_min`` and ``beta_max`` if None.
        num_timesteps: T when ``schedule`` is None.
        beta_min: VP beta_min when ``schedule`` is None.
        beta_max: VP beta_max when ``schedule`` is None.
        cond_channels: number of conditioning contrasts expected in ``inputs``.
        amp: run the generators under bfloat16 autocast (the diffusion arithmetic stays float32).
        seed: if set and no generator is passed to a call, each call draws from a fresh generator seeded with
            it (on the inputs' device), so repeated calls on the same batch give the same result.
        num_samples: if > 1, ``__call__`` returns the pixel-wise mean of that many independent samples.
        clip_output: clamp the result to [-1, 1]. The reference does not; coef1[0] = 1 + 1.2e-7 can push
            saturated pixels that far outside the range, which is the only effect.
        nz: latent size; read from ``network.nz`` when None.
    """

    def __init__(
        self,
        schedule: VPSchedule | None = None,
        num_timesteps: int = 4,
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        cond_channels: int = 3,
        amp: bool = False,
        seed: int | None = None,
        num_samples: int = 1,
        clip_output: bool = True,
        nz: int | None = None,
    ) -> None:
        super().__init__()
        if schedule is not None and not isinstance(schedule, VPSchedule):
            raise TypeError(f"MUDiffSampler: schedule must be a VPSchedule, got {type(schedule).__name__}.")
        if int(num_samples) < 1:
            raise ValueError(f"MUDiffSampler: num_samples must be >= 1, got {num_samples}.")
        self.schedule = schedule if schedule is not None else VPSchedule(num_timesteps, beta_min, beta_max)
        self.cond_channels = int(cond_channels)
        self.amp = bool(amp)
        self.seed = seed
        self.num_samples = int(num_samples)
        self.clip_output = bool(clip_output)
        self.nz = nz

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_timesteps={self.schedule.num_timesteps}, cond_channels={self.cond_channels}, "
            f"amp={self.amp}, seed={self.seed}, num_samples={self.num_samples}, clip_output={self.clip_output})"
        )

    # ----------------------------------------------------------------------------------------------- checks
    def _check_inputs(self, inputs: Any) -> None:
        if not isinstance(inputs, torch.Tensor):
            raise TypeError(f"MUDiffSampler: inputs must be a torch.Tensor (B, C, H, W), got {type(inputs).__name__}.")
        if inputs.ndim != 4:
            raise ValueError(
                f"MUDiffSampler: inputs must be 4-D (B, {self.cond_channels}, H, W) conditioning slices, got shape "
                f"{tuple(inputs.shape)}."
            )
        if inputs.shape[1] != self.cond_channels:
            raise ValueError(
                f"MUDiffSampler: inputs must have {self.cond_channels} channels (the conditioning contrasts in task "
                f"order), got {inputs.shape[1]} (shape {tuple(inputs.shape)})."
            )
        if not inputs.dtype.is_floating_point:
            raise TypeError(f"MUDiffSampler: inputs must be a floating-point tensor, got {inputs.dtype}.")

    @staticmethod
    def _check_draw(value: Any, shape: tuple[int, ...], name: str, ref: torch.Tensor) -> torch.Tensor:
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"MUDiffSampler: {name} must be a tensor of shape {shape}, got {type(value).__name__}.")
        if tuple(value.shape) != shape:
            raise ValueError(f"MUDiffSampler: {name} must have shape {shape}, got {tuple(value.shape)}.")
        return value.to(device=ref.device, dtype=ref.dtype)

    def _latent_size(self, net: Any) -> int:
        nz = self.nz if self.nz is not None else getattr(net, "nz", None)
        if not isinstance(nz, int) or nz < 1:
            raise AttributeError(
                f"MUDiffSampler: cannot tell the latent size: {type(net).__name__} has no integer attribute 'nz'; "
                "pass nz=... to the sampler."
            )
        return nz

    @staticmethod
    def _check_device(net: Any, inputs: torch.Tensor) -> None:
        if isinstance(net, nn.Module):
            param = next(net.parameters(), None)
            if param is not None and param.device != inputs.device:
                raise ValueError(
                    f"MUDiffSampler: inputs are on {inputs.device} but the network's parameters are on {param.device}."
                )

    # ----------------------------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def __call__(
        self,
        inputs: torch.Tensor,
        network: Any,
        *,
        x_T: torch.Tensor | None = None,  # noqa: N803 (name fixed by the interface contract)
        z_per_step: torch.Tensor | None = None,
        noise_per_step: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        return_x0: bool = False,
    ) -> torch.Tensor | SamplerOutput:
        """Synthesize the target contrast for ``inputs`` (B, 3, H, W); returns (B, 1, H, W) in [-1, 1].

        Args:
            inputs: conditioning contrasts, (B, 3, H, W) in [-1, 1].
            network: MUDiff (or a DDP/DataParallel wrapper of it).
            x_T: starting noise (B, 1, H, W); drawn if None.
            z_per_step: latents (T, B, nz) in the order consumed (t = T-1 first); drawn per step if None.
            noise_per_step: posterior noises (T, B, 1, H, W) in the order consumed; drawn per step if None.
            generator: torch.Generator for every draw not given; the global RNG if None (and no ``seed``).
            return_x0: also return the two generators' x0 estimates at the last step (as ``SamplerOutput``).
        """
        self._check_inputs(inputs)
        replayed = x_T is not None or z_per_step is not None or noise_per_step is not None
        if self.num_samples > 1:
            if return_x0 or replayed:
                raise ValueError(
                    "MUDiffSampler: with num_samples > 1 the call returns a mean over independent samples; "
                    "return_x0 and explicit x_T / z_per_step / noise_per_step need num_samples=1."
                )
            return self.sample_statistics(inputs, network, self.num_samples, generator=generator).mean
        if generator is None and self.seed is not None:
            generator = make_generator(self.seed, inputs.device)
        return self._sample(inputs, network, x_T, z_per_step, noise_per_step, generator, return_x0)

    def _sample(
        self,
        cond: torch.Tensor,
        network: Any,
        x_T: torch.Tensor | None,  # noqa: N803
        z_per_step: torch.Tensor | None,
        noise_per_step: torch.Tensor | None,
        generator: torch.Generator | None,
        return_x0: bool,
    ) -> torch.Tensor | SamplerOutput:
        net = unwrap(network, owner_of="predict_x0")
        has_pair = hasattr(net, "predict_x0")
        if return_x0 and not has_pair:
            raise TypeError(f"MUDiffSampler: return_x0=True needs a network with predict_x0; got {type(net).__name__}.")
        self._check_device(net, cond)
        nz = self._latent_size(net)
        steps = self.schedule.num_timesteps
        b, _, h, w = cond.shape
        sched = self.schedule.to(cond.device)
        dtype = torch.float64 if cond.dtype == torch.float64 else torch.float32
        cond = cond.to(dtype)
        image_shape = (b, 1, h, w)

        if x_T is not None:
            x = self._check_draw(x_T, image_shape, "x_T", cond)
        else:
            x = draw_normal(image_shape, device=cond.device, dtype=dtype, generator=generator)
        if z_per_step is not None:
            z_per_step = self._check_draw(z_per_step, (steps, b, nz), "z_per_step", cond)
        if noise_per_step is not None:
            noise_per_step = self._check_draw(noise_per_step, (steps, *image_shape), "noise_per_step", cond)

        x0_g1 = x0_g2 = x
        for k, step in enumerate(reversed(range(steps))):
            t = torch.full((b,), step, dtype=torch.long, device=cond.device)
            if z_per_step is not None:
                z = z_per_step[k]
            else:
                z = draw_normal((b, nz), device=cond.device, dtype=dtype, generator=generator)
            with torch.autocast(device_type=cond.device.type, dtype=torch.bfloat16, enabled=self.amp):
                if has_pair:
                    x0_g1, x0_g2 = net.predict_x0(x, cond, t, z)
                else:
                    x0_avg = net(torch.cat([cond, x], dim=1), t, z)
            if has_pair:
                x0_g1, x0_g2 = x0_g1.to(dtype), x0_g2.to(dtype)
                mean = 0.5 * (sched.posterior_mean(x0_g1, x, t) + sched.posterior_mean(x0_g2, x, t))
            else:
                mean = sched.posterior_mean(x0_avg.to(dtype), x, t)
            noise = noise_per_step[k] if noise_per_step is not None else None
            x = sched.add_posterior_noise(mean, t, noise=noise, generator=generator)

        if self.clip_output:
            x = x.clamp(-1.0, 1.0)
        return SamplerOutput(x, x0_g1, x0_g2) if return_x0 else x

    @torch.no_grad()
    def sample_statistics(
        self, inputs: torch.Tensor, network: Any, num_samples: int, generator: torch.Generator | None = None
    ) -> SampleStatistics:
        """Mean and standard deviation (Bessel-corrected; 0 when num_samples == 1) of ``num_samples`` independent
        samples for ``inputs`` (B, 3, H, W). Samples run one after another (memory of a single sample), with
        Welford's update so the variance stays accurate in float32. Uses ``self.seed`` like ``__call__``."""
        self._check_inputs(inputs)
        if int(num_samples) < 1:
            raise ValueError(f"MUDiffSampler.sample_statistics: num_samples must be >= 1, got {num_samples}.")
        if generator is None and self.seed is not None:
            generator = make_generator(self.seed, inputs.device)
        moments = RunningMoments()
        for _ in range(int(num_samples)):
            moments.update(self._sample(inputs, network, None, None, None, generator, False))
        return SampleStatistics(moments.mean, moments.std(), int(num_samples))
