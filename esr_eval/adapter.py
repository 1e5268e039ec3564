"""The narrow interface between the harness and a model under test.

Contract
--------
* :meth:`ForwardAdapter.to_input` (untimed): LR uint8 H×W×3 → float32 1×3×H×W on the device,
  divided by ``255 / data_range`` exactly as the official pipeline does.
* :meth:`ForwardAdapter.__call__` (the timed region): the declared reflect-padding to a
  multiple and/or tiled inference around the model call, nothing else.
* :meth:`ForwardAdapter.to_uint8` (untimed): output → clamp → ×255/data_range → round half to
  even → uint8 H×W×3 (delegates to :func:`esr_eval.quality.to_uint8`).
Tiles are stitched by averaging overlapping outputs (the SwinIR/BasicSR tiled-test scheme).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from esr_eval.manifest import AdapterSpec
from esr_eval.quality import to_uint8


def _tile_starts(length: int, tile: int, stride: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


class ForwardAdapter:
    """Wraps a model with range conversion, padding and tiling; calls nothing else."""

    def __init__(self, model: nn.Module, spec: AdapterSpec, scale: int, data_range: float):
        self.model = model
        self.spec = spec
        self.scale = scale
        self.data_range = data_range

    def with_data_range(self, data_range: float) -> "ForwardAdapter":
        """The same model and spec under another declared data range (conversions only)."""
        return ForwardAdapter(self.model, self.spec, self.scale, data_range)

    def to_input(self, lr_u8: np.ndarray, device: torch.device | str) -> torch.Tensor:
        array = np.ascontiguousarray(lr_u8.transpose(2, 0, 1), dtype=np.float32)
        tensor = torch.from_numpy(array).unsqueeze(0).to(device)
        return tensor / (255.0 / self.data_range)

    def to_uint8(self, sr: torch.Tensor) -> np.ndarray:
        return to_uint8(sr, self.data_range)

    def __call__(self, lr: torch.Tensor) -> torch.Tensor:
        if self.spec.tile_size:
            return self._tiled(lr)
        return self._padded(lr)

    def _padded(self, lr: torch.Tensor) -> torch.Tensor:
        multiple = self.spec.pad_to_multiple
        if not multiple:
            return self.model(lr)
        height, width = lr.shape[-2:]
        pad_h, pad_w = (-height) % multiple, (-width) % multiple
        if pad_h == 0 and pad_w == 0:
            return self.model(lr)
        padded = F.pad(lr, (0, pad_w, 0, pad_h), mode="reflect")
        return self.model(padded)[..., : height * self.scale, : width * self.scale]

    def _tiled(self, lr: torch.Tensor) -> torch.Tensor:
        tile, overlap, scale = self.spec.tile_size, self.spec.tile_overlap, self.scale
        batch, channels, height, width = lr.shape
        stride = tile - overlap
        out = None
        weight = None
        for top in _tile_starts(height, tile, stride):
            for left in _tile_starts(width, tile, stride):
                patch = lr[..., top: top + tile, left: left + tile]
                sr_patch = self._padded(patch)
                if out is None:
                    out = sr_patch.new_zeros(batch, sr_patch.shape[1], height * scale, width * scale)
                    weight = torch.zeros_like(out)
                rows = slice(top * scale, top * scale + sr_patch.shape[-2])
                cols = slice(left * scale, left * scale + sr_patch.shape[-1])
                out[..., rows, cols] += sr_patch
                weight[..., rows, cols] += 1
        return out / weight
