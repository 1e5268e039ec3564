"""Complexity: the official numbers for every shipped submission, and the audit's flags."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from esr_eval.complexity import measure_complexity
from esr_eval.loading import load_submission
from esr_eval.manifest import manifest_paths, parse_manifest
from tests.conftest import REPO_ROOT

SHIPPED = manifest_paths(REPO_ROOT / "model_zoo")

# Published official figures on 1x3x256x256 (PROTOCOLS.md and the issues): exact where the
# definition is exact; (value, decimals, unit) where only a rounded figure was published.
OFFICIAL = {
    "team99_Bicubic": {"params": 0, "flops_fvcore": 0, "activations": 0, "num_conv": 0},
    "team00_RLFN": {"params": 317_218, "flops_fvcore": 19_674_859_520, "activations": 80_045_184, "num_conv": 39},
    "team02_RFDN": {"params": 433_448, "flops_fvcore": 27_046_231_296, "activations": 112_034_240, "num_conv": 64},
    "team04_SPAN": {"params": 150_688, "flops_fvcore": 9_833_807_872, "activations": 41_680_896, "num_conv": 22},
    "team01_IMDN": {"params": (0.894, 3, 1e6), "flops_hook_2022": (58.53, 2, 1e9),
                    "activations": (154.14, 2, 1e6), "num_conv": 43},
    "team03_EFDN": {"params": (0.2762, 4, 1e6), "flops_fvcore": (16.703, 3, 1e9)},
}


@pytest.mark.parametrize("manifest", SHIPPED, ids=lambda p: p.stem)
def test_shipped_submission_matches_official_complexity(manifest):
    sub = parse_manifest(manifest, REPO_ROOT)
    assert sub.submission_id in OFFICIAL, f"add the published complexity of {sub.submission_id} to OFFICIAL"
    model = load_submission(sub).model
    measured = measure_complexity(model, data_range=sub.data_range)
    for column, expected in OFFICIAL[sub.submission_id].items():
        value = getattr(measured, column)
        if isinstance(expected, tuple):
            published, decimals, unit = expected
            assert round(value / unit, decimals) == published, f"{column}: {value}"
        else:
            assert value == expected, f"{column}: {value} != {expected}"
    assert not measured.audit_flag, measured.audit_text()


class _HandCounted(nn.Module):
    """Small enough to count by hand on 1x3x8x8."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)            # 3*3*3*4*8*8 = 6912 MACs, 256 outputs
        self.bn = nn.BatchNorm2d(4)                           # 2*256 = 512
        self.act = nn.LeakyReLU(0.1)                          # 256
        self.group = nn.Conv2d(4, 4, 3, padding=1, groups=2)  # 3*3*4*(4//2)*64 = 4608, 256 outputs
        self.up = nn.ConvTranspose2d(4, 2, 2, stride=2)       # 2*2*4*2*16*16 = 8192, 512 outputs
        self.fc = nn.Linear(16, 5)                            # 2 rows * 16*5 = 160

    def forward(self, x):
        y = self.up(self.group(self.act(self.bn(self.conv(x)))))
        return self.fc(y.flatten(2)[..., :16])


def test_hook_counter_2022_by_hand():
    c = measure_complexity(_HandCounted().eval(), input_shape=(1, 3, 8, 8))
    assert c.flops_hook_2022 == 6912 + 512 + 256 + 4608 + 8192 + 160
    assert c.activations == 256 + 256 + 512
    assert c.num_conv == 3
    assert c.params == sum(p.numel() for p in _HandCounted().parameters())


class _SamePadded(nn.Module):
    def __init__(self):
        super().__init__()
        self.convs = nn.Sequential(*[nn.Conv2d(8 if i else 3, 8, 3, padding="same") for i in range(4)])

    def forward(self, x):
        return self.convs(x)


class _Spectral(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        spectrum = torch.fft.rfft2(self.conv(x))
        return torch.fft.irfft2(spectrum * 0.5, s=x.shape[-2:])


class _Doubling(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight):
        return torch.nn.functional.conv2d(x, weight, padding=1)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _CustomFunction(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(16, 3, 3, 3))

    def forward(self, x):
        return _Doubling.apply(x, self.weight)


@pytest.mark.parametrize("model, category", [
    (_SamePadded(), "same-padded convolution"),
    (_Spectral(), "FFT"),
    (_CustomFunction(), "custom autograd Function"),
])
def test_audit_flags_what_fvcore_counts_as_zero(model, category):
    c = measure_complexity(model.eval(), input_shape=(1, 3, 32, 32))
    assert c.audit_flag
    assert any(op.category == category and op.flagged for op in c.zero_counted_ops)
    assert c.flops_audit > c.flops_fvcore
    assert category in c.audit_text()


def test_same_padding_counted_by_audit_exactly():
    c = measure_complexity(_SamePadded().eval(), input_shape=(1, 3, 32, 32))
    expected_macs = (3 * 3 * 3 * 8 + 3 * 3 * 8 * 8 * 3) * 32 * 32
    assert c.flops_fvcore == 0 and c.flops_audit == expected_macs
    assert c.flops_hook_2022 == expected_macs  # the module hooks see them


class _FusesOnFirstCall(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 3, 3, padding=1)
        self.b = nn.Conv2d(3, 3, 3, padding=1)
        self.fused = False

    def forward(self, x):
        if not self.fused:
            self.b = None
            self.fused = True
        return self.a(x)


def test_params_before_and_after_first_forward():
    c = measure_complexity(_FusesOnFirstCall().eval(), input_shape=(1, 3, 16, 16))
    assert c.params_before_forward == 2 * (3 * 3 * 3 * 3 + 3)
    assert c.params == 3 * 3 * 3 * 3 + 3
