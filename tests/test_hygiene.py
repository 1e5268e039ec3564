"""Hygiene checks: each finding is raised by a model built to cause it, and a clean model passes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from esr_eval.adapter import ForwardAdapter
from esr_eval.data import embedded_split, load_pair
from esr_eval.hygiene import check_hygiene
from esr_eval.manifest import AdapterSpec


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


def test_clean_model_has_no_flags(pairs):
    report = _check(Clean(), pairs)
    assert report.flags == ()
    assert report.repeat_max_abs_diff == 0.0
    assert report.data_range_psnr_db > 20


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
