"""One submission end to end on one device: what an actor (or ``esr-eval evaluate``) runs.

Contract
--------
:func:`evaluate_submission` never raises for a fault of the submission: it returns an
:class:`EvaluationResult` whose ``submission`` row has ``status="error"``, the stage, the
message and the traceback. Order: load → for each split (decode every image once, reset the
peak-memory counter, warm-up + timed calls under the timing protocol, quality of the timed
outputs) → complexity (after inference, as the official code counts params) → hygiene.
On CUDA: ``cudnn.benchmark`` off, TF32 flags recorded as found; on CPU the torch thread
count is fixed to ``torch_threads`` when given and recorded either way. Everything runs inside
:func:`esr_eval.containment.contained` (host-memory limit ``memory_limit_mb``; processes the
submission spawns are killed at the end), and the row records what was active and what was
killed. Complexity is checked against what actually runs: FLOPs per output pixel on the first
real LR image vs the probe, and floating buffers vs params (``complexity_flags``).
"""

from __future__ import annotations

import json
import os
import time
import traceback
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from esr_eval.adapter import ForwardAdapter
from esr_eval.complexity import buffer_flag, input_dependence_flag, measure_complexity, per_pixel_audit
from esr_eval.containment import contained
from esr_eval.data import Split, embedded_split, load_pair
from esr_eval.hygiene import check_hygiene
from esr_eval.loading import load_submission
from esr_eval.manifest import Submission, SubmissionError
from esr_eval.provenance import device_facts, facts_dict
from esr_eval.quality import NonFiniteOutputError, score, to_uint8
from esr_eval.records import EvaluationResult, SampleRow, SplitRow, SubmissionRow
from esr_eval.settings import EvaluationConfig  # noqa: F401 (defined there, torch-free; imported from here too)
from esr_eval.timing import summarize, time_split

HYGIENE_IMAGES = 3
DECODE_THREADS = 8
_MIB = 2 ** 20


class EvaluationError(Exception):
    """A submission misbehaved during evaluation (wrong shape, NaN output, …)."""

    def __init__(self, stage: str, message: str):
        self.stage = stage
        super().__init__(message)


def manifest_fields(sub: Submission) -> dict:
    """The columns of a submission row that come from its manifest alone."""
    return dict(submission_id=sub.submission_id, team_id=sub.team_id, name=sub.name,
                strict=sub.strict, trusted_pickle=sub.trusted_pickle, data_range=sub.data_range,
                scale=sub.scale, adapter=sub.adapter.describe(), manifest_sha256=sub.manifest_sha256)


def _mean(values: list[float | None]) -> float | None:
    return None if any(v is None for v in values) else float(np.mean(values))


def _score_split(run_id: str, sub: Submission, split: Split, timed, hr_images, lr_shapes, config: EvaluationConfig,
                 peaks: tuple[float | None, float | None]) -> tuple[SplitRow, list[SampleRow]]:
    samples, per_image = [], []
    for index, pair in enumerate(split.pairs):
        sr, hr = timed.outputs[index], hr_images[index]
        if sr.shape != hr.shape:
            raise EvaluationError("quality", f"{split.name}/{pair.name}: output {sr.shape[1]}x{sr.shape[0]} is not "
                                             f"{sub.scale}x the input (expected {hr.shape[1]}x{hr.shape[0]}). "
                                             "Fix: check `scale` in the manifest, or declare adapter.pad_to_multiple "
                                             "if the model needs a multiple (the output is cropped back)")
        quality = score(sr, hr, sub.scale, with_ssim=config.ssim)
        per_image.append(quality)
        for repeat in range(timed.latency_ms.shape[0]):
            first = repeat == 0
            samples.append(SampleRow(
                run_id=run_id, submission_id=sub.submission_id, split=split.name, image=pair.name,
                repeat=repeat, latency_ms=float(timed.latency_ms[repeat, index]),
                wall_ms=float(timed.wall_ms[repeat, index]),
                lr_height=lr_shapes[index][0], lr_width=lr_shapes[index][1],
                psnr_db=quality.psnr_db if first else None, ssim=quality.ssim if first else None,
                psnr_y_db=quality.psnr_y_db if first else None, ssim_y=quality.ssim_y if first else None))
    protocol = config.protocol
    runtime = summarize(timed, protocol)
    row = SplitRow(
        run_id=run_id, submission_id=sub.submission_id, split=split.name, num_images=len(split.pairs),
        dataset_sha256=split.sha256,
        psnr_db=float(np.mean([q.psnr_db for q in per_image])),
        ssim=_mean([q.ssim for q in per_image]),
        psnr_y_db=float(np.mean([q.psnr_y_db for q in per_image])),
        ssim_y=_mean([q.ssim_y for q in per_image]),
        runtime_ms=runtime.runtime_ms, runtime_mean_ms=runtime.mean_ms, runtime_median_ms=runtime.median_ms,
        runtime_p90_ms=runtime.p90_ms, runtime_n=runtime.n, wall_mean_ms=runtime.wall_mean_ms,
        warmup_calls=timed.warmup_calls, repeats=protocol.repeats,
        peak_mem_mb=peaks[0], peak_mem_official_mb=peaks[1])
    return row, samples


