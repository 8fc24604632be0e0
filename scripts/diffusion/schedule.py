"""The discrete variance-preserving (VP) schedule of MU-Diff (DDGAN "vp" discretisation, spec section 3).

With T = 4 steps the forward process is coarse: each step adds a lot of noise, and the generators predict x0
directly. The tables below reproduce the reference's float32 numbers bit for bit (``golden/schedule.pt``).

Precision path (chosen by comparing with the golden tables):
  1. time grid, variance and betas in float64;
  2. betas (with beta_0 = 1e-8 prepended) cast to float32;
  3. everything else derived from the float32 betas in float32 torch arithmetic, except ``sigmas_cum``,
     whose square root the reference takes with NumPy (correctly rounded); torch's float32 CPU ``sqrt``
     is 1 ulp away from it at index 4, so that one root is taken in float64 and rounded to float32.
Deriving everything in float64 and casting at the end instead is up to 1e-4 off (sigmas_cum[0] becomes
1e-4 instead of 0, so x_t would no longer equal x0 at t = 0).
"""

from __future__ import annotations

import torch
from torch import nn

from .draws import draw_normal

__all__ = ["VPSchedule"]

_TABLES_T_PLUS_1 = ("betas", "sigmas", "a_s", "a_s_cum", "sigmas_cum")
_TABLES_T = (
    "posterior_betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "posterior_std",
)


def _vp_betas(num_timesteps: int, beta_min: float, beta_max: float, eps: float, first_beta: float) -> torch.Tensor:
    """Betas (T+1,) float32: beta_0 = ``first_beta`` followed by the T discretised VP betas (computed in float64)."""
    i = torch.arange(num_timesteps + 1, dtype=torch.float64)
    t = eps + (1.0 - eps) * i / num_timesteps
    log_mean_coeff = -0.25 * t**2 * (beta_max - beta_min) - 0.5 * t * beta_min
    alpha_bars = torch.exp(2.0 * log_mean_coeff)  # = 1 - var(t)
    betas = 1.0 - alpha_bars[1:] / alpha_bars[:-1]
    first = torch.tensor([first_beta], dtype=torch.float64)
    return torch.cat([first, betas]).to(torch.float32)


