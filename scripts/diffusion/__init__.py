"""MU-Diff diffusion: the T-step VP schedule, its forward/posterior rules and the two-generator reverse sampler."""

from .draws import draw_normal, make_generator
from .sampler import MUDiffSampler, SamplerOutput, SampleStatistics
from .schedule import VPSchedule

__all__ = ["MUDiffSampler", "SampleStatistics", "SamplerOutput", "VPSchedule", "draw_normal", "make_generator"]
