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
* ``TimingProtocol`` and the named protocols are defined in :mod:`esr_eval.settings` (no torch, so
  a process can receive them without importing torch) and importable from here as before.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

# The protocols themselves are plain data, defined in the torch-free esr_eval.settings and re-exported here.
from esr_eval.settings import DEFAULT, OFFICIAL, PROTOCOLS, TimingProtocol, get_protocol  # noqa: F401


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


class LazyOutputError(TypeError):
    """A timed call returned something other than a plain dense tensor, whose work could run after the clock."""


def _require_plain(out) -> None:
    if type(out) is not torch.Tensor or out.layout != torch.strided:
        kind = type(out).__name__ if type(out) is not torch.Tensor else f"tensor with layout {out.layout}"
        raise LazyOutputError(f"the model returned a {kind}, not a plain dense torch.Tensor; work it defers would "
                              "run after the clock stops. Fix: return the output tensor itself")


def time_split(fn: Callable[[torch.Tensor], torch.Tensor], inputs: list[torch.Tensor],
               protocol: TimingProtocol, device: torch.device | str = "cpu",
               keep_output: Callable[[torch.Tensor], object] = lambda t: t) -> TimedSplit:
    """Run ``fn`` over ``inputs`` under ``protocol``.

    ``inputs`` stay where they are (decoded once, on the host); each is copied to ``device``
    just before its call, outside the timed region, so peak memory holds one image as in the
    official loop. ``keep_output`` converts repeat-0 outputs after the clock stops; every timed
    call must return a plain dense ``torch.Tensor`` (exact type, strided), so no deferred work can
    escape the clock (:class:`LazyOutputError` otherwise).
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
                _require_plain(out)
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