def _extract(table: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """table[t] reshaped to (B, 1, ..., 1) so it broadcasts over a (B, ...) tensor with ``ndim`` dims."""
    return table[t].reshape(t.shape[0], *([1] * (ndim - 1)))


class VPSchedule(nn.Module):
    """Coefficients and sampling rules of the T-step VP diffusion used by MU-Diff.

    Tables (float32, non-persistent buffers so ``.to(device)`` moves them and checkpoints stay free of them):
      - indexed 0..T (T+1 values, index 0 is the prepended beta_0 = 1e-8): ``betas``, ``sigmas``, ``a_s``,
        ``a_s_cum``, ``sigmas_cum``;
      - indexed 0..T-1 (the generator's timestep index t): ``posterior_betas`` (= betas[1:]), ``alphas_cumprod``,
        ``alphas_cumprod_prev``, ``posterior_variance``, ``posterior_log_variance_clipped``,
        ``posterior_mean_coef1``, ``posterior_mean_coef2``, ``posterior_std`` (= exp(0.5 * log variance)).

    Args:
        num_timesteps: T, the number of diffusion steps.
        beta_min: beta at the start of the continuous VP SDE.
        beta_max: beta at its end.
        eps: smallest continuous time of the grid.
        first_beta: beta_0 prepended to the table (1e-8 in the reference).
    """

    def __init__(
        self,
        num_timesteps: int = 4,
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        eps: float = 1e-3,
        first_beta: float = 1e-8,
    ) -> None:
        super().__init__()
        if int(num_timesteps) < 1:
            raise ValueError(f"VPSchedule: num_timesteps must be >= 1, got {num_timesteps}.")
        if not 0.0 < beta_min < beta_max:
            raise ValueError(f"VPSchedule: need 0 < beta_min < beta_max, got beta_min={beta_min}, beta_max={beta_max}.")
        if not 0.0 < eps < 1.0:
            raise ValueError(f"VPSchedule: eps must be in (0, 1), got {eps}.")
        self.num_timesteps = int(num_timesteps)
        self.beta_min, self.beta_max, self.eps, self.first_beta = (
            float(beta_min),
            float(beta_max),
            float(eps),
            first_beta,
        )

        betas = _vp_betas(self.num_timesteps, self.beta_min, self.beta_max, self.eps, self.first_beta)
        # Forward-process tables, indexed 0..T.
        sigmas = betas**0.5
        a_s = torch.sqrt(1.0 - betas)
        a_s_cum = torch.cumprod(a_s, dim=0)
        sigmas_cum = torch.sqrt((1.0 - a_s_cum**2).to(torch.float64)).to(torch.float32)  # see module docstring
        # Posterior tables, indexed 0..T-1.
        post_betas = betas[1:]
        alphas = 1.0 - post_betas
        alphas_cumprod = torch.cumprod(alphas, dim=0)
        alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float32), alphas_cumprod[:-1]])
        posterior_variance = post_betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        posterior_log_variance_clipped = torch.log(posterior_variance.clamp(min=1e-20))
        tables = {
            "betas": betas,
            "sigmas": sigmas,
            "a_s": a_s,
            "a_s_cum": a_s_cum,
            "sigmas_cum": sigmas_cum,
            "posterior_betas": post_betas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "posterior_variance": posterior_variance,
            "posterior_log_variance_clipped": posterior_log_variance_clipped,
            "posterior_mean_coef1": post_betas * torch.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
            "posterior_mean_coef2": (1.0 - alphas_cumprod_prev) * torch.sqrt(alphas) / (1.0 - alphas_cumprod),
            "posterior_std": torch.exp(0.5 * posterior_log_variance_clipped),
        }
        for name in _TABLES_T_PLUS_1 + _TABLES_T:
            self.register_buffer(name, tables[name].clone(), persistent=False)

    def extra_repr(self) -> str:
        return f"num_timesteps={self.num_timesteps}, beta_min={self.beta_min}, beta_max={self.beta_max}, eps={self.eps}"

    def tables(self) -> dict[str, torch.Tensor]:
        """All coefficient tables by name (for inspection and tests)."""
        return {name: getattr(self, name) for name in _TABLES_T_PLUS_1 + _TABLES_T}

    # ----------------------------------------------------------------------------------------------- checks
    def _check_t(self, t: torch.Tensor | int, x: torch.Tensor, high: int, what: str) -> torch.Tensor:
        """Return t as a (B,) int64 tensor on x's device, or raise a clear error (shape, dtype or range)."""
        if x.ndim < 1:
            raise ValueError(f"VPSchedule.{what}: the image tensor needs a batch dimension, got a 0-d tensor.")
        batch = x.shape[0]
        if isinstance(t, int):
            t = torch.full((batch,), t, dtype=torch.long, device=x.device)
        if not isinstance(t, torch.Tensor) or t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex():
            raise TypeError(f"VPSchedule.{what}: t must be an integer tensor of shape ({batch},), got {t!r:.80}.")
        if t.shape != (batch,):
            raise ValueError(
                f"VPSchedule.{what}: t must have shape ({batch},) to match the batch, got {tuple(t.shape)}."
            )
        t = t.to(device=x.device, dtype=torch.long)
        if batch and (int(t.min()) < 0 or int(t.max()) > high):
            raise ValueError(f"VPSchedule.{what}: t must lie in [0, {high}], got values {t.tolist()}.")
        return t

    @staticmethod
    def _check_like(tensor: torch.Tensor, ref: torch.Tensor, name: str, what: str) -> torch.Tensor:
        if tuple(tensor.shape) != tuple(ref.shape):
            raise ValueError(
                f"VPSchedule.{what}: {name} must have the image's shape {tuple(ref.shape)}, got {tuple(tensor.shape)}."
            )
        return tensor.to(device=ref.device)

    def _noise(self, noise: torch.Tensor | None, x: torch.Tensor, name: str, what: str, generator) -> torch.Tensor:
        if noise is not None:
            return self._check_like(noise, x, name, what)
        dtype = x.dtype if x.dtype.is_floating_point else torch.float32
        return draw_normal(x.shape, device=x.device, dtype=dtype, generator=generator)

    # ----------------------------------------------------------------------------------------------- forward
    def q_sample(
        self,
        x0: torch.Tensor,
        t: torch.Tensor | int,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """x_t = a_s_cum[t] * x0 + sigmas_cum[t] * noise, for x0 (B, ...) and t (B,) in [0, T].

        At t = 0 the coefficients are exactly 1 and 0, so x_t equals x0 bit for bit.
        """
        t = self._check_t(t, x0, self.num_timesteps, "q_sample")
        noise = self._noise(noise, x0, "noise", "q_sample", generator)
        return _extract(self.a_s_cum, t, x0.ndim) * x0 + _extract(self.sigmas_cum, t, x0.ndim) * noise

    def q_sample_pairs(
        self,
        x0: torch.Tensor,
        t: torch.Tensor | int,
        noise_t: torch.Tensor | None = None,
        noise_tp1: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The training pair (x_t, x_{t+1}) for x0 (B, ...) and t (B,) in [0, T-1].

        x_t = a_s_cum[t] * x0 + sigmas_cum[t] * noise_t and x_{t+1} = a_s[t+1] * x_t + sigmas[t+1] * noise_tp1.
        Missing noises are drawn noise_tp1 FIRST, then noise_t, which is the reference's order, so a seeded run
        lines up with it.
        """
        t = self._check_t(t, x0, self.num_timesteps - 1, "q_sample_pairs")
        noise_tp1 = self._noise(noise_tp1, x0, "noise_tp1", "q_sample_pairs", generator)
        noise_t = self._noise(noise_t, x0, "noise_t", "q_sample_pairs", generator)
        x_t = self.q_sample(x0, t, noise=noise_t)
        x_tp1 = _extract(self.a_s, t + 1, x0.ndim) * x_t + _extract(self.sigmas, t + 1, x0.ndim) * noise_tp1
        return x_t, x_tp1

    # ----------------------------------------------------------------------------------------------- posterior
    def posterior_mean(self, x0_hat: torch.Tensor, x_tp1: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """Mean of q(x_t | x_{t+1}, x0 = x0_hat): coef1[t] * x0_hat + coef2[t] * x_{t+1}; shapes (B, ...)."""
        t = self._check_t(t, x0_hat, self.num_timesteps - 1, "posterior_mean")
        x_tp1 = self._check_like(x_tp1, x0_hat, "x_tp1", "posterior_mean")
        ndim = x0_hat.ndim
        return (
            _extract(self.posterior_mean_coef1, t, ndim) * x0_hat + _extract(self.posterior_mean_coef2, t, ndim) * x_tp1
        )

    def add_posterior_noise(
        self,
        mean: torch.Tensor,
        t: torch.Tensor | int,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """mean + 1[t > 0] * posterior_std[t] * noise. The noise is drawn even where t == 0 (then unused), as in
        the reference, so the random stream stays aligned with it."""
        t = self._check_t(t, mean, self.num_timesteps - 1, "add_posterior_noise")
        noise = self._noise(noise, mean, "noise", "add_posterior_noise", generator)
        nonzero = (t > 0).to(mean.dtype).reshape(t.shape[0], *([1] * (mean.ndim - 1)))
        return mean + nonzero * _extract(self.posterior_std, t, mean.ndim) * noise

    def sample_posterior(
        self,
        x0_hat: torch.Tensor,
        x_tp1: torch.Tensor,
        t: torch.Tensor | int,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """One draw of x_t ~ q(x_t | x_{t+1}, x0 = x0_hat); shapes (B, ...), t (B,) in [0, T-1].

        No noise is added where t == 0, so there the result is the posterior mean (coef1[0] * x0_hat).
        """
        return self.add_posterior_noise(self.posterior_mean(x0_hat, x_tp1, t), t, noise=noise, generator=generator)