def _to_uint8_checked(adapter: ForwardAdapter):
    def convert(sr: torch.Tensor) -> np.ndarray:
        try:
            return to_uint8(sr, adapter.data_range, reject_inf=True)
        except NonFiniteOutputError as exc:
            raise EvaluationError("inference", "the output contains NaN or Inf. Fix: check the declared "
                                               "data_range and the weights; the network is unstable on this input"
                                  ) from exc
    return convert


def _decode_all(split: Split) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every (LR, HR) pair of the split, decoded once, in parallel threads (the PNG decoder
    releases the GIL); done before any timed call, so it cannot disturb the timing."""
    workers = max(1, min(DECODE_THREADS, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda pair: load_pair(pair, split.scale), split.pairs))


def _run_splits(run_id, sub, adapter, splits, config, device, split_rows: list, sample_rows: list) -> None:
    """Measure each split, appending rows as each completes (kept if a later split fails)."""
    official_peak = torch.cuda.max_memory_allocated(device) / _MIB if device.type == "cuda" else None
    for split in splits:
        decoded = _decode_all(split)
        inputs = [adapter.to_input(lr, "cpu") for lr, _ in decoded]
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        timed = time_split(adapter, inputs, config.protocol, device, keep_output=_to_uint8_checked(adapter))
        peaks = (None, None)
        if device.type == "cuda":
            split_peak = torch.cuda.max_memory_allocated(device) / _MIB
            official_peak = max(official_peak, split_peak)
            peaks = (split_peak, official_peak)
        row, samples = _score_split(run_id, sub, split, timed, [hr for _, hr in decoded],
                                    [lr.shape[:2] for lr, _ in decoded], config, peaks)
        split_rows.append(row)
        sample_rows.extend(samples)


def _complexity_fields(adapter: ForwardAdapter, sub, config, device, params_before, real_lr: np.ndarray) -> dict:
    """The official counts on the probe, checked against what actually runs: FLOPs per output
    pixel on a real evaluation input (the first LR image of the first split), and weights hidden
    in buffers."""
    model = adapter.model
    c = measure_complexity(model, config.complexity_input_shape, sub.data_range, device)
    probe = torch.rand(config.complexity_input_shape, generator=torch.Generator().manual_seed(0)) * sub.data_range
    probe_px = per_pixel_audit(adapter, probe.to(device), sub.scale)
    real_px = per_pixel_audit(adapter, adapter.to_input(real_lr, device), sub.scale)
    flags = [name for name, hit in (("flops_input_dependent", input_dependence_flag(probe_px, real_px)),
                                    ("params_in_buffers", buffer_flag(c.params, c.float_buffer_elements))) if hit]
    return dict(
        complexity_input_shape="x".join(map(str, c.input_shape)), params=c.params,
        params_before_forward=params_before, flops_fvcore=c.flops_fvcore, flops_hook_2022=c.flops_hook_2022,
        flops_audit=c.flops_audit, flops_audit_ratio=c.audit_ratio, flops_audit_flag=c.audit_flag,
        flops_zero_counted_ops=json.dumps([[op.op, op.calls, op.category] for op in c.zero_counted_ops]),
        activations=c.activations, num_conv=c.num_conv, float_buffer_elements=c.float_buffer_elements,
        flops_audit_per_px_probe=probe_px, flops_audit_per_px_real=real_px,
        complexity_flags=",".join(flags) or None)


def _hygiene_fields(adapter, device) -> dict:
    embedded = embedded_split()
    pairs = [load_pair(pair, embedded.scale) for pair in embedded.pairs[:HYGIENE_IMAGES]]
    report = check_hygiene(adapter, pairs, device)
    return dict(
        hygiene_input_mutated=report.input_mutated, hygiene_repeat_max_abs_diff=report.repeat_max_abs_diff,
        hygiene_nonfinite_outputs=report.nonfinite_outputs, hygiene_cache_suspect=report.cache_suspect,
        hygiene_cache_detail=report.cache_detail or None, hygiene_data_range_psnr_db=report.data_range_psnr_db,
        hygiene_other_data_range_psnr_db=report.other_data_range_psnr_db,
        hygiene_data_range_flag=report.data_range_flag, hygiene_flags=",".join(report.flags))


_STAGE_FIXES = {
    "load": "make the model load as declared in its manifest",
    "inference": "fix the model's forward for 1x3xHxW inputs of any size (or declare adapter.pad_to_multiple)",
    "complexity": "make the forward traceable on a 1x3x256x256 input (fvcore uses torch.jit.trace)",
    "hygiene": "make repeated calls on the same input valid (no state kept between calls)",
}


def _describe_failure(submission_id: str, stage: str, exc: BaseException,
                      memory_limit_mb: int | None = None) -> tuple[str, str]:
    """(stage, message) for an exception raised while evaluating a submission."""
    if isinstance(exc, SubmissionError):
        return exc.stage, str(exc)
    if isinstance(exc, EvaluationError):
        return exc.stage, f"[{submission_id}] {exc}"
    if memory_limit_mb is not None and (isinstance(exc, MemoryError) or "can't allocate memory" in str(exc)):
        return stage, (f"[{submission_id}] {stage} ran past the memory limit of {memory_limit_mb} MiB of host "
                       f"memory ({type(exc).__name__}: {str(exc)[:200]}). Fix: reduce the model's memory use "
                       "(adapter.tile), or the organiser raises --memory-limit-mb")
    if isinstance(exc, torch.OutOfMemoryError):
        return stage, (f"[{submission_id}] out of memory during {stage}: {exc}. Fix: declare an adapter tile "
                       "(adapter.tile) or reduce the model's memory use")
    return stage, (f"[{submission_id}] {stage} raised {type(exc).__name__}: {exc}. Fix: {_STAGE_FIXES[stage]} "
                   f"(the traceback column shows where; `esr-eval check {submission_id}` reproduces it)")


def _prepare_device(config: EvaluationConfig) -> torch.device:
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device cuda was asked for but torch sees no CUDA device")
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    torch.backends.cudnn.benchmark = False
    return device


def evaluate_submission(sub: Submission, splits: list[Split], config: EvaluationConfig, run_id: str) -> EvaluationResult:
    """Measure one submission on every split, contained (memory limit, nothing it spawns survives);
    failures become an error row."""
    device = _prepare_device(config)
    started = time.time()
    facts = facts_dict(device_facts(device))
    base = dict(run_id=run_id, **manifest_fields(sub), timing_protocol=config.protocol.protocol_id,
                runtime_statistic=config.protocol.headline, started_at_unix_s=started, **facts)
    fields, split_rows, sample_rows = {}, [], []
    failure = None
    with contained(config.memory_limit_mb) as box:
        try:
            _measure(sub, splits, config, run_id, device, fields, split_rows, sample_rows)
        except _StageFailure as exc:
            failure = exc
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
    fields.update(memory_limit_mb=config.memory_limit_mb, containment=box.describe(),
                  leftover_processes_killed=box.leftover_processes_killed,
                  leftover_processes=("; ".join(box.leftover_commands)[:1000] or None))
    if failure is None:
        row = SubmissionRow(status="ok", **base, **fields, wall_s=time.time() - started)
    else:
        stage, message = _describe_failure(sub.submission_id, failure.stage, failure.__cause__, config.memory_limit_mb)
        row = SubmissionRow(status="error", error=message, error_stage=stage, traceback=failure.trace,
                            **base, **fields, wall_s=time.time() - started)
    return EvaluationResult(submission=row, splits=tuple(split_rows), samples=tuple(sample_rows))


class _StageFailure(Exception):
    """The submission failed in ``stage``; the original exception is the cause."""

    def __init__(self, stage: str, trace: str):
        self.stage, self.trace = stage, trace
        super().__init__(stage)


def _measure(sub, splits, config, run_id, device, fields: dict, split_rows: list, sample_rows: list) -> None:
    """Load, time and score every split, count complexity, run hygiene; fills the lists and fields
    as it goes (kept when a later stage fails) and raises :class:`_StageFailure` for any fault."""
    stage = "load"
    try:
        loaded = load_submission(sub, device)
        fields.update(checkpoint_sha256=loaded.info.checkpoint_sha256,
                      missing_keys=",".join(loaded.info.missing_keys) or None,
                      unexpected_keys=",".join(loaded.info.unexpected_keys) or None,
                      cuda_calls_redirected=loaded.info.cuda_calls_redirected)
        params_before = sum(p.numel() for p in loaded.model.parameters())
        adapter = ForwardAdapter(loaded.model, sub.adapter, sub.scale, sub.data_range)
        stage = "inference"
        _run_splits(run_id, sub, adapter, splits, config, device, split_rows, sample_rows)
        stage = "complexity"
        real_lr = load_pair(splits[0].pairs[0], splits[0].scale)[0]
        fields.update(_complexity_fields(adapter, sub, config, device, params_before, real_lr))
        if config.hygiene:
            stage = "hygiene"
            fields.update(_hygiene_fields(adapter, device))
    except (Exception, SystemExit) as exc:  # a submission's fault is a row, never a crash
        raise _StageFailure(stage, traceback.format_exc()) from exc


def manifest_failure(error: SubmissionError, run_id: str) -> EvaluationResult:
    """The result row of a submission whose manifest did not validate."""
    return EvaluationResult(submission=SubmissionRow(
        run_id=run_id, submission_id=error.submission_id, team_id="", name=error.submission_id,
        status="error", error=str(error), error_stage=error.stage))
