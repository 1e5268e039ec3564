"""Timing protocols (named, versioned settings), device timers and raw latency samples.

Contract
--------
* ``official-v1`` is exactly what the organisers did: no warm-up, one timed call per image,
  the split runtime is the mean, and the first (cold) image is included.
* ``esr-default-v1`` (ours): ``warmup_passes`` untimed passes over every image of the split,
  then ``repeats`` timed passes (repeat-major: image 1..n, then again), the per-image median,
  and the split runtime is the mean of those medians. The official-style mean, the median,
  p90 and n are reported beside it.
* ``esr-default-v2`` is v1 with each pass (warm-up and timed) in a fresh random order, so a model
  cannot tell a timed call from an untimed one by its position; ``official-v1`` keeps file order.
* Two clocks per call. ``latency_ms``/``wall_ms`` are taken where the model runs (the sandbox,
  :mod:`esr_eval.sandbox_child`) around the adapter call only (pad/tile + model):
  CUDA events recorded around the call and synchronised after it (the host clock around the
  synchronised call is ``wall_ms``); CPU ``time.perf_counter_ns``. ``external_ms`` is taken by the
  evaluator's own process, which the submission cannot reach: request sent → output delivered
  (materialised, converted to uint8). The path's own cost is calibrated with a null model on the
  same path (:func:`calibrate_overhead`), and :func:`external_check` bounds the sandbox's figures
  by ``external_ms − overhead``: when they fall short by more than the larger of ``SLACK_MS``,
  ``SLACK_SHARE`` of the latency and the calibrated overhead itself (the path's noise grows with
  its cost: on a busy machine every wake-up waits for a core) on most images and in total, the
  split is ``timing_tampered`` and the external bound stands as its latency.
* Every timed call must return a plain dense ``torch.Tensor`` (:func:`require_plain`), so no
  deferred work can escape the clock; the call runs under ``torch.inference_mode()``.
  Latencies are milliseconds (float64).
* ``TimingProtocol`` and the named protocols are defined in :mod:`esr_eval.settings` (no torch, so
  a process can receive them without importing torch) and importable from here as before.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

# The protocols themselves are plain data, defined in the torch-free esr_eval.settings and re-exported here.
from esr_eval.settings import DEFAULT, OFFICIAL, PROTOCOLS, TimingProtocol, get_protocol  # noqa: F401


@dataclass(frozen=True)
class CallTiming:
    """One call: the output as kept, the sandbox's clocks and the evaluator's clock (ms)."""

    output: object
    latency_ms: float
    wall_ms: float
    external_ms: float


@dataclass(frozen=True)
class TimedSplit:
    """Raw samples of one split: arrays are [repeat, image]; outputs are from the first timed call
    of each image; ``warmup_external_ms`` is [warm-up pass, image]."""

    latency_ms: np.ndarray
    wall_ms: np.ndarray
    external_ms: np.ndarray
    outputs: tuple
    warmup_calls: int
    warmup_external_ms: np.ndarray | None = None


@dataclass(frozen=True)
class RuntimeSummary:
    runtime_ms: float
    mean_ms: float
    median_ms: float
    p90_ms: float
    n: int
    wall_mean_ms: float


@dataclass(frozen=True)
class ExternalCheck:
    """The sandbox's latencies against the evaluator's clock for one split."""

    bound_ms: np.ndarray  # [repeat, image]: external_ms − calibrated overhead, floored at 0
    excess_ms: float  # sum over images of (median bound − median latency)
    slack_ms: float
    images_short: int  # images whose median latency falls short of the bound by more than their slack
    tampered: bool

    def detail(self) -> str:
        return (f"the evaluator's clock bounds the latencies {self.excess_ms:.2f} ms above what the submission's "
                f"process reported (summed over image medians; allowed {self.slack_ms:.2f} ms), short on "
                f"{self.images_short} of {self.bound_ms.shape[1]} images")


SLACK_MS = 2.0
SLACK_SHARE = 0.25
CALIBRATION_CALLS = 5


def cpu_call(fn: Callable, x: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    start = time.perf_counter_ns()
    out = fn(x)
    elapsed_ms = (time.perf_counter_ns() - start) / 1e6
    return out, elapsed_ms, elapsed_ms


def cuda_call(fn: Callable, x: torch.Tensor) -> tuple[torch.Tensor, float, float]:
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


def require_plain(out) -> None:
    if type(out) is not torch.Tensor or out.layout != torch.strided:
        kind = type(out).__name__ if type(out) is not torch.Tensor else f"tensor with layout {out.layout}"
        raise LazyOutputError(f"the model returned a {kind}, not a plain dense torch.Tensor; work it defers would "
                              "run after the clock stops. Fix: return the output tensor itself")


def in_process(fn: Callable[[torch.Tensor], torch.Tensor], device: torch.device | str = "cpu",
               keep_output: Callable[[torch.Tensor], object] = lambda t: t) -> Callable[[object], CallTiming]:
    """A call for :func:`time_split` that runs ``fn`` in this process (``esr-eval check``, tests):
    the input is copied to ``device`` outside the clock, the output must be plain and is converted
    with ``keep_output`` after it; ``external_ms`` is the same process's host clock around it all."""
    device = torch.device(device)
    timer = cuda_call if device.type == "cuda" else cpu_call

    def call(x: torch.Tensor) -> CallTiming:
        started = time.perf_counter_ns()
        with torch.inference_mode():
            out, latency, wall = timer(fn, x.to(device))
        require_plain(out)
        kept = keep_output(out)
        return CallTiming(kept, latency, wall, (time.perf_counter_ns() - started) / 1e6)
    return call


