"""EFDN: edge-enhanced feature distillation network (NTIRE 2025 Efficient SR baseline).

Written by esr-eval from Wang, "Edge-enhanced Feature Distillation Network for Efficient
Super-Resolution" (CVPRW 2022): 48 channels, a head conv, 4 cells joined by 1x1 local fusion
convs, a global skip, pixel-shuffle tail. Each cell: 1x1 conv + PReLU, two EDBB 3x3 sites,
four 1x1 branch convs (48 -> 24) fused by a 1x1 conv, an ESA attention, a residual.

Two forms share one class:
- deployed (`deploy=True`, the default and the shipped form): each EDBB is one 3x3 conv plus
  PReLU. Complexity on 1x3x256x256 (x4): 276,192 parameters (0.2762 M); fvcore
  16,703,470,848 flops (16.703 G: conv MACs plus fvcore's 4 per output element of the ESA
  bilinear upsampling); 111,116,736 activations (Conv2d output elements); 65 Conv2d calls.
- training (`deploy=False`): each EDBB is the edge-enhanced diverse branch block, a sum of linear
  branches on the same input (3x3; 1x1; 1x1 -> 3x3; 1x1 -> Sobel-x, Sobel-y and Laplacian
  filters with learned per-channel scale and bias; identity) followed by PReLU. Every branch is
  linear, so `fuse_efdn` turns it into the deployed form exactly (up to float rounding).

Contract: input 1x3xHxW RGB in [0, 1] (data_range 1.0), output 1x3x(4H)x(4W), no clamping
(the evaluator clamps).

Details the paper leaves open, chosen to reproduce the numbers above: every conv has a bias;
the ESA has 12 channels (1x1 -> strided 3x3 without padding -> 7x7/3 max pool -> three 3x3 convs
with ReLU between -> bilinear upsampling, align_corners=False -> 1x1 with the conv_f skip ->
sigmoid); the third local fusion joins the outputs of cells 2 and 4; the 1x1 -> k branches
apply the 1x1 conv to the zero-padded input, so the border sees the 1x1 bias exactly as the
fused 3x3 conv does; the 1x1 -> 3x3 branch is 2x wide inside. The public code clamps the output
to [0, 1]; this file leaves that to the evaluator (same scores, cleaner gradients in training).
Deployed module names mirror the public code (head, cells.N.conv1.conv1x1/act,
cells.N.conv2.rep_conv/act, branch.K, fuse, att.*, local_fuse.K, tail.0), so its deployed
checkpoints should load strictly (not checked against a published file: none is shipped here).
Imports torch only.
"""

import torch
import torch.nn.functional as F
from torch import nn

SOBEL_X = ((1.0, 0.0, -1.0), (2.0, 0.0, -2.0), (1.0, 0.0, -1.0))
SOBEL_Y = ((1.0, 2.0, 1.0), (0.0, 0.0, 0.0), (-1.0, -2.0, -1.0))
LAPLACIAN = ((0.0, 1.0, 0.0), (1.0, -4.0, 1.0), (0.0, 1.0, 0.0))


class Conv1x1Conv3x3(nn.Module):
    """1x1 conv (c_in -> mid) on the zero-padded input, then a learned 3x3 conv without padding."""

    def __init__(self, c_in: int, c_out: int, mid: int):
        super().__init__()
        self.expand = nn.Conv2d(c_in, mid, kernel_size=1)
        self.spatial = nn.Conv2d(mid, c_out, kernel_size=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.expand(F.pad(x, (1, 1, 1, 1))))

    def fused_weight_and_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        w1 = self.expand.weight[:, :, 0, 0]
        weight = torch.einsum("omhw,mi->oihw", self.spatial.weight, w1)
        bias = self.spatial.bias + torch.einsum("omhw,m->o", self.spatial.weight, self.expand.bias)
        return weight, bias


