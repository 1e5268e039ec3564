"""Counters a submission cannot steer: a model that recognises the complexity probe, and weights
kept as buffers (from the start, or moved there on the first forward), are flagged in the row;
the shipped zoo is not."""

from __future__ import annotations

import pytest
import torch

from esr_eval.adapter import ForwardAdapter
from esr_eval.complexity import buffer_flag, input_dependence_flag, measure_complexity, per_pixel_audit
from esr_eval.data import embedded_split, load_pair
from esr_eval.evaluate import EvaluationConfig, evaluate_submission
from esr_eval.loading import load_submission
from esr_eval.manifest import discover_all, manifest_paths, parse_manifest
from esr_eval.timing import OFFICIAL
from tests.conftest import REPO_ROOT

CONFIG = EvaluationConfig(protocol=OFFICIAL, hygiene=False)
SHIPPED = manifest_paths(REPO_ROOT / "model_zoo")

# Eight extra convs that run on every input except the 1x3x256x256 complexity probe.
PROBE_AWARE = {
    "init_extra": "self.blocks = nn.Sequential(*[nn.Conv2d(channels, channels, 3, padding=1) for _ in range(8)])",
    "forward_body": ("h = torch.relu(self.head(x))\n"
                     "        if tuple(x.shape) != (1, 3, 256, 256):\n"
                     "            h = self.blocks(h)\n"
                     "        return self.shuffle(self.tail(h))"),
}
# The weights as a buffer: params() sees nothing.
IN_BUFFERS = {
    "init_extra": "self.register_buffer('hidden', torch.randn(channels, channels, 3, 3) * 0.01)",
    "forward_body": ("h = torch.relu(self.head(x))\n"
                     "        h = h + torch.nn.functional.conv2d(h, self.hidden, padding=1)\n"
                     "        return self.shuffle(self.tail(h))"),
}
# Moves its own weights into buffers on the first call (the official count runs after inference).
MOVES_TO_BUFFERS = {
    "forward_body": ("if not hasattr(self, 'moved'):\n"
                     "            for name in ('head', 'tail'):\n"
                     "                conv = getattr(self, name)\n"
                     "                w, b = conv.weight.data, conv.bias.data\n"
                     "                del conv.weight, conv.bias\n"
                     "                conv.register_buffer('weight', w)\n"
                     "                conv.register_buffer('bias', b)\n"
                     "            self.moved = True\n"
                     "        return self.shuffle(self.tail(torch.relu(self.head(x))))"),
}


def _evaluate(factory, sid, source, checkpoint=True):
    factory.make(sid, model_source=source, manifest_extra=None if checkpoint else {},
                 with_checkpoint=checkpoint)
    subs, errors = discover_all(factory.manifests, factory.root)
    assert not errors, errors
    (sub,) = [s for s in subs if s.submission_id == sid]
    return evaluate_submission(sub, [embedded_split()], CONFIG, "hostile").submission


def test_a_model_that_recognises_the_complexity_probe_is_flagged(factory):
    row = _evaluate(factory, "team60_ProbeAware", PROBE_AWARE, checkpoint=False)
    assert row.status == "ok", row.error
    assert "flops_input_dependent" in row.complexity_flags
    assert row.flops_audit_per_px_real > 2 * row.flops_audit_per_px_probe


@pytest.mark.parametrize("sid, source, hidden", [("team61_InBuffers", IN_BUFFERS, 8 * 8 * 3 * 3),
                                                 ("team62_MovesToBuffers", MOVES_TO_BUFFERS, 3728)])
def test_weights_kept_in_buffers_are_flagged(factory, sid, source, hidden):
    row = _evaluate(factory, sid, source, checkpoint=False)
    assert row.status == "ok", row.error
    assert "params_in_buffers" in row.complexity_flags
    assert row.float_buffer_elements == hidden


def test_an_honest_model_has_no_complexity_flags(factory):
    row = _evaluate(factory, "team63_Honest", {})
    assert row.status == "ok", row.error
    assert row.complexity_flags is None
    assert row.flops_audit_per_px_real == pytest.approx(row.flops_audit_per_px_probe, rel=1e-3)


@pytest.mark.parametrize("manifest", SHIPPED, ids=lambda p: p.stem)
def test_shipped_models_count_the_same_per_pixel_on_a_real_image_and_hide_no_weights(manifest):
    sub = parse_manifest(manifest, REPO_ROOT)
    model = load_submission(sub).model
    adapter = ForwardAdapter(model, sub.adapter, sub.scale, sub.data_range)
    split = embedded_split()
    real = adapter.to_input(load_pair(split.pairs[0], split.scale)[0], "cpu")
    probe = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0)) * sub.data_range
    assert not input_dependence_flag(per_pixel_audit(adapter, probe, sub.scale),
                                     per_pixel_audit(adapter, real, sub.scale))
    complexity = measure_complexity(model, data_range=sub.data_range)
    assert not buffer_flag(complexity.params, complexity.float_buffer_elements)


LAZY = {
    "prelude": ("import torch\n\n\nclass Deferred(torch.Tensor):\n"
                "    \"\"\"Looks like the output; its real work would run when it is first read.\"\"\"\n\n"),
    "forward_body": "return self.shuffle(self.tail(self.head(x))).as_subclass(Deferred)",
}


def test_an_output_that_is_not_a_plain_tensor_is_refused(factory):
    row = _evaluate(factory, "team64_Lazy", LAZY)
    assert row.status == "error" and row.error_stage == "inference"
    assert "not a plain dense torch.Tensor" in row.error
