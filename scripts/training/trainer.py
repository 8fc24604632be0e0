"""The MU-Diff adversarial-diffusion trainer: one critic step and one combined G1+G2 step per iteration."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from monai.engines import Trainer
from monai.engines.utils import IterationEvents, default_metric_cmp_fn, default_prepare_batch
from monai.utils import CommonKeys as Keys
from scripts.cli_args import parse_float, parse_int
from scripts.errors import UserError
from scripts.networks.wrappers import unwrap
from torch import nn
from torch.optim import Optimizer

from .losses import critic_fake_loss, critic_real_loss, generator_adversarial_loss, mutual_consistency_loss, r1_penalty


class TrainingSettingError(UserError, ValueError):
    """A training setting out of range or not a number (``--lambda_l1 abc``)."""


class NonFiniteLossError(UserError, FloatingPointError):
    """A loss became NaN or infinite; raised so the run stops before a bad state is checkpointed."""


class MUDiffTrainer(Trainer):
    """Ignite trainer for MU-Diff (spec section 4), firing MONAI's iteration events so handlers can attach.

    Each iteration takes ``image`` (B,3,H,W) conditioning contrasts and ``label`` (B,1,H,W) target, in [-1,1]:

    1. critic step: softplus real term on (x_t, x_t+1) from q(x_t, x_t+1 | x_0), the R1 penalty on x_t every
       ``lazy_reg`` iterations (counted from 0, as the reference's global step), softplus fake terms on both
       generators' posterior samples (generated without gradients: the same critic update as the reference's
       non-detached fakes, without the wasted graph);
    2. generator step on fresh (t, x_t, x_t+1, z): adversarial terms of both generators
       + ``lambda_l1`` * L1 of both x0 estimates + ``lambda_mask`` * the critic-map-weighted mutual consistency.

    Args:
        generator_pair: ``GeneratorPair`` (possibly DDP-wrapped) returning both generators' x0 estimates.
        critic: ``TimeConditionedCritic`` (possibly DDP-wrapped), returning (logit, features).
        uncertainty: ``CriticUncertaintyMap`` turning critic features into a (B,1,H,W) map.
        schedule: ``VPSchedule`` giving forward pairs and posterior samples.
        g_optimizer: optimizer over both generators (and the uncertainty projection when it is trainable).
        d_optimizer: optimizer over the critic.
        amp: bf16 autocast of the forward passes (CUDA, and CPUs: fast where they have bf16 units,
            e.g. AVX512-BF16/AMX; emulated and slower elsewhere). The diffusion arithmetic stays float32.
        decollate: split the output per sample, as MONAI's trainers do, so stock handlers (MLflow's default
            ``from_engine(['loss'], first=True)``) read scalars from it.
        ema: an optional ``GeneratorEMA`` attached to this trainer (kept out of ``train_handlers`` so tools that
            read that list, such as MONAI's property checks and MONAI Label, see only ``_target_`` entries).
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        generator_pair: nn.Module,
        critic: nn.Module,
        uncertainty: nn.Module,
        schedule: nn.Module,
        g_optimizer: Optimizer,
        d_optimizer: Optimizer,
        nz: int = 100,
        lambda_adv: float = 1.0,
        lambda_l1: float = 0.5,
        lambda_mask: float = 0.1,
        r1_gamma: float = 1.0,
        lazy_reg: int = 10,
        amp: bool = False,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        prepare_batch: Callable = default_prepare_batch,
        key_train_metric: dict | None = None,
        additional_metrics: dict | None = None,
        metric_cmp_fn: Callable = default_metric_cmp_fn,
        train_handlers: Sequence | None = None,
        decollate: bool = True,
        ema: Any = None,
    ) -> None:
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=prepare_batch,
            key_metric=key_train_metric,
            additional_metrics=additional_metrics,
            metric_cmp_fn=metric_cmp_fn,
            handlers=train_handlers,
            amp=False,
            decollate=decollate,
        )
        lazy_reg = parse_int(lazy_reg, "lazy_reg", TrainingSettingError, minimum=0)  # 0 disables R1
        lambda_adv, lambda_l1, lambda_mask, r1_gamma = (
            parse_float(v, n, TrainingSettingError, minimum=0.0, finite=False)  # NaN: a NaN loss, stopped at once
            for v, n in (
                (lambda_adv, "lambda_adv"),
                (lambda_l1, "lambda_l1"),
                (lambda_mask, "lambda_mask"),
                (r1_gamma, "r1_gamma"),
            )  # fmt: skip
        )
        self.generator_pair = generator_pair
        self.critic = critic
        self.uncertainty = uncertainty
        self.schedule = schedule
        self.g_optimizer = g_optimizer
        self.d_optimizer = d_optimizer
        self.nz = nz
        self.lambda_adv = lambda_adv
        self.lambda_l1 = lambda_l1
        self.lambda_mask = lambda_mask
        self.r1_gamma = r1_gamma
        self.lazy_reg = lazy_reg
        self.amp = bool(amp)
        self.ema = ema
        if ema is not None:
            ema.attach(self)
        # The trainer itself is checkpointed through ignite's state_dict: epoch and iteration.

    def _autocast(self, device: torch.device) -> torch.autocast:
        enabled = self.amp and device.type in ("cuda", "cpu")
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)

    def _draw(self, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """t ~ U{0..T-1}, the forward pair (x_t, x_t+1) and one latent per sample, from the global RNG."""
        batch = x0.shape[0]
        t = torch.randint(0, self.schedule.num_timesteps, (batch,), device=x0.device)
        x_t, x_tp1 = self.schedule.q_sample_pairs(x0, t)
        z = torch.randn(batch, self.nz, device=x0.device)
        return t, x_t, x_tp1, z

    def _check_finite(self, engine: MUDiffTrainer, **losses: torch.Tensor) -> None:
        bad = {k: float(v.detach()) for k, v in losses.items() if not math.isfinite(float(v.detach()))}
        if bad:
            raise NonFiniteLossError(
                f"non-finite loss at iteration {engine.state.iteration} (epoch {engine.state.epoch}): {bad}. "
                "Training stopped; the last resume checkpoint (written at the end of the last complete epoch) "
                "is kept unchanged."
            )

    def critic_step(self, cond: torch.Tensor, x0: torch.Tensor, apply_r1: bool) -> dict[str, torch.Tensor]:
        """One critic update on (B,3,H,W) conditioning and (B,1,H,W) targets; returns the detached loss terms."""
        critic_raw = unwrap(self.critic)
        pair_raw = unwrap(self.generator_pair)
        critic_raw.requires_grad_(True)
        self.d_optimizer.zero_grad(set_to_none=True)
        t, x_t, x_tp1, z = self._draw(x0)
        x_t = x_t.detach().requires_grad_(True)
        with self._autocast(x0.device):
            real_logit, _ = self.critic(x_t, x_tp1, t)
            d_real = critic_real_loss(real_logit.float())
        d_r1 = r1_penalty(real_logit, x_t, self.r1_gamma) if apply_r1 else torch.zeros((), device=x0.device)
        with torch.no_grad(), self._autocast(x0.device):
            x0_g1, x0_g2 = pair_raw(x_tp1, cond, t, z)
            fake_1 = self.schedule.sample_posterior(x0_g1.float(), x_tp1, t)
            fake_2 = self.schedule.sample_posterior(x0_g2.float(), x_tp1, t)
        with self._autocast(x0.device):
            # separate critic calls, as the reference: the minibatch-stddev statistic is taken per call
            fake_logit_1, _ = self.critic(fake_1, x_tp1, t)
            fake_logit_2, _ = self.critic(fake_2, x_tp1, t)
            d_fake = critic_fake_loss(fake_logit_1.float()) + critic_fake_loss(fake_logit_2.float())
        d_loss = d_real + d_r1 + d_fake
        self._check_finite(self, d_loss=d_loss)
        d_loss.backward()
        self.d_optimizer.step()
        return {"d_loss": d_loss.detach(), "d_real": d_real.detach(), "d_fake": d_fake.detach(), "d_r1": d_r1.detach()}

    def generator_step(self, cond: torch.Tensor, x0: torch.Tensor) -> dict[str, torch.Tensor]:
        """One combined G1 + G2 update; returns the detached loss terms and ``pred``, the averaged x0 estimate."""
        critic_raw = unwrap(self.critic)
        critic_raw.requires_grad_(False)
        self.g_optimizer.zero_grad(set_to_none=True)
        t, x_t, x_tp1, z = self._draw(x0)
        size = tuple(x0.shape[-2:])
        with self._autocast(x0.device):
            x0_g1, x0_g2 = self.generator_pair(x_tp1, cond, t, z)
            x0_g1, x0_g2 = x0_g1.float(), x0_g2.float()
            sample_1 = self.schedule.sample_posterior(x0_g1, x_tp1, t)
            sample_2 = self.schedule.sample_posterior(x0_g2, x_tp1, t)
            self.fire_event(IterationEvents.FORWARD_COMPLETED)
            # the critic is frozen here: calling the unwrapped module keeps DDP out of a step it takes no part in
            logit_1, features_1 = critic_raw(sample_1, x_tp1, t)
            logit_2, features_2 = critic_raw(sample_2, x_tp1, t)
            map_1 = self.uncertainty(features_1.float(), size)
            map_2 = self.uncertainty(features_2.float(), size)
            g_adv = generator_adversarial_loss(logit_1.float()) + generator_adversarial_loss(logit_2.float())
            g_l1 = (x0_g1 - x0).abs().mean() + (x0_g2 - x0).abs().mean()
            g_mask = mutual_consistency_loss(sample_1, sample_2, map_1, map_2)
            g_loss = self.lambda_adv * g_adv + self.lambda_l1 * g_l1 + self.lambda_mask * g_mask
        self._check_finite(self, g_loss=g_loss)
        self.fire_event(IterationEvents.LOSS_COMPLETED)
        g_loss.backward()
        self.fire_event(IterationEvents.BACKWARD_COMPLETED)
        self.g_optimizer.step()
        pred = ((x0_g1 + x0_g2) / 2).detach()
        return {
            "g_loss": g_loss.detach(),
            "g_adv": g_adv.detach(),
            "g_l1": g_l1.detach(),
            "g_mask": g_mask.detach(),
            "pred": pred,
        }

    def _iteration(self, engine: MUDiffTrainer, batchdata: dict[str, Any]) -> dict[str, Any] | list[dict[str, Any]]:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        cond, x0 = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking)[:2]
        if cond.ndim != 4 or x0.ndim != 4 or x0.shape[1] != 1:
            raise ValueError(
                f"expected image (B,C,H,W) and label (B,1,H,W), got {tuple(cond.shape)} and {tuple(x0.shape)}"
            )
        engine.generator_pair.train()
        engine.critic.train()
        global_step = engine.state.iteration - 1  # the reference's global_step counts from 0
        apply_r1 = engine.lazy_reg > 0 and global_step % engine.lazy_reg == 0
        losses = engine.critic_step(cond, x0, apply_r1)
        losses.update(engine.generator_step(cond, x0))
        pred = losses.pop("pred")
        scalars = {k: v.item() for k, v in losses.items() if k != "d_r1" or apply_r1}  # R1: only where it ran
        engine.state.output = {
            Keys.IMAGE: cond,
            Keys.LABEL: x0,
            Keys.PRED: pred,
            Keys.LOSS: scalars["g_loss"],
            **scalars,
        }
        # MONAI decollates engine.state.output on MODEL_COMPLETED, so the output must be in place before it fires
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
