"""Hygiene checks: each finding is raised by a model built to cause it, and a clean model passes.

Timing-based findings are tested without wall-clock thresholds: the cache models' stored answers
are orders of magnitude faster than their real work, the clean model runs with a busy loop on
every core, and the confirmation's decision rule is tested on simulated latencies.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from esr_eval import hygiene
from esr_eval.adapter import ForwardAdapter
from esr_eval.data import embedded_split, load_pair
from esr_eval.hygiene import CACHE_SLOWDOWN, CONFIRM_CHANCE_BOUND, check_hygiene
from esr_eval.manifest import AdapterSpec

LOADED_RUNS = 8


def _up(x):
    return torch.nn.functional.interpolate(x, scale_factor=4, mode="bicubic", align_corners=False)


class Clean(nn.Module):
    def forward(self, x):
        return _up(x)


class MutatesInput(nn.Module):
    def forward(self, x):
        x.mul_(1.0001)
        return _up(x)


class Noisy(nn.Module):
    def forward(self, x):
        return _up(x) + torch.rand_like(_up(x)) * 1e-3


class Caching(nn.Module):
    """Returns its first answer again for any input of the same shape."""

    def __init__(self):
        super().__init__()
        self.cache = {}

    def forward(self, x):
        key = tuple(x.shape)
        if key not in self.cache:
            self.cache[key] = _up(x)
        return self.cache[key]


class _StoresAnswers(nn.Module):
    """Does real work on an input it has not seen; answers an input seen before (same bytes) from storage."""

    def __init__(self):
        super().__init__()
        self.answers = {}

    def forward(self, x):
        key = hashlib.sha1(x.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
        if key not in self.answers:
            self.answers[key] = self.work(x)
        return self.answers[key]


class SleepyCache(_StoresAnswers):
    """Real work = tens of ms of sleep; the output of a fresh input is a correct new output (not bit-identical)."""

    def work(self, x):
        time.sleep(0.05)
        return _up(x)


class ConvCache(_StoresAnswers):
    """Real work = several wide convolutions, added back with weight zero so the output stays bicubic."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 96, 3, padding=1), *[nn.Conv2d(96, 96, 3, padding=1) for _ in range(4)],
                                  nn.Conv2d(96, 3, 3, padding=1))

    def work(self, x):
        return _up(x + 0.0 * self.body(x))


class Expects255(nn.Module):
    """A network trained on [0, 255] input: a fixed 0.5-level bias is harmless only at that range."""

    def forward(self, x):
        return _up(x) + 0.5


@pytest.fixture(scope="module")
def pairs():
    split = embedded_split()
    return [load_pair(p, split.scale) for p in split.pairs[:2]]


def _check(model, pairs, data_range=1.0):
    return check_hygiene(ForwardAdapter(model.eval(), AdapterSpec(), 4, data_range), pairs, "cpu")


@contextlib.contextmanager
def busy_cores(procs: int | None = None):
    """A busy loop on every core (or ``procs`` of them) while the block runs; stopped on exit."""
    started = [subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL)
               for _ in range(procs if procs is not None else os.cpu_count() or 1)]
    try:
        yield
    finally:
        for proc in started:
            proc.terminate()
        for proc in started:
            proc.wait(timeout=30)


def test_clean_model_has_no_flags(pairs):
    report = _check(Clean(), pairs)
    assert report.flags == ()
    assert report.repeat_max_abs_diff == 0.0
    assert report.data_range_psnr_db > 20


def test_clean_model_has_no_flags_on_a_loaded_machine(pairs):
    with busy_cores():
        reports = [_check(Clean(), pairs) for _ in range(LOADED_RUNS)]
    assert [r.flags for r in reports] == [()] * LOADED_RUNS
    assert all(r.cache_detail == "" for r in reports)


@pytest.mark.parametrize("model, flag", [
    (MutatesInput(), "input_mutated"),
    (Noisy(), "nondeterministic"),
    (Caching(), "cache_suspect"),
])
def test_each_finding(pairs, model, flag):
    assert flag in _check(model, pairs).flags


def test_wrong_declared_data_range_is_flagged(pairs):
    wrong = _check(Expects255(), pairs, data_range=1.0)
    assert "data_range" in wrong.flags
    assert wrong.other_data_range_psnr_db - wrong.data_range_psnr_db > 0.3
    assert "data_range" not in _check(Expects255(), pairs, data_range=255.0).flags


