"""Timing protocols (named, versioned settings), device timers and raw latency samples.

Contract
--------
* ``official-v1`` is exactly what the organisers did: no warm-up, one timed call per image,
  the split runtime is the mean, and the first (cold) image is included.
* ``esr-default-v1`` (ours): ``warmup_passes`` untimed passes over every image of the split,
  then ``repeats`` timed passes (repeat-major: image 1..n, then again), the per-image median,
  and the split runtime is the mean of those medians. The official-style mean, the median,
  p90 and n are reported beside it.
* The timed region is the adapter call only (pad/tile + model). Inputs are already on the
  device; outputs are converted after the clock stops.
  CUDA: events recorded around the call, synchronised after it; the host clock
  (``perf_counter_ns`` around a synchronised call) is kept beside it as ``wall_ms``.
  CPU: ``time.perf_counter_ns``; the torch thread count is fixed by the caller and recorded.
* Everything runs under ``torch.inference_mode()``; latencies are milliseconds (float64).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch


@dataclass(frozen=True)
class TimingProtocol:
    name: str
    version: int
    warmup_passes: int
    repeats: int
    headline: str  # "mean" (official) or "mean_of_image_medians"
    description: str

    @property
    def protocol_id(self) -> str:
        return f"{self.name}-v{self.version}"


OFFICIAL = TimingProtocol(
    "official", 1, warmup_passes=0, repeats=1, headline="mean",
    description="as the organisers' script: no warm-up, one timed call per image, mean, cold first image included")
DEFAULT = TimingProtocol(
    "esr-default", 1, warmup_passes=1, repeats=5, headline="mean_of_image_medians",
    description="one untimed pass over the split, then 5 timed passes; split runtime = mean of per-image medians")
PROTOCOLS = {p.protocol_id: p for p in (OFFICIAL, DEFAULT)}
PROTOCOLS.update({p.name: p for p in (OFFICIAL, DEFAULT)})


def get_protocol(name: str, repeats: int | None = None, warmup_passes: int | None = None) -> TimingProtocol:
    """A protocol by name or id; overriding repeats/warm-up gives a ``custom`` variant, recorded as such."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown timing protocol {name!r}; choose one of {sorted(PROTOCOLS)}")
    base = PROTOCOLS[name]
    if repeats is None and warmup_passes is None:
        return base
    repeats = base.repeats if repeats is None else repeats
    warmup = base.warmup_passes if warmup_passes is None else warmup_passes
    if repeats < 1 or warmup < 0:
        raise ValueError("repeats must be >= 1 and warm-up passes >= 0")
    return TimingProtocol(f"{base.name}-w{warmup}r{repeats}", base.version, warmup, repeats, base.headline,
                          f"{base.description} (overridden: {warmup} warm-up passes, {repeats} repeats)")


@dataclass(frozen=True)
class TimedSplit:
    """Raw samples of one split: arrays are [repeat, image]; outputs are from repeat 0."""

    latency_ms: np.ndarray
    wall_ms: np.ndarray
    outputs: tuple
    warmup_calls: int


@dataclass(frozen=True)
class RuntimeSummary:
    runtime_ms: float
    mean_ms: float
    median_ms: float
    p90_ms: float
    n: int
    wall_mean_ms: float


def _cpu_call(fn: Callable, x: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    start = time.perf_counter_ns()
    out = fn(x)
    elapsed_ms = (time.perf_counter_ns() - start) / 1e6
    return out, elapsed_ms, elapsed_ms


def _cuda_call(fn: Callable, x: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    start_event = torch.cuda.Event(enable_timing=True)
    end_event = torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    wall_start = time.perf_counter_ns()
    start_event.record()
    out = fn(x)
    end_event.record()
    torch.cuda.synchronize()
    wall_ms = (time.perf_counter_ns() - wall_start) / 1e6
    return out, start_event.elapsed_time(end_event), wall_ms


def time_split(fn: Callable[[torch.Tensor], torch.Tensor], inputs: list[torch.Tensor],
               protocol: TimingProtocol, device: torch.device | str = "cpu",
               keep_output: Callable[[torch.Tensor], object] = lambda t: t) -> TimedSplit:
    """Run ``fn`` over ``inputs`` under ``protocol``.

    ``inputs`` stay where they are (decoded once, on the host); each is copied to ``device``
    just before its call, outside the timed region, so peak memory holds one image as in the
    official loop. ``keep_output`` converts repeat-0 outputs after the clock stops.
    """
    device = torch.device(device)
    call = _cuda_call if device.type == "cuda" else _cpu_call
    n = len(inputs)
    latency = np.zeros((protocol.repeats, n))
    wall = np.zeros((protocol.repeats, n))
    outputs: list = []
    with torch.inference_mode():
        for _ in range(protocol.warmup_passes):
            for x in inputs:
                fn(x.to(device))
        for repeat in range(protocol.repeats):
            for index, x in enumerate(inputs):
                out, latency[repeat, index], wall[repeat, index] = call(fn, x.to(device))
                if repeat == 0:
                    outputs.append(keep_output(out))
                del out
    return TimedSplit(latency_ms=latency, wall_ms=wall, outputs=tuple(outputs),
                      warmup_calls=protocol.warmup_passes * n)


def summarize(timed: TimedSplit, protocol: TimingProtocol) -> RuntimeSummary:
    """Split runtime by the protocol's headline statistic, plus mean, median, p90, n."""
    per_image_median = np.median(timed.latency_ms, axis=0)
    mean_ms = float(timed.latency_ms.mean())
    headline = mean_ms if protocol.headline == "mean" else float(per_image_median.mean())
    return RuntimeSummary(
        runtime_ms=headline,
        mean_ms=mean_ms,
        median_ms=float(np.median(timed.latency_ms)),
        p90_ms=float(np.percentile(timed.latency_ms, 90)),
        n=int(timed.latency_ms.size),
        wall_mean_ms=float(timed.wall_ms.mean()),
    )
