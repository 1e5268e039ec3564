"""RFDN: residual feature distillation network (AIM 2020 winner, NTIRE 2023 Efficient SR baseline).

Written by esr-eval from Liu et al., "Residual Feature Distillation Network for Lightweight Image
Super-Resolution" (ECCVW 2020): 50 feature channels, 4 RFDB blocks, each distilling 25 channels
three times, then a 1x1 fusion conv and an ESA attention of 12 channels.

Contract: input 1x3xHxW RGB in [0, 1] (data_range 1.0), output 1x3x(4H)x(4W), no clamping.
Complexity on 1x3x256x256 (x4): 433,448 parameters; fvcore 27,046,231,296 flops;
112,034,240 activations (Conv2d output elements); 64 Conv2d calls.

Details the paper leaves open, chosen to reproduce those numbers: the "refine" branch keeps all
50 channels (3x3 conv plus identity, the shallow residual block); the last distillation step is
a 3x3 conv to 25 channels; every conv has a bias; the ESA branch is 1x1 -> strided 3x3 (no
padding) -> 7x7/3 max pool -> three 3x3 convs (ReLU between) -> bilinear upsampling
(align_corners=False) -> 1x1 with the conv_f skip -> sigmoid; the LeakyReLU slope is 0.05; the
four block outputs are concatenated and fused by a 1x1 conv with LeakyReLU.
Module names mirror the public RFDN code (fea_conv, B1..B4, c.0, LR_conv, upsampler.0), so its
checkpoints should load strictly (not checked against a published file: none is shipped here).
Imports torch only.
"""

import torch
import torch.nn.functional as F
from torch import nn


def conv_same(in_channels: int, out_channels: int, kernel_size: int) -> nn.Conv2d:
    """A biased conv that keeps H and W (odd kernel, explicit integer padding)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)


class ESA(nn.Module):
    """Enhanced spatial attention with n_feats // 4 channels and a three-conv pooled branch."""

    def __init__(self, n_feats: int):
        super().__init__()
        f = n_feats // 4
        self.conv1 = nn.Conv2d(n_feats, f, kernel_size=1)
        self.conv_f = nn.Conv2d(f, f, kernel_size=1)
        self.conv_max = nn.Conv2d(f, f, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(f, f, kernel_size=3, stride=2, padding=0)
        self.conv3 = nn.Conv2d(f, f, kernel_size=3, padding=1)
        self.conv3_ = nn.Conv2d(f, f, kernel_size=3, padding=1)
        self.conv4 = nn.Conv2d(f, n_feats, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c1_ = self.conv1(x)
        c1 = self.conv2(c1_)
        v_max = F.max_pool2d(c1, kernel_size=7, stride=3)
        v_range = F.relu(self.conv_max(v_max))
        c3 = self.conv3_(F.relu(self.conv3(v_range)))
        c3 = F.interpolate(c3, size=x.shape[-2:], mode="bilinear", align_corners=False)
        c4 = self.conv4(c3 + self.conv_f(c1_))
        return x * torch.sigmoid(c4)


class RFDB(nn.Module):
    """Residual feature distillation block: 3 distill/refine steps, a last 3x3, 1x1 fusion, ESA."""

    def __init__(self, in_channels: int):
        super().__init__()
        dc = in_channels // 2
        self.c1_d = conv_same(in_channels, dc, 1)
        self.c1_r = conv_same(in_channels, in_channels, 3)
        self.c2_d = conv_same(in_channels, dc, 1)
        self.c2_r = conv_same(in_channels, in_channels, 3)
        self.c3_d = conv_same(in_channels, dc, 1)
        self.c3_r = conv_same(in_channels, in_channels, 3)
        self.c4 = conv_same(in_channels, dc, 3)
        self.c5 = conv_same(dc * 4, in_channels, 1)
        self.esa = ESA(in_channels)
        self.act = nn.LeakyReLU(negative_slope=0.05)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        distilled_c1 = self.act(self.c1_d(x))
        r_c1 = self.act(self.c1_r(x) + x)
        distilled_c2 = self.act(self.c2_d(r_c1))
        r_c2 = self.act(self.c2_r(r_c1) + r_c1)
        distilled_c3 = self.act(self.c3_d(r_c2))
        r_c3 = self.act(self.c3_r(r_c2) + r_c2)
        r_c4 = self.act(self.c4(r_c3))
        out = torch.cat([distilled_c1, distilled_c2, distilled_c3, r_c4], dim=1)
        return self.esa(self.c5(out))


class RFDN(nn.Module):
    """RFDN: head conv, RFDB blocks, 1x1 fusion of all block outputs, 3x3 conv + skip, tail."""

    def __init__(
        self, in_nc: int = 3, nf: int = 50, num_modules: int = 4, out_nc: int = 3, upscale: int = 4
    ):
        super().__init__()
        self.num_modules = num_modules
        self.fea_conv = conv_same(in_nc, nf, 3)
        for index in range(1, num_modules + 1):
            setattr(self, f"B{index}", RFDB(nf))
        self.c = nn.Sequential(conv_same(nf * num_modules, nf, 1), nn.LeakyReLU(negative_slope=0.05))
        self.LR_conv = conv_same(nf, nf, 3)
        self.upsampler = nn.Sequential(conv_same(nf, out_nc * upscale**2, 3), nn.PixelShuffle(upscale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_fea = self.fea_conv(x)
        block_outs = []
        out = out_fea
        for index in range(1, self.num_modules + 1):
            out = getattr(self, f"B{index}")(out)
            block_outs.append(out)
        out_b = self.c(torch.cat(block_outs, dim=1))
        return self.upsampler(self.LR_conv(out_b) + out_fea)