def time_split(call: Callable[[object], CallTiming], inputs: list, protocol: TimingProtocol,
               rng: random.Random | None = None) -> TimedSplit:
    """Run ``call`` over ``inputs`` under ``protocol``: warm-up passes, then timed passes, each
    pass in file order or, for a shuffled protocol, in a fresh order drawn from ``rng`` (default:
    seeded by the OS)."""
    rng = random.Random() if rng is None else rng
    n = len(inputs)
    latency, wall, external = (np.zeros((protocol.repeats, n)) for _ in range(3))
    warm = np.zeros((protocol.warmup_passes, n))
    outputs: list = [None] * n

    def order() -> list[int]:
        return rng.sample(range(n), n) if protocol.shuffled else list(range(n))

    for rep in range(protocol.warmup_passes):
        for index in order():
            warm[rep, index] = call(inputs[index]).external_ms
    for repeat in range(protocol.repeats):
        for index in order():
            timing = call(inputs[index])
            latency[repeat, index], wall[repeat, index] = timing.latency_ms, timing.wall_ms
            external[repeat, index] = timing.external_ms
            if repeat == 0:
                outputs[index] = timing.output
    return TimedSplit(latency_ms=latency, wall_ms=wall, external_ms=external, outputs=tuple(outputs),
                      warmup_calls=protocol.warmup_passes * n, warmup_external_ms=warm)


def calibrate_overhead(null_call: Callable[[object], CallTiming], inputs: list, pixels: list[int],
                       calls: int = CALIBRATION_CALLS) -> np.ndarray:
    """The path's own cost per input (ms): ``external_ms − latency_ms`` of a null model on the same
    path, the median of ``calls`` calls at the smallest, median and largest input, then a straight
    line in the pixel count (one size: a constant)."""
    ranked = sorted(range(len(inputs)), key=lambda i: pixels[i])
    picks = sorted({ranked[0], ranked[len(ranked) // 2], ranked[-1]})
    xs, ys = [], []
    for index in picks:
        costs = []
        for _ in range(calls):
            timing = null_call(inputs[index])
            costs.append(max(timing.external_ms - timing.latency_ms, 0.0))
        xs.append(float(pixels[index]))
        ys.append(float(np.median(costs)))
    if len(set(xs)) == 1:
        return np.full(len(inputs), float(np.mean(ys)))
    slope, intercept = np.polyfit(xs, ys, 1)
    return np.maximum(intercept + slope * np.asarray(pixels, dtype=float), 0.0)


def external_check(timed: TimedSplit, overhead_ms: np.ndarray) -> ExternalCheck:
    """Bound the sandbox's latencies by the evaluator's clock (see the module docstring)."""
    bound = np.maximum(timed.external_ms - overhead_ms[None, :], 0.0)
    latency_med = np.median(timed.latency_ms, axis=0)
    short = np.median(bound, axis=0) - latency_med
    slack = np.maximum(np.maximum(SLACK_MS, SLACK_SHARE * latency_med), overhead_ms)
    images_short = int((short > slack).sum())
    excess, allowed = float(short.sum()), float(slack.sum())
    tampered = excess > allowed and 2 * images_short > short.size
    return ExternalCheck(bound_ms=bound, excess_ms=excess, slack_ms=allowed, images_short=images_short,
                         tampered=tampered)


def summarize(timed: TimedSplit, protocol: TimingProtocol, latency_ms: np.ndarray | None = None) -> RuntimeSummary:
    """Split runtime by the protocol's headline statistic, plus mean, median, p90, n; of
    ``latency_ms`` when given (the external bound of a tampered split), else the split's latencies."""
    latency = timed.latency_ms if latency_ms is None else latency_ms
    per_image_median = np.median(latency, axis=0)
    mean_ms = float(latency.mean())
    headline = mean_ms if protocol.headline == "mean" else float(per_image_median.mean())
    return RuntimeSummary(
        runtime_ms=headline,
        mean_ms=mean_ms,
        median_ms=float(np.median(latency)),
        p90_ms=float(np.percentile(latency, 90)),
        n=int(latency.size),
        wall_mean_ms=float(timed.wall_ms.mean()),
    )
