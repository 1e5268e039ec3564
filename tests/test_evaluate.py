"""One submission end to end on CPU: rows, official-exact quality, failures as rows."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from esr_eval.data import embedded_split, load_pair
from esr_eval.evaluate import EvaluationConfig, evaluate_submission
from esr_eval.manifest import parse_manifest
from esr_eval.quality import psnr_db
from esr_eval.timing import OFFICIAL, get_protocol
from tests.conftest import REPO_ROOT

FAST = EvaluationConfig(protocol=get_protocol("esr-default", repeats=2), hygiene=False)


@pytest.fixture(scope="module")
def split():
    return embedded_split()


def _bicubic():
    return parse_manifest(REPO_ROOT / "model_zoo" / "team99_Bicubic.yaml", REPO_ROOT)


def test_bicubic_end_to_end(split):
    result = evaluate_submission(_bicubic(), [split], FAST, "run-a")
    row = result.submission
    assert row.status == "ok", row.error
    assert row.params == 0 and row.num_conv == 0 and row.timing_protocol == FAST.protocol.protocol_id
    assert row.device_kind == "cpu" and row.torch_num_threads == torch.get_num_threads()
    assert row.process_niceness == os.nice(0)
    (split_row,) = result.splits
    n = len(split.pairs)
    assert split_row.num_images == n and split_row.runtime_n == 2 * n and split_row.warmup_calls == n
    assert split_row.peak_mem_mb is None and split_row.dataset_sha256 == split.sha256
    assert len(result.samples) == 2 * n
    # independent PSNR: torch bicubic, official conversion, float64 MSE
    expected = []
    for pair in split.pairs:
        lr, hr = load_pair(pair, 4)
        x = torch.from_numpy(lr.transpose(2, 0, 1).astype(np.float32)).unsqueeze(0) / 255.0
        sr = torch.nn.functional.interpolate(x, scale_factor=4, mode="bicubic", align_corners=False)
        sr = np.round(sr.clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255.0).astype(np.uint8)
        expected.append(psnr_db(sr, hr, border=4))
    assert split_row.psnr_db == pytest.approx(np.mean(expected), abs=1e-12)
    firsts = [s for s in result.samples if s.repeat == 0]
    assert all(s.psnr_db is not None and s.ssim is None for s in firsts)
    assert all(s.psnr_db is None for s in result.samples if s.repeat > 0)


def test_official_protocol_rows(split):
    result = evaluate_submission(_bicubic(), [split], EvaluationConfig(protocol=OFFICIAL, hygiene=False), "run-b")
    (split_row,) = result.splits
    assert split_row.warmup_calls == 0 and split_row.repeats == 1
    assert split_row.runtime_ms == pytest.approx(split_row.runtime_mean_ms)


def test_thread_count_is_fixed_and_recorded(split):
    before = torch.get_num_threads()
    try:
        result = evaluate_submission(_bicubic(), [split], EvaluationConfig(protocol=OFFICIAL, hygiene=False,
                                                                          torch_threads=1), "run-c")
        assert result.submission.torch_num_threads == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("forward_body, stage, message", [
    ("raise RuntimeError('team bug')", "inference", "inference raised RuntimeError: team bug"),
    ("return self.shuffle(self.tail(self.head(x)))[..., :-4, :]", "quality", "is not 4x the input"),
    ("return self.shuffle(self.tail(self.head(x))) * float('nan')", "inference", "contains NaN or Inf"),
    ("raise torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 20.00 GiB')", "inference",
     "out of memory during inference"),
])
def test_failures_are_rows(factory, split, forward_body, stage, message):
    sub = parse_manifest(factory.make(model_source={"forward_body": forward_body}), factory.root)
    result = evaluate_submission(sub, [split], FAST, "run-d")
    row = result.submission
    assert row.status == "error" and row.error_stage == stage
    assert message in row.error and "team10_Tiny" in row.error
    assert row.traceback and "Traceback" in row.traceback


def test_load_failure_is_a_row(factory, split):
    sub = parse_manifest(factory.make(checkpoint_obj={"params": {}}, key="params"), factory.root)
    row = evaluate_submission(sub, [split], FAST, "run-e").submission
    assert row.status == "error" and row.error_stage == "checkpoint" and "Fix:" in row.error


def test_strict_false_is_carried_into_the_row(factory, split):
    from tests.conftest import tiny_state_dict
    state = tiny_state_dict()
    state["extra"] = torch.zeros(1)
    sub = parse_manifest(factory.make(checkpoint_obj=state, checkpoint_extra={"strict": False}), factory.root)
    result = evaluate_submission(sub, [split], FAST, "run-f")
    assert result.submission.status == "ok" and result.submission.strict is False
    assert result.submission.unexpected_keys == "extra"


def test_ssim_is_opt_in(split):
    result = evaluate_submission(_bicubic(), [split], EvaluationConfig(protocol=OFFICIAL, hygiene=False, ssim=True),
                                 "run-g")
    (split_row,) = result.splits
    assert split_row.ssim is not None and 0 < split_row.ssim < 1 and split_row.ssim_y is not None
    assert all(s.ssim is not None for s in result.samples if s.repeat == 0)


MARKER = "ESR_EVAL_NEEDS_RAN"


@pytest.mark.parametrize("how", ["declared", "detected", "python"])
def test_a_submission_this_run_cannot_measure_is_skipped_not_run(factory, split, tmp_path, monkeypatch, how):
    """On a CPU run: `needs: {cuda: true}`, an import of a CUDA-only extension (mamba_ssm, read not
    run), or a Python range this interpreter is outside of give a `skipped` row saying why."""
    monkeypatch.chdir(tmp_path)
    prelude = f"open({MARKER!r}, 'w').close()\n" + ("from mamba_ssm import Mamba\n" if how == "detected" else "")
    extra = {"declared": {"needs": {"cuda": True}}, "detected": {}, "python": {"needs": {"python": "<3.0"}}}[how]
    sub = parse_manifest(factory.make(model_source={"prelude": prelude}, manifest_extra=extra), factory.root)
    row = evaluate_submission(sub, [split], FAST, "run-needs").submission
    assert (row.status, row.error_stage) == ("skipped", "needs")
    reason = {"declared": "declares `needs: {cuda: true}` and this run has no CUDA device",
              "detected": "imports the CUDA-only extension mamba_ssm (models/team10_Tiny.py:2",
              "python": "runs on Python <3.0"}[how]
    assert row.error.startswith("[team10_Tiny] not measured on this hardware: ") and reason in row.error
    assert not (tmp_path / MARKER).exists()  # the model file was never imported


def test_weights_an_after_load_call_reads_are_recorded_in_the_row_and_not_flagged(factory, split):
    from tests.conftest import tiny_state_dict

    path = factory.make(with_checkpoint=False, manifest_extra={"after_load": [
        {"method": "load_weights", "path": "model_zoo/late.pth"}]})
    (factory.root / "model_zoo").mkdir(exist_ok=True)
    torch.save(tiny_state_dict(seed=3), factory.root / "model_zoo" / "late.pth")
    model_file = factory.root / "models" / "team10_Tiny.py"
    model_file.write_text(model_file.read_text() + (
        "\ndef _load_weights(self, path):\n"
        "    self.load_state_dict(torch.load(path, weights_only=True))\n"
        "TinySR.load_weights = _load_weights\n"))
    row = evaluate_submission(parse_manifest(path, factory.root), [split], FAST, "run-after-load").submission
    assert row.status == "ok", row.error
    assert row.after_load.startswith("load_weights('model_zoo/late.pth') [file sha256 ")
    assert row.checkpoint_float_elements is None  # the weights are not in a declared checkpoint: unknown, not 0
    assert "params_not_in_checkpoint" not in (row.complexity_flags or "")
