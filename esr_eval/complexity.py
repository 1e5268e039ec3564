"""Complexity numbers by the official definitions, plus an audit of what they miss.

Contract (input default 1×3×256×256, filled with a fixed-seed uniform [0, data_range) image):
* ``params_before_forward`` / ``params``: sum of ``numel`` over ``model.parameters()`` before and
  after the first forward (the official code counts after inference; a model that fuses
  itself on its first call reports fewer afterwards).
* ``flops_hook_2022``: the 2022–2023 hook counter — Conv2d/ConvTranspose2d
  K·K·Cin·(Cout // groups)·Hout·Wout per batch item (no bias), ReLU-family output numel,
  affine BatchNorm2d 2×numel, Linear in·out per row; nothing else.
* ``activations`` / ``num_conv``: sum of output numel of, and number of calls to, every
  ``nn.Conv2d`` and ``nn.ConvTranspose2d`` (forward hooks).
* ``flops_fvcore``: ``fvcore.nn.FlopCountAnalysis(model, x).total()`` — the official figure from
  2024 on. Like fvcore it counts one multiply-add as one "flop" (a MAC count).
* ``flops_audit``: an independent count with ``torch.utils.flop_counter`` at the dispatcher
  level, halved to MACs, which sees through ``padding='same'`` convolutions and custom autograd
  Functions; FFTs are added with the textbook estimate 5·N·log2(n) real flops (2.5 for real
  transforms). ``zero_counted_ops`` lists what fvcore counted as zero, each with a category;
  ``audit_flag`` is set when the two counts differ by more than ``AUDIT_TOLERANCE`` or an op
  of a flagged category (same-padded conv, FFT, custom Function, extension op) was skipped.
* ``float_buffer_elements``: floating-point buffers after the first forward. Weights kept as
  buffers (or moved there on the first call) escape ``params``; :func:`buffer_flag` says so when
  they exceed ``BUFFER_SHARE`` of the parameters.
* :func:`per_pixel_audit` counts the audit FLOPs on a real evaluation input as well: an SR
  network's FLOPs per output pixel hardly depend on the input (≤ 0.1 % on the shipped zoo from
  64×64 to 510×339), so a difference beyond ``INPUT_DEPENDENCE_TOLERANCE`` between the fixed
  probe and a real image means the model computes differently for the probe.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from esr_eval.settings import DEFAULT_INPUT_SHAPE  # noqa: F401 (defined there, torch-free)

AUDIT_TOLERANCE = 0.05
INPUT_DEPENDENCE_TOLERANCE = 0.02
BUFFER_SHARE = 0.05
_RELU_FAMILY = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU)
_CONV_TYPES = (nn.Conv2d, nn.ConvTranspose2d)
FLAGGED_CATEGORIES = ("same-padded convolution", "FFT", "custom autograd Function", "extension op")


@dataclass(frozen=True)
class ZeroCountedOp:
    """An operator fvcore saw and counted as zero."""

    op: str
    calls: int
    category: str

    @property
    def flagged(self) -> bool:
        return self.category in FLAGGED_CATEGORIES


@dataclass(frozen=True)
class Complexity:
    input_shape: tuple[int, ...]
    params: int
    params_before_forward: int
    flops_fvcore: int
    flops_hook_2022: int
    flops_audit: int
    activations: int
    num_conv: int
    zero_counted_ops: tuple[ZeroCountedOp, ...]
    float_buffer_elements: int = 0

    @property
    def audit_ratio(self) -> float:
        """flops_audit / flops_fvcore (inf when fvcore saw nothing but the audit did)."""
        if self.flops_fvcore == 0:
            return 1.0 if self.flops_audit == 0 else math.inf
        return self.flops_audit / self.flops_fvcore

    @property
    def audit_flag(self) -> bool:
        return abs(self.audit_ratio - 1.0) > AUDIT_TOLERANCE or any(op.flagged for op in self.zero_counted_ops)

    def audit_text(self) -> str:
        flagged = [f"{op.op}×{op.calls} ({op.category})" for op in self.zero_counted_ops if op.flagged]
        text = f"audit/fvcore = {self.audit_ratio:.3f}"
        return text + ("; counted as zero: " + ", ".join(flagged) if flagged else "")


class MalformedCounts(ValueError):
    """Complexity figures sent by a sandbox that are not what :func:`complexity_from_reply` accepts."""


_REPLY_INTS = ("params", "flops_fvcore", "flops_hook_2022", "flops_audit", "activations", "num_conv",
               "float_buffer_elements")


def complexity_from_reply(reply: dict, params_before_forward: int | None,
                          input_shape: tuple[int, ...] = DEFAULT_INPUT_SHAPE) -> Complexity:
    """A :class:`Complexity` from the figures a sandbox process reported (untrusted data: every
    count must be a non-negative int, the zero-counted ops a list of [op, calls, category])."""
    bad = [key for key in _REPLY_INTS if type(reply.get(key)) is not int or reply[key] < 0]
    ops = reply.get("zero_counted_ops")
    if bad or not isinstance(ops, list) or not all(isinstance(op, list) and len(op) == 3 for op in ops):
        raise MalformedCounts(f"malformed complexity figures ({', '.join(bad) or 'zero_counted_ops'})")
    return Complexity(
        input_shape=tuple(input_shape), params=reply["params"],
        params_before_forward=reply["params"] if params_before_forward is None else params_before_forward,
        flops_fvcore=reply["flops_fvcore"], flops_hook_2022=reply["flops_hook_2022"], flops_audit=reply["flops_audit"],
        activations=reply["activations"], num_conv=reply["num_conv"],
        zero_counted_ops=tuple(ZeroCountedOp(str(op), int(calls), str(category)) for op, calls, category in ops),
        float_buffer_elements=reply["float_buffer_elements"])


def count_float_buffers(model: nn.Module) -> int:
    return sum(b.numel() for b in model.buffers() if b.is_floating_point())


def buffer_flag(params: int, float_buffer_elements: int) -> bool:
    """Floating buffers large enough to hold weights that ``params`` does not count."""
    return float_buffer_elements > BUFFER_SHARE * max(params, 1)


def per_pixel_audit(model, x: torch.Tensor, scale: int) -> float:
    """Audit FLOPs (MACs) per output pixel of ``model`` (any callable) on input ``x`` (N×C×H×W)."""
    with torch.no_grad():
        macs = _audit_count(model, x)
    return macs / (x.shape[0] * x.shape[-2] * x.shape[-1] * scale * scale)


def input_dependence_flag(probe_per_pixel: float, real_per_pixel: float) -> bool:
    """True when the probe's FLOPs per output pixel differ from a real input's beyond tolerance."""
    reference = max(abs(probe_per_pixel), abs(real_per_pixel))
    return reference > 0 and abs(probe_per_pixel - real_per_pixel) / reference > INPUT_DEPENDENCE_TOLERANCE


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _hook_counts(model: nn.Module, x: torch.Tensor) -> tuple[int, int, int]:
    """One forward with hooks → (flops_hook_2022, activations, num_conv)."""
    totals = {"flops": 0, "activations": 0, "convs": 0}

    def conv_hook(module, inputs, output):
        batch = output.shape[0]
        kh, kw = module.kernel_size
        per_position = kh * kw * module.in_channels * (module.out_channels // module.groups)
        totals["flops"] += per_position * batch * output.shape[2] * output.shape[3]
        totals["activations"] += output.numel()
        totals["convs"] += 1

    def relu_hook(module, inputs, output):
        totals["flops"] += output.numel()

    def bn_hook(module, inputs, output):
        totals["flops"] += (2 if module.affine else 1) * output.numel()

    def linear_hook(module, inputs, output):
        totals["flops"] += output.numel() * module.in_features

    handles = []
    for module in model.modules():
        if isinstance(module, _CONV_TYPES):
            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, _RELU_FAMILY):
            handles.append(module.register_forward_hook(relu_hook))
        elif isinstance(module, nn.BatchNorm2d):
            handles.append(module.register_forward_hook(bn_hook))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
    try:
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    return totals["flops"], totals["activations"], totals["convs"]


def _category(op: str) -> str:
    if op == "aten::_convolution_mode":
        return "same-padded convolution"
    if "fft" in op:
        return "FFT"
    if op.startswith("prim::PythonOp"):
        return "custom autograd Function"
    if not op.startswith(("aten::", "prim::")):
        return "extension op"
    return "not in the official definition"


def _fvcore_count(model: nn.Module, x: torch.Tensor) -> tuple[int, tuple[ZeroCountedOp, ...]]:
    from fvcore.nn import FlopCountAnalysis

    logging.getLogger("fvcore").setLevel(logging.ERROR)
    analysis = FlopCountAnalysis(model, x).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    total = int(analysis.total())
    skipped = tuple(ZeroCountedOp(op=op, calls=int(n), category=_category(op))
                    for op, n in sorted(analysis.unsupported_ops().items()))
    return total, skipped


def _fft_flops(real: bool):
    def formula(input_shape, dim, *args, out_shape=None, **kwargs) -> int:
        signal = max(math.prod(input_shape), math.prod(out_shape))
        points = math.prod(max(input_shape[d], out_shape[d]) for d in dim)
        return int((2.5 if real else 5.0) * signal * math.log2(max(points, 2)))
    return formula


def _audit_count(model, x: torch.Tensor) -> int:
    aten = torch.ops.aten
    fft_formulas = {
        aten._fft_r2c: _fft_flops(real=True),
        aten._fft_c2r: _fft_flops(real=True),
        aten._fft_c2c: _fft_flops(real=False),
    }
    with FlopCounterMode(display=False, custom_mapping=fft_formulas) as counter:
        model(x)
    return int(counter.get_total_flops()) // 2


def measure_complexity(model: nn.Module, input_shape: tuple[int, ...] = DEFAULT_INPUT_SHAPE,
                       data_range: float = 1.0, device: torch.device | str | None = None) -> Complexity:
    """All complexity numbers for one model (see the module docstring)."""
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    x = (torch.rand(input_shape, generator=generator) * data_range).to(device)
    params_before = count_params(model)
    with torch.no_grad():
        flops_2022, activations, convs = _hook_counts(model, x)
        params_after = count_params(model)
        flops_fvcore, skipped = _fvcore_count(model, x)
        flops_audit = _audit_count(model, x)
    return Complexity(
        input_shape=tuple(input_shape),
        params=params_after,
        params_before_forward=params_before,
        flops_fvcore=flops_fvcore,
        flops_hook_2022=flops_2022,
        flops_audit=flops_audit,
        activations=activations,
        num_conv=convs,
        zero_counted_ops=skipped,
        float_buffer_elements=count_float_buffers(model),
    )
