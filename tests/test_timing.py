"""Timing protocols on CPU: known sleeps, warm-up exclusion, repeat counts, the cold first call."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from esr_eval.timing import DEFAULT, OFFICIAL, get_protocol, summarize, time_split


class _Sleeper:
    """Sleeps ``cold_s`` on its first call, ``warm_s`` afterwards; counts calls."""

    def __init__(self, warm_s: float, cold_s: float | None = None):
        self.warm_s, self.cold_s, self.calls = warm_s, cold_s, 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        time.sleep(self.cold_s if self.calls == 1 and self.cold_s is not None else self.warm_s)
        return x * 2


def _inputs(n: int) -> list[torch.Tensor]:
    return [torch.full((1, 3, 4, 4), float(i)) for i in range(n)]


def test_known_sleep_is_measured_within_tolerance():
    timed = time_split(_Sleeper(0.02), _inputs(3), get_protocol("esr-default", repeats=3, warmup_passes=0))
    assert timed.latency_ms.shape == (3, 3)
    assert np.all(timed.latency_ms >= 20.0)
    assert np.median(timed.latency_ms) < 20.0 + 15.0  # sleep overshoot on a busy 2-core machine


def test_warmup_calls_are_excluded_and_repeats_honoured():
    model = _Sleeper(0.002, cold_s=0.2)
    protocol = get_protocol("esr-default", repeats=4, warmup_passes=1)
    timed = time_split(model, _inputs(5), protocol)
    assert model.calls == 5 * (1 + 4)
    assert timed.warmup_calls == 5 and timed.latency_ms.shape == (4, 5)
    assert timed.latency_ms.max() < 100.0  # the 200 ms cold call happened during warm-up


def test_official_protocol_times_the_cold_first_call():
    model = _Sleeper(0.002, cold_s=0.2)
    timed = time_split(model, _inputs(5), OFFICIAL)
    assert model.calls == 5 and timed.warmup_calls == 0
    assert timed.latency_ms.shape == (1, 5)
    assert timed.latency_ms[0, 0] >= 200.0
    summary = summarize(timed, OFFICIAL)
    assert summary.runtime_ms == pytest.approx(timed.latency_ms.mean())
    assert summary.runtime_ms > 40.0  # the cold call lifts the mean, as in the organisers' runs


def test_default_headline_is_mean_of_per_image_medians():
    model = _Sleeper(0.001)
    timed = time_split(model, _inputs(2), DEFAULT)
    summary = summarize(timed, DEFAULT)
    assert summary.runtime_ms == pytest.approx(np.median(timed.latency_ms, axis=0).mean())
    assert summary.mean_ms == pytest.approx(timed.latency_ms.mean())
    assert summary.p90_ms == pytest.approx(np.percentile(timed.latency_ms, 90))
    assert summary.n == 2 * DEFAULT.repeats


def test_outputs_come_from_the_timed_repeat_zero_and_are_converted():
    timed = time_split(lambda x: x + 1, _inputs(3), get_protocol("esr-default", repeats=2),
                       keep_output=lambda t: float(t.mean()))
    assert timed.outputs == (1.0, 2.0, 3.0)


def test_runs_under_inference_mode():
    seen = []
    time_split(lambda x: seen.append(torch.is_inference_mode_enabled()) or x, _inputs(1), OFFICIAL)
    assert seen == [True]


def test_protocol_ids_and_overrides():
    assert OFFICIAL.protocol_id == "official-v1" and DEFAULT.protocol_id == "esr-default-v1"
    assert get_protocol("official-v1") is OFFICIAL
    custom = get_protocol("esr-default", repeats=9)
    assert custom.repeats == 9 and custom.protocol_id != DEFAULT.protocol_id
    with pytest.raises(ValueError, match="unknown timing protocol"):
        get_protocol("fastest")
