"""The forward adapter: range conversion, reflect padding, tiling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from esr_eval.adapter import ForwardAdapter
from esr_eval.manifest import AdapterSpec


class _NeedsMultipleOf16(nn.Module):
    def forward(self, x):
        assert x.shape[-2] % 16 == 0 and x.shape[-1] % 16 == 0, "input must be a multiple of 16"
        return torch.nn.functional.interpolate(x, scale_factor=4, mode="nearest")


class _Pointwise(nn.Module):
    """x4 nearest upsampling of a 1x1 conv: every output pixel depends on one input pixel."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return torch.nn.functional.interpolate(self.conv(x), scale_factor=4, mode="nearest")


@pytest.mark.parametrize("data_range", [1.0, 255.0])
def test_to_input_divides_by_255_over_range(data_range):
    adapter = ForwardAdapter(nn.Identity(), AdapterSpec(), 4, data_range)
    lr = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    x = adapter.to_input(lr, "cpu")
    assert x.shape == (1, 3, 2, 3) and x.dtype == torch.float32
    expected = torch.from_numpy(lr.transpose(2, 0, 1).astype(np.float32)) / (255.0 / data_range)
    assert torch.equal(x[0], expected)


def test_pad_to_multiple_then_crop():
    adapter = ForwardAdapter(_NeedsMultipleOf16(), AdapterSpec(pad_to_multiple=16), 4, 1.0)
    x = torch.rand(1, 3, 21, 37)
    with pytest.raises(AssertionError):
        _NeedsMultipleOf16()(x)
    out = adapter(x)
    assert out.shape == (1, 3, 84, 148)
    assert torch.equal(out, torch.nn.functional.interpolate(x, scale_factor=4, mode="nearest"))


def test_tiling_with_overlap_matches_full_forward_for_a_local_model():
    model = _Pointwise().eval()
    adapter = ForwardAdapter(model, AdapterSpec(tile_size=16, tile_overlap=4), 4, 1.0)
    x = torch.rand(1, 3, 40, 29)
    with torch.no_grad():
        assert torch.allclose(adapter(x), model(x), atol=1e-6)


def test_to_uint8_round_trip():
    adapter = ForwardAdapter(nn.Identity(), AdapterSpec(), 4, 255.0)
    out = adapter.to_uint8(torch.tensor([[[[300.0, -2.0]], [[127.5, 128.5]], [[0.4, 254.6]]]]))
    assert out.dtype == np.uint8 and out.shape == (1, 2, 3)
    assert out[0, 0].tolist() == [255, 128, 0] and out[0, 1].tolist() == [0, 128, 255]
