"""Timing protocols on CPU: known sleeps, warm-up exclusion, repeat counts, the cold first call,
shuffled pass order, the overhead calibration and the external clock's verdict."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest
import torch

from esr_eval.timing import (
    DEFAULT,
    OFFICIAL,
    CallTiming,
    TimedSplit,
    calibrate_overhead,
    external_check,
    get_protocol,
    in_process,
    summarize,
    time_split,
)


class _Sleeper:
    """Sleeps ``cold_s`` on its first call, ``warm_s`` afterwards; counts calls and their inputs."""

    def __init__(self, warm_s: float, cold_s: float | None = None):
        self.warm_s, self.cold_s, self.calls, self.seen = warm_s, cold_s, 0, []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.seen.append(float(x.flatten()[0]))
        time.sleep(self.cold_s if self.calls == 1 and self.cold_s is not None else self.warm_s)
        return x * 2


def _inputs(n: int) -> list[torch.Tensor]:
    return [torch.full((1, 3, 4, 4), float(i)) for i in range(n)]


def test_known_sleep_is_measured_within_tolerance():
    timed = time_split(in_process(_Sleeper(0.02)), _inputs(3), get_protocol("esr-default", repeats=3, warmup_passes=0))
    assert timed.latency_ms.shape == (3, 3)
    assert np.all(timed.latency_ms >= 20.0)
    assert np.median(timed.latency_ms) < 20.0 + 15.0  # sleep overshoot on a busy 2-core machine
    assert np.all(timed.external_ms >= timed.latency_ms)


def test_warmup_calls_are_excluded_and_repeats_honoured():
    model = _Sleeper(0.002, cold_s=0.2)
    protocol = get_protocol("esr-default", repeats=4, warmup_passes=1)
    timed = time_split(in_process(model), _inputs(5), protocol)
    assert model.calls == 5 * (1 + 4)
    assert timed.warmup_calls == 5 and timed.latency_ms.shape == (4, 5)
    assert timed.warmup_external_ms.shape == (1, 5) and timed.warmup_external_ms.max() >= 200.0
    assert timed.latency_ms.max() < 100.0  # the 200 ms cold call happened during warm-up


def test_official_protocol_times_the_cold_first_call_in_file_order():
    model = _Sleeper(0.002, cold_s=0.2)
    timed = time_split(in_process(model), _inputs(5), OFFICIAL)
    assert model.calls == 5 and timed.warmup_calls == 0
    assert model.seen == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert timed.latency_ms.shape == (1, 5)
    assert timed.latency_ms[0, 0] >= 200.0
    summary = summarize(timed, OFFICIAL)
    assert summary.runtime_ms == pytest.approx(timed.latency_ms.mean())
    assert summary.runtime_ms > 40.0  # the cold call lifts the mean, as in the organisers' runs


def test_default_protocol_draws_a_fresh_order_for_every_pass():
    model = _Sleeper(0.0)
    n = 8
    time_split(in_process(model), _inputs(n), DEFAULT, rng=random.Random(3))
    passes = [model.seen[i * n:(i + 1) * n] for i in range(1 + DEFAULT.repeats)]
    assert all(sorted(p) == [float(i) for i in range(n)] for p in passes)  # every image once per pass
    assert len({tuple(p) for p in passes}) == len(passes)  # no two passes in the same order
    assert DEFAULT.protocol_id == "esr-default-v2" and DEFAULT.shuffled and not OFFICIAL.shuffled


def test_default_headline_is_mean_of_per_image_medians():
    timed = time_split(in_process(_Sleeper(0.001)), _inputs(2), DEFAULT)
    summary = summarize(timed, DEFAULT)
    assert summary.runtime_ms == pytest.approx(np.median(timed.latency_ms, axis=0).mean())
    assert summary.mean_ms == pytest.approx(timed.latency_ms.mean())
    assert summary.p90_ms == pytest.approx(np.percentile(timed.latency_ms, 90))
    assert summary.n == 2 * DEFAULT.repeats


def test_outputs_come_from_the_first_timed_call_of_each_image_and_are_converted():
    timed = time_split(in_process(lambda x: x + 1, keep_output=lambda t: float(t.mean())), _inputs(3),
                       get_protocol("esr-default", repeats=2))
    assert timed.outputs == (1.0, 2.0, 3.0)


def test_runs_under_inference_mode_and_refuses_lazy_outputs():
    seen = []
    time_split(in_process(lambda x: seen.append(torch.is_inference_mode_enabled()) or x), _inputs(1), OFFICIAL)
    assert seen == [True]
    with pytest.raises(TypeError, match="plain dense torch.Tensor"):
        time_split(in_process(lambda x: [x]), _inputs(1), OFFICIAL)


def _timed(latency: np.ndarray, external: np.ndarray) -> TimedSplit:
    return TimedSplit(latency_ms=latency, wall_ms=latency, external_ms=external, outputs=(), warmup_calls=0)


def test_external_check_accepts_honest_latencies_within_the_overhead_noise():
    rng = np.random.default_rng(0)
    latency = np.full((5, 10), 20.0) + rng.uniform(0, 1, (5, 10))
    overhead = np.full(10, 3.0)
    external = latency + overhead + rng.uniform(-1.5, 2.5, (5, 10))  # the path's noise, up to its own cost
    check = external_check(_timed(latency, external), overhead)
    assert not check.tampered and check.images_short == 0


def test_external_check_flags_a_stopped_clock_and_the_bound_stands():
    real_ms, overhead = 100.0, np.full(10, 3.0)
    latency = np.full((5, 10), 0.03)  # what a patched perf_counter_ns reports
    external = np.full((5, 10), real_ms) + overhead
    check = external_check(_timed(latency, external), overhead)
    assert check.tampered and check.images_short == 10
    assert check.bound_ms == pytest.approx(np.full((5, 10), real_ms))
    assert summarize(_timed(latency, external), DEFAULT, check.bound_ms).runtime_ms == pytest.approx(real_ms)
    assert "above what the submission's process reported" in check.detail()


def test_external_check_needs_most_images_short_not_one_hiccup():
    latency = np.full((5, 10), 20.0)
    overhead = np.full(10, 3.0)
    external = latency + overhead
    external[:, 0] += 500.0  # one image stalled in every repeat (a busy neighbour), the rest agree
    assert not external_check(_timed(latency, external), overhead).tampered


def test_calibration_fits_the_null_path_cost_per_pixel():
    def null(x):  # cost 1 ms + 1 ms per 1000 pixels on the path, 0.01 ms "model"
        px = x.shape[-1] * x.shape[-2]
        return CallTiming(None, 0.01, 0.01, 0.01 + 1.0 + px / 1000)
    inputs = [np.zeros((1, 3, h, h), np.float32) for h in (10, 40, 20, 80)]
    pixels = [h * h for h in (10, 40, 20, 80)]
    overhead = calibrate_overhead(null, inputs, pixels, calls=3)
    assert overhead == pytest.approx([1.1, 2.6, 1.4, 7.4], abs=0.01)


def test_protocol_ids_and_overrides():
    assert OFFICIAL.protocol_id == "official-v1"
    assert get_protocol("official-v1") is OFFICIAL
    custom = get_protocol("esr-default", repeats=9)
    assert custom.repeats == 9 and custom.protocol_id != DEFAULT.protocol_id and custom.shuffled
    with pytest.raises(ValueError, match="unknown timing protocol"):
        get_protocol("fastest")
