"""Loss terms of the MU-Diff training step (spec section 4), as plain functions so each can be tested alone."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def critic_real_loss(real_logit: torch.Tensor) -> torch.Tensor:
    """Non-saturating loss pushing the critic's logit up on real (x_t, x_t+1) pairs."""
    return F.softplus(-real_logit).mean()


def critic_fake_loss(fake_logit: torch.Tensor) -> torch.Tensor:
    """Non-saturating loss pushing the critic's logit down on generated pairs."""
    return F.softplus(fake_logit).mean()


def generator_adversarial_loss(fake_logit: torch.Tensor) -> torch.Tensor:
    """The generator wants its posterior sample to be judged real."""
    return F.softplus(-fake_logit).mean()


def r1_penalty(real_logit: torch.Tensor, x_t: torch.Tensor, gamma: float) -> torch.Tensor:
    """(gamma / 2) * mean_b ||d sum(D_real) / d x_t||^2, kept differentiable for the critic update.

    Not rescaled by the lazy-regularisation interval: the reference applies it as is every ``lazy_reg`` steps.
    """
    (grad,) = torch.autograd.grad(real_logit.sum(), x_t, create_graph=True)
    return 0.5 * gamma * grad.float().pow(2).flatten(1).sum(1).mean()


def mutual_consistency_loss(
    sample_1: torch.Tensor, sample_2: torch.Tensor, map_1: torch.Tensor, map_2: torch.Tensor
) -> torch.Tensor:
    """Pull each generator's posterior sample towards the other's, where the critic map of the *other* looks.

    mean[M2 * BCE(x_p1, sigmoid(x_p2))] + mean[M1 * BCE(x_p2, sigmoid(x_p1))], with BCE taking logits.
    Neither targets nor maps are detached, as in the reference.
    """
    bce_12 = F.binary_cross_entropy_with_logits(sample_1, torch.sigmoid(sample_2), reduction="none")
    bce_21 = F.binary_cross_entropy_with_logits(sample_2, torch.sigmoid(sample_1), reduction="none")
    return (map_2 * bce_12).mean() + (map_1 * bce_21).mean()
