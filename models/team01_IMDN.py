"""IMDN: information multi-distillation network, as the NTIRE 2022 Efficient SR baseline.

Written by esr-eval from Hui et al., "Lightweight Image Super-Resolution with Information
Multi-distillation Network" (ACM MM 2019), in the configuration the NTIRE 2022 challenge used as
its baseline: 64 channels, 8 IMD blocks, a global skip over the body, pixel-shuffle tail.

Contract: input 1x3xHxW RGB in [0, 1] (data_range 1.0), output 1x3x(4H)x(4W), no clamping.
Complexity on 1x3x256x256 (x4), as published for that challenge: 893,936 parameters (0.894 M);
58,531,512,320 FLOPs under the 2022 hook counter (58.53 G: conv MACs without bias plus
LeakyReLU output elements); 154,140,672 activations (154.14 M); 43 Conv2d calls.

Details chosen to reproduce those numbers: the block has no contrast-aware channel attention
(CCA); the published 0.894 M parameters and 43 convs leave no room for its two 1x1 convs
(with CCA the model has 898,576 parameters and 59 Conv2d calls). Each block splits 16
distilled / 48 remaining channels three times, a 3x3 conv makes the last 16, a 1x1 conv fuses the
64 and a residual adds the block input. LeakyReLU (slope 0.05) follows the first three 3x3
convs only. The body ends with a 3x3 conv inside the global skip.
Module names mirror the KAIR-style code the challenge shipped (model.0 head, model.1.sub.N
blocks with conv1.0 ... conv1x1, model.1.sub.8 body conv, model.2 tail conv), so its checkpoints
should load strictly (not checked against a published file: none is shipped here).
Imports torch only.
"""

import torch
from torch import nn

LEAKY_SLOPE = 0.05


def conv_same(in_channels: int, out_channels: int, kernel_size: int) -> nn.Conv2d:
    """A biased conv that keeps H and W (odd kernel, explicit integer padding)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)


def conv_lrelu(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 conv followed by LeakyReLU(0.05)."""
    return nn.Sequential(conv_same(in_channels, out_channels, 3), nn.LeakyReLU(LEAKY_SLOPE))


class IMDBlock(nn.Module):
    """Information multi-distillation block without channel attention."""

    def __init__(self, channels: int = 64, distillation_rate: float = 0.25):
        super().__init__()
        self.distilled = int(channels * distillation_rate)
        self.remaining = channels - self.distilled
        self.conv1 = conv_lrelu(channels, channels)
        self.conv2 = conv_lrelu(self.remaining, channels)
        self.conv3 = conv_lrelu(self.remaining, channels)
        self.conv4 = conv_same(self.remaining, self.distilled, 3)
        self.conv1x1 = conv_same(self.distilled * 4, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        split = (self.distilled, self.remaining)
        d1, r1 = torch.split(self.conv1(x), split, dim=1)
        d2, r2 = torch.split(self.conv2(r1), split, dim=1)
        d3, r3 = torch.split(self.conv3(r2), split, dim=1)
        d4 = self.conv4(r3)
        return x + self.conv1x1(torch.cat((d1, d2, d3, d4), dim=1))


class ShortcutBlock(nn.Module):
    """x + sub(x)."""

    def __init__(self, sub: nn.Module):
        super().__init__()
        self.sub = sub

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.sub(x)


class IMDN(nn.Module):
    """IMDN: head conv, IMD blocks and a 3x3 conv under a global skip, pixel-shuffle tail."""

    def __init__(
        self, in_nc: int = 3, out_nc: int = 3, nc: int = 64, nb: int = 8, upscale: int = 4
    ):
        super().__init__()
        body = nn.Sequential(*(IMDBlock(nc) for _ in range(nb)), conv_same(nc, nc, 3))
        self.model = nn.Sequential(
            conv_same(in_nc, nc, 3),
            ShortcutBlock(body),
            conv_same(nc, out_nc * upscale**2, 3),
            nn.PixelShuffle(upscale),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
