"""MU-Diff diffusion: the T-step VP schedule, its forward/posterior rules and the two-generator reverse sampler."""

from .draws import draw_normal, draw_timesteps, make_generator
from .schedule import VPSchedule

__all__ = ["VPSchedule", "draw_normal", "draw_timesteps", "make_generator"]
