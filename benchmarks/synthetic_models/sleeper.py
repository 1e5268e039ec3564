"""A synthetic ×4 submission whose inference is a fixed sleep: the scheduling benchmark's workload.

Contract: ``Sleeper(sleep_s, upscale=4)`` has no parameters. Its first ``forward`` sleeps
``sleep_s`` seconds (wall clock, no CPU used), every call returns nearest-neighbour ×``upscale``
of the input. Only the first call sleeps, so the complexity counters that run the model again
after inference add no sleep: a submission's designed busy time is exactly ``sleep_s`` plus the
evaluation's own fixed work.
"""

import time

import torch
import torch.nn.functional as F
from torch import nn


class Sleeper(nn.Module):
    def __init__(self, sleep_s: float, upscale: int = 4):
        super().__init__()
        self.sleep_s = float(sleep_s)
        self.upscale = upscale
        self.slept = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.slept:
            self.slept = True
            time.sleep(self.sleep_s)
        return F.interpolate(x, scale_factor=self.upscale, mode="nearest")
