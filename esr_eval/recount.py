"""Complexity recounted where the submission cannot reach it: in the evaluator, from the graph
the sandbox traced on a real evaluation input, after checking that graph against what was scored.

Contract
--------
:func:`check_trace` takes the TorchScript archive the sandbox made (``torch.jit.trace`` of the
adapter on the first real LR input of the run), the sandbox's scored uint8 output for that input,
and its output for a fresh input it had not seen when it traced (the same image mirrored left to
right). In the evaluator's process, never importing the submission's code:
* the archive is loaded with ``torch.jit.load`` (TorchScript only: a traced graph cannot hold a
  Python call, so no code of the submission runs here; ops are torch's own);
* it is run on both inputs; it is *verified* only when both outputs equal the sandbox's within
  ``MATCH_LEVELS`` grey levels (a trace that skips work, replays a stored answer or differs from
  the model that produced the scored images fails one of the two);
* the run on the real input is counted with the same dispatcher-level counter as the audit
  (:func:`esr_eval.complexity.per_pixel_audit`): audit MACs per output pixel;
* ``float_elements`` counts every floating tensor the graph holds: parameters, buffers and
  tensor constants (weights built inside ``forward`` become constants of the trace).
:func:`checkpoint_float_elements` counts the floating tensors of the state dict the evaluator
itself extracts from the checkpoint (``weights_only`` loading; ``None`` for a ``trusted_pickle``
checkpoint, which the evaluator never unpickles in its own process).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from esr_eval.complexity import per_pixel_audit
from esr_eval.loading import extract_state_dict, read_checkpoint
from esr_eval.manifest import Submission, SubmissionError
from esr_eval.quality import NonFiniteOutputError, to_uint8

MATCH_LEVELS = 2


@dataclass(frozen=True)
class TraceCheck:
    verified: bool
    flops_per_px: float | None  # audit MACs per output pixel on the real input, counted here
    float_elements: int | None  # floating tensors the traced graph holds (params, buffers, constants)
    detail: str  # why it is not verified ("" when it is)


def _constants_elements(module: torch.jit.ScriptModule) -> int:
    total = 0
    for node in module.inlined_graph.nodes():
        if node.kind() == "prim::Constant" and node.output().type().kind() == "TensorType":
            value = node.output().toIValue()
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                total += value.numel()
    return total


def _max_level_diff(out: torch.Tensor, expected_u8: np.ndarray, data_range: float) -> int | None:
    try:
        got = to_uint8(out, data_range)
    except (NonFiniteOutputError, ValueError):
        return None
    if got.shape != expected_u8.shape:
        return None
    return int(np.abs(got.astype(np.int16) - expected_u8.astype(np.int16)).max())


def check_trace(archive: bytes, real_input: np.ndarray, real_output_u8: np.ndarray, fresh_input: np.ndarray,
                fresh_output_u8: np.ndarray, data_range: float, scale: int,
                device: torch.device | str = "cpu") -> TraceCheck:
    """Load, verify and count the sandbox's trace (see the module docstring)."""
    device = torch.device(device)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(io.BytesIO(archive), map_location=device)
    except Exception as exc:  # a malformed archive is the submission's problem, not the evaluator's
        return TraceCheck(False, None, None, f"the traced graph did not load: {type(exc).__name__}: {str(exc)[:200]}")
    module.eval()
    real = torch.from_numpy(real_input).to(device)
    fresh = torch.from_numpy(fresh_input).to(device)
    try:
        with torch.no_grad():
            real_out = module(real)
            fresh_out = module(fresh)
        flops_per_px = per_pixel_audit(module, real, scale)
    except Exception as exc:
        return TraceCheck(False, None, None, f"the traced graph did not run: {type(exc).__name__}: {str(exc)[:200]}")
    elements = sum(t.numel() for t in module.state_dict().values() if t.is_floating_point())
    elements += _constants_elements(module)
    for name, out, expected in (("the scored image", real_out, real_output_u8),
                                ("a fresh image", fresh_out, fresh_output_u8)):
        diff = _max_level_diff(out, expected, data_range)
        if diff is None or diff > MATCH_LEVELS:
            shown = "a different shape or non-finite values" if diff is None else f"{diff} grey levels apart"
            return TraceCheck(False, flops_per_px, elements,
                              f"the traced graph's output for {name} differs from the submission's ({shown}): "
                              "the counted graph is not what produced the outputs")
    return TraceCheck(True, flops_per_px, elements, "")


def checkpoint_float_elements(sub: Submission) -> int | None:
    """Floating elements of the checkpoint's state dict as the evaluator extracts it (weights only);
    None when unknown: a fully unpickled checkpoint, an unreadable one, or weights an ``after_load``
    call reads from its own file."""
    if sub.checkpoint is None:
        return None if any(call.path is not None for call in sub.after_load) else 0
    if sub.trusted_pickle:
        return None
    try:
        obj, _, _ = read_checkpoint(sub)
        state = extract_state_dict(sub, obj)
    except SubmissionError:
        return None
    return sum(t.numel() for t in state.values() if isinstance(t, torch.Tensor) and t.is_floating_point())
