"""Running mean and standard deviation of samples (Welford's update), shared by every multi-sample path."""

from __future__ import annotations

import torch

__all__ = ["RunningMoments"]


class RunningMoments:
    """Accumulate samples one at a time; the variance stays accurate in float32 (no sum of squares), and only one
    sample's worth of memory is kept beside the mean."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: torch.Tensor | None = None
        self._m2: torch.Tensor | None = None

    def update(self, sample: torch.Tensor) -> None:
        self.count += 1
        if self.mean is None:
            self.mean, self._m2 = sample.clone(), torch.zeros_like(sample)
            return
        delta = sample - self.mean
        self.mean += delta / self.count
        self._m2 += delta * (sample - self.mean)

    def std(self) -> torch.Tensor:
        """Bessel-corrected standard deviation; zeros after a single sample."""
        if self.mean is None:
            raise ValueError("RunningMoments.std: no sample yet")
        if self.count == 1:
            return torch.zeros_like(self.mean)
        return (self._m2 / (self.count - 1)).clamp_min(0).sqrt()