class Conv1x1Edge(nn.Module):
    """1x1 conv on the zero-padded input, then a fixed 3x3 edge filter per channel, scaled."""

    def __init__(self, c_in: int, c_out: int, mask: tuple[tuple[float, ...], ...]):
        super().__init__()
        self.expand = nn.Conv2d(c_in, c_out, kernel_size=1)
        self.scale = nn.Parameter(torch.randn(c_out, 1, 1, 1) * 1e-3)
        self.bias = nn.Parameter(torch.randn(c_out) * 1e-3)
        self.register_buffer("mask", torch.tensor(mask).expand(c_out, 1, 3, 3).clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(F.pad(x, (1, 1, 1, 1)))
        return F.conv2d(y, self.scale * self.mask, self.bias, groups=y.shape[1])

    def fused_weight_and_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        depthwise = (self.scale * self.mask)[:, 0]
        weight = depthwise[:, None] * self.expand.weight
        bias = self.bias + depthwise.sum(dim=(1, 2)) * self.expand.bias
        return weight, bias


class EDBB(nn.Module):
    """Edge-enhanced diverse branch block + PReLU; `deploy=True` holds only the fused 3x3 conv."""

    def __init__(self, c_in: int, c_out: int, deploy: bool, depth_multiplier: int = 2):
        super().__init__()
        self.deploy = deploy
        self.rep_conv = nn.Conv2d(c_in, c_out, kernel_size=3, padding=1)
        if not deploy:
            self.conv1x1 = nn.Conv2d(c_in, c_out, kernel_size=1)
            self.conv1x1_3x3 = Conv1x1Conv3x3(c_in, c_out, c_out * depth_multiplier)
            self.conv1x1_sbx = Conv1x1Edge(c_in, c_out, SOBEL_X)
            self.conv1x1_sby = Conv1x1Edge(c_in, c_out, SOBEL_Y)
            self.conv1x1_lpl = Conv1x1Edge(c_in, c_out, LAPLACIAN)
            self.with_identity = c_in == c_out
        self.act = nn.PReLU(num_parameters=c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.rep_conv(x)
        if not self.deploy:
            y = y + self.conv1x1(x) + self.conv1x1_3x3(x)
            y = y + self.conv1x1_sbx(x) + self.conv1x1_sby(x) + self.conv1x1_lpl(x)
            if self.with_identity:
                y = y + x
        return self.act(y)

    @torch.no_grad()
    def fused_weight_and_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The single 3x3 conv (padding 1) weight and bias equal to the sum of all branches."""
        if self.deploy:
            return self.rep_conv.weight.clone(), self.rep_conv.bias.clone()
        weight = self.rep_conv.weight + F.pad(self.conv1x1.weight, (1, 1, 1, 1))
        bias = self.rep_conv.bias + self.conv1x1.bias
        for branch in (self.conv1x1_3x3, self.conv1x1_sbx, self.conv1x1_sby, self.conv1x1_lpl):
            branch_weight, branch_bias = branch.fused_weight_and_bias()
            weight, bias = weight + branch_weight, bias + branch_bias
        if self.with_identity:
            identity = torch.zeros_like(weight)
            identity[:, :, 1, 1] = torch.eye(weight.shape[0], dtype=weight.dtype, device=weight.device)
            weight = weight + identity
        return weight, bias


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


class PointwisePReLU(nn.Module):
    """1x1 conv followed by a per-channel PReLU."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1x1 = nn.Conv2d(channels, channels, kernel_size=1)
        self.act = nn.PReLU(num_parameters=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv1x1(x))


class Cell(nn.Module):
    """EFDN cell: 1x1 + PReLU, two EDBBs, four 1x1 branches fused by 1x1, ESA, residual."""

    def __init__(self, n_feats: int, deploy: bool):
        super().__init__()
        self.conv1 = PointwisePReLU(n_feats)
        self.conv2 = EDBB(n_feats, n_feats, deploy)
        self.conv3 = EDBB(n_feats, n_feats, deploy)
        self.branch = nn.ModuleList(nn.Conv2d(n_feats, n_feats // 2, 1) for _ in range(4))
        self.fuse = nn.Conv2d(n_feats // 2 * 4, n_feats, 1)
        self.att = ESA(n_feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out1 = self.conv1(x)
        out2 = self.conv2(out1)
        out3 = self.conv3(out2)
        branches = [conv(t) for conv, t in zip(self.branch, (x, out1, out2, out3))]
        return self.att(self.fuse(torch.cat(branches, dim=1))) + x


class EFDN(nn.Module):
    """EFDN; `deploy=False` builds the re-parameterisable training form (see `fuse_efdn`)."""

    def __init__(
        self,
        scale: int = 4,
        in_channels: int = 3,
        n_feats: int = 48,
        out_channels: int = 3,
        deploy: bool = True,
    ):
        super().__init__()
        self.config = dict(scale=scale, in_channels=in_channels, n_feats=n_feats, out_channels=out_channels)
        self.head = nn.Conv2d(in_channels, n_feats, 3, padding=1)
        self.cells = nn.ModuleList(Cell(n_feats, deploy) for _ in range(4))
        self.local_fuse = nn.ModuleList(nn.Conv2d(n_feats * 2, n_feats, 1) for _ in range(3))
        self.tail = nn.Sequential(
            nn.Conv2d(n_feats, out_channels * scale**2, 3, padding=1), nn.PixelShuffle(scale)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out0 = self.head(x)
        out1 = self.cells[0](out0)
        out2 = self.cells[1](out1)
        out3 = self.cells[2](self.local_fuse[0](torch.cat([out1, out2], dim=1)))
        out4 = self.cells[3](self.local_fuse[1](torch.cat([out2, out3], dim=1)))
        out4_fuse = self.local_fuse[2](torch.cat([out2, out4], dim=1))
        return self.tail(out4_fuse + out0)


@torch.no_grad()
def fuse_efdn(model: EFDN) -> EFDN:
    """A deployed EFDN computing the same function as `model` (training or deployed form)."""
    deployed = EFDN(**model.config, deploy=True).to(
        device=model.head.weight.device, dtype=model.head.weight.dtype
    )
    state = model.state_dict()
    for name, module in model.named_modules():
        if isinstance(module, EDBB):
            weight, bias = module.fused_weight_and_bias()
            state[f"{name}.rep_conv.weight"], state[f"{name}.rep_conv.bias"] = weight, bias
    deployed.load_state_dict({key: state[key] for key in deployed.state_dict()}, strict=True)
    return deployed.train(model.training)
