"""RLFN_Prune: residual local feature network, pruned (NTIRE 2024 Efficient SR baseline).

Written by esr-eval from Kong et al., "Residual Local Feature Network for Efficient
Super-Resolution" (CVPRW 2022), in the pruned form the NTIRE 2024 challenge used as its baseline:
46 feature channels, 48 channels inside each block, an ESA attention of 16 channels, 4 blocks.

Contract: input 1x3xHxW RGB in [0, 1] (data_range 1.0), output 1x3x(4H)x(4W), no clamping.
Complexity on 1x3x256x256 (x4): 317,218 parameters; fvcore 19,674,859,520 flops (MACs plus
fvcore's 4 per output element of the bilinear upsampling); 80,045,184 activations
(Conv2d output elements); 39 Conv2d calls.

Details the paper leaves open, chosen to reproduce those numbers: every 3x3 conv uses padding 1
and a bias; the ESA's strided conv has no padding; its max pool is 7x7 with stride 3; its
upsampling is bilinear with align_corners=False; the LeakyReLU slope is 0.05.
Imports torch only.
"""

import torch
import torch.nn.functional as F
from torch import nn


def conv_same(in_channels: int, out_channels: int, kernel_size: int) -> nn.Conv2d:
    """A biased conv that keeps H and W (odd kernel, explicit integer padding)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)


class ESA(nn.Module):
    """Enhanced spatial attention: a per-pixel sigmoid mask from a strided, pooled branch."""

    def __init__(self, esa_channels: int, n_feats: int):
        super().__init__()
        self.conv1 = nn.Conv2d(n_feats, esa_channels, kernel_size=1)
        self.conv_f = nn.Conv2d(esa_channels, esa_channels, kernel_size=1)
        self.conv2 = nn.Conv2d(esa_channels, esa_channels, kernel_size=3, stride=2, padding=0)
        self.conv3 = nn.Conv2d(esa_channels, esa_channels, kernel_size=3, padding=1)
        self.conv4 = nn.Conv2d(esa_channels, n_feats, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c1_ = self.conv1(x)
        c1 = self.conv2(c1_)
        v_max = F.max_pool2d(c1, kernel_size=7, stride=3)
        c3 = self.conv3(v_max)
        c3 = F.interpolate(c3, size=x.shape[-2:], mode="bilinear", align_corners=False)
        c4 = self.conv4(c3 + self.conv_f(c1_))
        return x * torch.sigmoid(c4)


class RLFB(nn.Module):
    """Residual local feature block: three 3x3 convs with a skip, a 1x1 conv, then ESA."""

    def __init__(self, in_channels: int, mid_channels: int, esa_channels: int = 16):
        super().__init__()
        self.c1_r = conv_same(in_channels, mid_channels, 3)
        self.c2_r = conv_same(mid_channels, mid_channels, 3)
        self.c3_r = conv_same(mid_channels, in_channels, 3)
        self.c5 = conv_same(in_channels, in_channels, 1)
        self.esa = ESA(esa_channels, in_channels)
        self.act = nn.LeakyReLU(negative_slope=0.05)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.c1_r(x))
        out = self.act(self.c2_r(out))
        out = self.act(self.c3_r(out))
        return self.esa(self.c5(out + x))


class RLFN_Prune(nn.Module):
    """The pruned RLFN: head conv, 4 RLFBs, a 3x3 conv with a global skip, pixel-shuffle tail."""

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        feature_channels: int = 46,
        mid_channels: int = 48,
        upscale: int = 4,
    ):
        super().__init__()
        self.conv_1 = conv_same(in_channels, feature_channels, 3)
        self.block_1 = RLFB(feature_channels, mid_channels)
        self.block_2 = RLFB(feature_channels, mid_channels)
        self.block_3 = RLFB(feature_channels, mid_channels)
        self.block_4 = RLFB(feature_channels, mid_channels)
        self.conv_2 = conv_same(feature_channels, feature_channels, 3)
        self.upsampler = nn.Sequential(
            conv_same(feature_channels, out_channels * upscale**2, 3),
            nn.PixelShuffle(upscale),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_feature = self.conv_1(x)
        out = self.block_4(self.block_3(self.block_2(self.block_1(out_feature))))
        return self.upsampler(self.conv_2(out) + out_feature)
