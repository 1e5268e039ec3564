"""Hygiene checks run on every evaluated submission, on a few images of the embedded split.

Contract: :func:`check_hygiene` never raises for a misbehaving model (a model that raises
here has already been timed successfully, so an exception propagates as an evaluation error);
it returns a :class:`HygieneReport` whose ``flags`` name every finding:
* ``input_mutated`` — the model changed its input tensor in place;
* ``nondeterministic`` — two calls on the same input differ by more than ``REPEAT_TOLERANCE``;
* ``nonfinite_output`` — NaN or Inf in the output;
* ``cache_suspect`` — a slightly perturbed copy of an input (one pixel, one grey level) gives
  a bit-identical output, or fresh copies run ``CACHE_SLOWDOWN``× slower than the input seen
  before (median of interleaved calls);
* ``data_range`` — the other data range (1.0 vs 255.0) scores more than
  ``DATA_RANGE_MARGIN_DB`` better than the declared one.
The scored output is the timed output by construction (evaluate.py scores repeat-0 outputs of
the timed calls), so no separate check is needed for that.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from esr_eval.adapter import ForwardAdapter
from esr_eval.quality import psnr_db

REPEAT_TOLERANCE = 1e-5
CACHE_SLOWDOWN = 3.0
DATA_RANGE_MARGIN_DB = 0.3
_TIMING_CALLS = 5


@dataclass(frozen=True)
class HygieneReport:
    input_mutated: bool
    repeat_max_abs_diff: float
    nonfinite_outputs: bool
    cache_suspect: bool
    cache_detail: str
    data_range_psnr_db: float | None
    other_data_range_psnr_db: float | None

    @property
    def data_range_flag(self) -> bool:
        if self.data_range_psnr_db is None or self.other_data_range_psnr_db is None:
            return False
        return self.other_data_range_psnr_db - self.data_range_psnr_db > DATA_RANGE_MARGIN_DB

    @property
    def flags(self) -> tuple[str, ...]:
        found = {
            "input_mutated": self.input_mutated,
            "nondeterministic": self.repeat_max_abs_diff > REPEAT_TOLERANCE,
            "nonfinite_output": self.nonfinite_outputs,
            "cache_suspect": self.cache_suspect,
            "data_range": self.data_range_flag,
        }
        return tuple(name for name, hit in found.items() if hit)


def _call_ms(adapter: ForwardAdapter, x: torch.Tensor) -> float:
    if x.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter_ns()
    adapter(x)
    if x.is_cuda:
        torch.cuda.synchronize()
    return (time.perf_counter_ns() - start) / 1e6


def _seen_and_fresh_ms(adapter: ForwardAdapter, seen: torch.Tensor, fresh: list[torch.Tensor]) -> tuple[float, float]:
    """Median latency of an input seen before and of fresh copies, calls interleaved so load hits both alike."""
    seen_ms, fresh_ms = [], []
    for copy in fresh:
        seen_ms.append(_call_ms(adapter, seen))
        fresh_ms.append(_call_ms(adapter, copy))
    return float(np.median(seen_ms)), float(np.median(fresh_ms))


def _mean_psnr(adapter: ForwardAdapter, pairs, device, scale: int) -> float:
    scores = []
    for lr, hr in pairs:
        sr = adapter.to_uint8(adapter(adapter.to_input(lr, device)))
        if sr.shape != hr.shape:
            raise ValueError(f"output shape {sr.shape} differs from HR {hr.shape}")
        scores.append(psnr_db(sr, hr, border=scale))
    return float(np.mean(scores))


def check_hygiene(adapter: ForwardAdapter, pairs: list[tuple[np.ndarray, np.ndarray]],
                  device: torch.device | str) -> HygieneReport:
    """Run every check on ``pairs`` of (LR uint8, HR uint8) images."""
    lr0 = pairs[0][0]
    with torch.inference_mode():
        x = adapter.to_input(lr0, device)
        pristine = x.clone()
        first = adapter(x)
        mutated = not torch.equal(x, pristine)
        second = adapter(pristine.clone())
        diff = float((first.float() - second.float()).abs().max()) if first.shape == second.shape else float("inf")
        nonfinite = not bool(torch.isfinite(first).all())

        step = adapter.data_range / 255.0
        perturbed = pristine.clone()
        perturbed[..., 0, 0] = torch.where(perturbed[..., 0, 0] + step <= adapter.data_range,
                                           perturbed[..., 0, 0] + step, perturbed[..., 0, 0] - step)
        identical = first.shape == (out := adapter(perturbed)).shape and torch.equal(out, first)
        fresh = [pristine + step * (i + 1) * (pristine < adapter.data_range - 2 * step) for i in range(_TIMING_CALLS)]
        seen_ms, fresh_ms = _seen_and_fresh_ms(adapter, pristine, fresh)
        slow = fresh_ms > CACHE_SLOWDOWN * seen_ms and fresh_ms - seen_ms > 1.0
        details = []
        if identical:
            details.append("a one-level change of one input pixel left the output bit-identical")
        if slow:
            details.append(f"an input seen before ran in {seen_ms:.2f} ms, fresh copies in {fresh_ms:.2f} ms")

        own = _mean_psnr(adapter, pairs, device, adapter.scale)
        other = ForwardAdapter(adapter.model, adapter.spec, adapter.scale, 255.0 if adapter.data_range == 1.0 else 1.0)
        try:
            other_psnr = _mean_psnr(other, pairs, device, adapter.scale)
        except (ValueError, RuntimeError):  # e.g. NaN under a range the model was not built for
            other_psnr = None
    return HygieneReport(
        input_mutated=mutated,
        repeat_max_abs_diff=diff,
        nonfinite_outputs=nonfinite,
        cache_suspect=bool(details),
        cache_detail="; ".join(details),
        data_range_psnr_db=own,
        other_data_range_psnr_db=other_psnr,
    )
