"""SPAN: swift parameter-free attention network (NTIRE 2024 winner, NTIRE 2026 baseline).

Written by esr-eval from Wan et al., "Swift Parameter-free Attention Network for Efficient
Super-Resolution" (CVPRW 2024), in the 28-channel configuration: a head conv, 6 SPAB blocks,
a 3x3 conv, a 1x1 conv over four concatenated feature maps, pixel-shuffle tail.

Two forms share one class:
- deployed (`deploy=True`, the default and the shipped form): every 3x3 site is a Conv3XC
  holding one plain conv, `eval_conv`. Complexity on 1x3x256x256 (x4): 150,688 parameters;
  fvcore 9,833,807,872 flops; 41,680,896 activations (Conv2d output elements); 22 Conv2d calls.
- training (`deploy=False`): every 3x3 site is an over-parameterised Conv3XC (1x1 expand x2 ->
  3x3 -> 1x1 reduce on the zero-padded input, plus a 1x1 skip `sk`). It is linear, so
  `fuse_span` turns the model into the deployed form exactly (up to float rounding).

Contract: input 1x3xHxW RGB in [0, 1] (data_range 1.0), output 1x3x(4H)x(4W), no clamping.
As in the public code, the input is shifted by the DIV2K RGB mean and multiplied by 255 (fixed
constants, not parameters), and the output is not rescaled: the network learns [0, 1] outputs.

Details the paper leaves open, chosen to reproduce the numbers above: every conv has a bias; the
attention is sigmoid(out) - 0.5 applied to (out + block input); SiLU follows the first two
convs of a block; the concatenation is [head, conv after the blocks, block 1 output, first conv
output of block 6]. Module names mirror the public code (conv_1, block_1..block_6 with
c1_r/c2_r/c3_r, conv_2, conv_cat, upsampler.0; Conv3XC's sk, conv.0-2, eval_conv), so
checkpoints of the deployed form should load strictly (not checked against a published file:
none is shipped here).
Imports torch only.
"""

import torch
import torch.nn.functional as F
from torch import nn

DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)
IMG_RANGE = 255.0
NUM_BLOCKS = 6


class Conv3XC(nn.Module):
    """A 3x3 site: one `eval_conv` when deployed; 1x1 -> 3x3 -> 1x1 plus 1x1 skip when training."""

    def __init__(self, c_in: int, c_out: int, deploy: bool, gain: int = 2):
        super().__init__()
        self.deploy = deploy
        if deploy:
            self.eval_conv = nn.Conv2d(c_in, c_out, kernel_size=3, padding=1)
        else:
            self.sk = nn.Conv2d(c_in, c_out, kernel_size=1)
            self.conv = nn.Sequential(
                nn.Conv2d(c_in, c_in * gain, kernel_size=1),
                nn.Conv2d(c_in * gain, c_out * gain, kernel_size=3),
                nn.Conv2d(c_out * gain, c_out, kernel_size=1),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.deploy:
            return self.eval_conv(x)
        return self.conv(F.pad(x, (1, 1, 1, 1))) + self.sk(x)

    @torch.no_grad()
    def fused_weight_and_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The single 3x3 conv (padding 1) weight [c_out, c_in, 3, 3] and bias [c_out] it equals."""
        if self.deploy:
            return self.eval_conv.weight.clone(), self.eval_conv.bias.clone()
        expand, spatial, reduce = self.conv
        w1, w3 = expand.weight[:, :, 0, 0], reduce.weight[:, :, 0, 0]
        weight = torch.einsum("onhw,ni->oihw", spatial.weight, w1)
        bias = spatial.bias + torch.einsum("onhw,n->o", spatial.weight, expand.bias)
        weight = torch.einsum("on,nihw->oihw", w3, weight)
        bias = reduce.bias + w3 @ bias
        return weight + F.pad(self.sk.weight, (1, 1, 1, 1)), bias + self.sk.bias


class SPAB(nn.Module):
    """Swift parameter-free attention block: three 3x3 sites and a sigmoid - 0.5 attention."""

    def __init__(self, channels: int, deploy: bool):
        super().__init__()
        self.c1_r = Conv3XC(channels, channels, deploy)
        self.c2_r = Conv3XC(channels, channels, deploy)
        self.c3_r = Conv3XC(channels, channels, deploy)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the block output and the first conv's output (before its activation)."""
        out1 = self.c1_r(x)
        out2 = self.c2_r(F.silu(out1))
        out3 = self.c3_r(F.silu(out2))
        attention = torch.sigmoid(out3) - 0.5
        return (out3 + x) * attention, out1


class SPAN(nn.Module):
    """SPAN; `deploy=False` builds the re-parameterisable training form (see `fuse_span`)."""

    def __init__(
        self,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        feature_channels: int = 28,
        upscale: int = 4,
        deploy: bool = True,
    ):
        super().__init__()
        self.config = dict(
            num_in_ch=num_in_ch, num_out_ch=num_out_ch, feature_channels=feature_channels, upscale=upscale
        )
        self.register_buffer(
            "rgb_mean", torch.tensor(DIV2K_RGB_MEAN).view(1, 3, 1, 1), persistent=False
        )
        self.conv_1 = Conv3XC(num_in_ch, feature_channels, deploy)
        for index in range(1, NUM_BLOCKS + 1):
            setattr(self, f"block_{index}", SPAB(feature_channels, deploy))
        self.conv_cat = nn.Conv2d(feature_channels * 4, feature_channels, kernel_size=1)
        self.conv_2 = Conv3XC(feature_channels, feature_channels, deploy)
        self.upsampler = nn.Sequential(
            nn.Conv2d(feature_channels, num_out_ch * upscale**2, kernel_size=3, padding=1),
            nn.PixelShuffle(upscale),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_feature = self.conv_1((x - self.rgb_mean) * IMG_RANGE)
        out_b1, _ = self.block_1(out_feature)
        out = out_b1
        for index in range(2, NUM_BLOCKS + 1):
            out, first_conv_out = getattr(self, f"block_{index}")(out)
        out_last = self.conv_2(out)
        out = self.conv_cat(torch.cat([out_feature, out_last, out_b1, first_conv_out], dim=1))
        return self.upsampler(out)


@torch.no_grad()
def fuse_span(model: SPAN) -> SPAN:
    """A deployed SPAN computing the same function as `model` (training or deployed form)."""
    deployed = SPAN(**model.config, deploy=True).to(
        device=model.conv_cat.weight.device, dtype=model.conv_cat.weight.dtype
    )
    state = model.state_dict()
    for name, module in model.named_modules():
        if isinstance(module, Conv3XC):
            weight, bias = module.fused_weight_and_bias()
            state[f"{name}.eval_conv.weight"], state[f"{name}.eval_conv.bias"] = weight, bias
    deployed.load_state_dict({key: state[key] for key in deployed.state_dict()}, strict=True)
    return deployed.train(model.training)