def test_cache_detail_explains(pairs):
    assert "bit-identical" in _check(Caching(), pairs).cache_detail


@pytest.mark.parametrize("model", [SleepyCache, ConvCache], ids=["sleep", "convs"])
def test_timing_only_cache_is_flagged_with_both_measurements(pairs, model):
    report = _check(model(), pairs)
    assert "cache_suspect" in report.flags
    assert "bit-identical" not in report.cache_detail  # found by timing alone
    first, confirm = report.cache_timings
    assert first.suspicious and confirm.suspicious
    assert confirm.pairs == 20 and confirm.slow_pairs >= 18
    assert confirm.fresh_ms > CACHE_SLOWDOWN * confirm.seen_ms
    assert "confirmed by 20 pairs" in report.cache_detail
    assert f"{first.seen_ms:.2f} ms" in report.cache_detail and f"{confirm.fresh_ms:.2f} ms" in report.cache_detail


@pytest.mark.parametrize("model", [Caching, SleepyCache, ConvCache], ids=["bit-identical", "sleep", "convs"])
def test_caches_are_flagged_on_a_loaded_machine(pairs, model):
    with busy_cores():
        report = _check(model(), pairs)
    assert "cache_suspect" in report.flags


def _fake_timer(monkeypatch, latency_ms):
    """Replace the cache check's clock: latency_ms(call index, input) instead of timing the adapter."""
    calls = []

    def fake_call_ms(adapter, x):
        calls.append(x)
        return latency_ms(len(calls) - 1, x)

    monkeypatch.setattr(hygiene, "_call_ms", fake_call_ms)
    return calls


def test_load_locked_to_call_position_is_not_a_cache(pairs, monkeypatch):
    """The false flag found on a busy 2-core machine: preemptions locked onto the second call of each pair.

    With the fresh copy always second (the old order) every run would be suspicious; with the order
    drawn per pair, half the first measurements still are, and the confirmation clears all of them.
    """
    _fake_timer(monkeypatch, lambda index, x: 10.0 if index % 2 else 1.0)
    reports = [check_hygiene(ForwardAdapter(Clean().eval(), AdapterSpec(), 4, 1.0), pairs[:1], "cpu",
                             rng=random.Random(seed)) for seed in range(300)]
    assert not any(r.cache_suspect for r in reports)
    first_suspicious = sum(r.cache_timings[0].suspicious for r in reports)
    assert 100 < first_suspicious < 200
    confirmations = [r.cache_timings[1] for r in reports if len(r.cache_timings) == 2]
    assert len(confirmations) == first_suspicious
    assert max(c.slow_pairs for c in confirmations) < 18
    assert CONFIRM_CHANCE_BOUND == pytest.approx(211 / 2 ** 20)


def test_input_dependent_latency_is_flagged_in_any_order(pairs, monkeypatch):
    """The same simulated clock, but fresh copies (not the seen input) are slow: flagged whatever the order."""
    seen = ForwardAdapter(Clean(), AdapterSpec(), 4, 1.0).to_input(pairs[0][0], "cpu")
    _fake_timer(monkeypatch, lambda index, x: 1.0 if torch.equal(x, seen) else 10.0)
    for seed in range(20):
        report = check_hygiene(ForwardAdapter(Clean().eval(), AdapterSpec(), 4, 1.0), pairs[:1], "cpu",
                               rng=random.Random(seed))
        assert report.cache_suspect and report.cache_timings[1].slow_pairs == 20


def test_confirmation_uses_fresh_copies_never_seen_before(pairs, monkeypatch):
    seen = ForwardAdapter(Clean(), AdapterSpec(), 4, 1.0).to_input(pairs[0][0], "cpu")
    calls = _fake_timer(monkeypatch, lambda index, x: 1.0 if torch.equal(x, seen) else 10.0)
    report = check_hygiene(ForwardAdapter(Clean().eval(), AdapterSpec(), 4, 1.0), pairs[:1], "cpu",
                           rng=random.Random(0))
    assert len(report.cache_timings) == 2 and len(calls) == 2 * (5 + 20)
    fresh = [x for x in calls if not torch.equal(x, seen)]
    assert len(fresh) == 25
    assert all(not torch.equal(a, b) for i, a in enumerate(fresh) for b in fresh[i + 1:])
    assert all(float(x.min()) >= 0.0 and float(x.max()) <= 1.0 for x in fresh)
    assert sum(c.fresh_first for c in report.cache_timings) not in (0, 25)  # the order is drawn, not fixed
