"""One submission end to end on one device: what an actor (or ``esr-eval evaluate``) runs.

Contract
--------
:func:`evaluate_submission` never raises for a fault of the submission: it returns an
:class:`EvaluationResult` whose ``submission`` row has ``status="error"``, the stage, the
message and the traceback. The stages (:func:`decode_split`, :func:`calibrate`,
:func:`restrict_fields`, :func:`run_splits`, :func:`complexity_fields`, :func:`hygiene_fields`)
and the wording of a failure (:func:`describe_failure`) are also what ``esr-eval check`` runs
(:mod:`esr_eval.check`), so its verdicts read as this module's rows.

Privilege separation: this process decodes the split (LR and HR), scores, counts and builds the
rows; it never imports the submission's code. The submission runs in its own sandbox process
(:mod:`esr_eval.sandbox`), which receives LR inputs and returns outputs, nothing else. Order: decode
every split of the submission's scale (the run's other splits are skipped) → start the sandbox →
calibrate the path with a null model → load (the sandbox limits its memory and restricts itself with
Landlock first) → for each split (reset the peak-memory counter, warm-up + timed calls under the
timing protocol, each timed by the sandbox and by this process,
:func:`esr_eval.timing.external_check`; quality of the timed outputs here) → complexity (the
official counts as the sandbox reports them, checked here against a trace of the model on the first
real LR image: :mod:`esr_eval.recount`) → hygiene (here, calling the sandbox). On CUDA:
``cudnn.benchmark`` off; on CPU the torch thread count is fixed to ``torch_threads`` when given and
recorded either way. Everything runs inside :func:`esr_eval.containment.contained` (processes the
submission spawns are killed at the end); the row records which protections were active and what was
killed.

Flags with evidence: ``timing_tampered`` (split rows: the sandbox's clock disagrees with ours;
the external bound stands as the latency), and in ``complexity_flags``: ``trace_unverified``
(the traced graph does not reproduce the scored outputs), ``flops_input_dependent`` (audit FLOPs
per output pixel on the probe, as the sandbox counted them, differ from ours on a real input),
``params_in_buffers`` (the graph holds floating tensors beyond ``params``),
``params_not_in_checkpoint`` (the graph holds more floating elements than the checkpoint).
"""

from __future__ import annotations

import json
import os
import platform
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from packaging.specifiers import SpecifierSet

from esr_eval.complexity import BUFFER_SHARE, Complexity, buffer_flag, complexity_from_reply, input_dependence_flag
from esr_eval.containment import contained
from esr_eval.data import Split, embedded_split, load_pair, scale_gap
from esr_eval.hygiene import check_hygiene
from esr_eval.manifest import Submission, SubmissionError, printable
from esr_eval.provenance import device_facts, facts_dict
from esr_eval.quality import score
from esr_eval.records import EvaluationResult, SampleRow, SplitRow, SubmissionRow
from esr_eval.recount import check_trace, checkpoint_float_elements
from esr_eval.requirements import cuda_only, import_sites
from esr_eval.sandbox import RemoteAdapter, RemoteError, Sandbox, SandboxError, obtain, restrict, to_input
from esr_eval.settings import EvaluationConfig  # noqa: F401 (defined there, torch-free; imported from here too)
from esr_eval.timing import CallTiming, calibrate_overhead, external_check, summarize, time_split

HYGIENE_IMAGES = 3
MESSAGE_CHARS = 2000
DECODE_THREADS = 8
_MIB = 2 ** 20


class EvaluationError(Exception):
    """A submission misbehaved during evaluation (wrong shape, NaN output, …): the problem and its fix."""

    def __init__(self, stage: str, problem: str, fix: str):
        self.stage, self.problem, self.fix = stage, problem, fix
        super().__init__(f"{problem}. Fix: {fix}")


@dataclass(frozen=True)
class Failure:
    """A stage's failure in words for the team: the stage, the problem and its fix; ``raised`` when
    the submission's code raised it (its traceback says where)."""

    stage: str
    problem: str
    fix: str
    raised: bool = False


def manifest_fields(sub: Submission) -> dict:
    """The columns of a submission row that come from its manifest alone."""
    return dict(submission_id=sub.submission_id, team_id=sub.team_id, name=sub.name,
                strict=sub.strict, trusted_pickle=sub.trusted_pickle, data_range=sub.data_range,
                scale=sub.scale, adapter=sub.adapter.describe(), manifest_sha256=sub.manifest_sha256)


def _mean(values: list[float | None]) -> float | None:
    return None if any(v is None for v in values) else float(np.mean(values))


def _checked_output(sr, where: str) -> np.ndarray:
    if not isinstance(sr, np.ndarray) or sr.dtype != np.uint8 or sr.ndim != 3 or sr.shape[2] != 3:
        raise SandboxError(f"{where}: the submission's process returned something other than an H×W×3 uint8 image")
    return sr


def _score_split(run_id: str, sub: Submission, split: Split, timed, hr_images, lr_shapes, config: EvaluationConfig,
                 peaks: tuple[float | None, float | None], check,
                 overhead_ms: np.ndarray) -> tuple[SplitRow, list[SampleRow]]:
    samples, per_image = [], []
    latency = check.bound_ms if check.tampered else timed.latency_ms
    for index, pair in enumerate(split.pairs):
        sr, hr = timed.outputs[index], hr_images[index]
        _checked_output(sr, f"{split.name}/{pair.name}")
        if sr.shape != hr.shape:
            raise EvaluationError("quality", f"{split.name}/{pair.name}: output {sr.shape[1]}x{sr.shape[0]} is not "
                                             f"{sub.scale}x the input (expected {hr.shape[1]}x{hr.shape[0]})",
                                  "check `scale` in the manifest, or declare adapter.pad_to_multiple "
                                  "if the model needs a multiple (the output is cropped back)")
        quality = score(sr, hr, sub.scale, with_ssim=config.ssim)
        per_image.append(quality)
        for repeat in range(timed.latency_ms.shape[0]):
            first = repeat == 0
            samples.append(SampleRow(
                run_id=run_id, submission_id=sub.submission_id, split=split.name, image=pair.name,
                repeat=repeat, latency_ms=float(latency[repeat, index]),
                wall_ms=float(timed.wall_ms[repeat, index]),
                lr_height=lr_shapes[index][0], lr_width=lr_shapes[index][1],
                external_ms=float(timed.external_ms[repeat, index]), overhead_ms=float(overhead_ms[index]),
                psnr_db=quality.psnr_db if first else None, ssim=quality.ssim if first else None,
                psnr_y_db=quality.psnr_y_db if first else None, ssim_y=quality.ssim_y if first else None))
    protocol = config.protocol
    runtime = summarize(timed, protocol, latency)
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
        peak_mem_mb=peaks[0], peak_mem_official_mb=peaks[1],
        runtime_sandbox_ms=summarize(timed, protocol).runtime_ms,
        runtime_external_ms=summarize(timed, protocol, check.bound_ms).runtime_ms,
        external_overhead_ms=float(np.mean(overhead_ms)), timing_tampered=check.tampered,
        timing_detail=check.detail() if check.tampered else None)
    return row, samples


def decode_split(split: Split) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every (LR, HR) pair of the split, decoded once, in parallel threads (the PNG decoder
    releases the GIL); done before the sandbox starts, in this process only."""
    workers = max(1, min(DECODE_THREADS, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda pair: load_pair(pair, split.scale), split.pairs))


def _calls(sandbox: Sandbox, sub: Submission):
    """(model call, null call) for :func:`esr_eval.timing.time_split`, both on the same path."""
    def model(x: np.ndarray) -> CallTiming:
        return sandbox.forward(x, data_range=sub.data_range)[0]

    def null(x: np.ndarray) -> CallTiming:
        return sandbox.forward(x, data_range=sub.data_range, null_scale=sub.scale)[0]
    return model, null


def calibrate(sandbox: Sandbox, sub: Submission, decoded_splits) -> list[np.ndarray]:
    """The path's overhead per image of each split, measured before any submission code is loaded."""
    _, null = _calls(sandbox, sub)
    overheads = []
    for decoded in decoded_splits:
        inputs = [to_input(lr, sub.data_range) for lr, _ in decoded]
        overheads.append(calibrate_overhead(null, inputs, [lr.shape[0] * lr.shape[1] for lr, _ in decoded]))
    return overheads


def _peak(sandbox: Sandbox) -> float | None:
    value = sandbox.request("peak").get("peak_mb")
    return float(value) if type(value) in (int, float) else None


def run_splits(run_id, sub, sandbox, splits, decoded_splits, overheads, config, device,
                split_rows: list, sample_rows: list) -> np.ndarray:
    """Measure each split, appending rows as each completes (kept if a later split fails); returns
    the scored output of the first image of the first split."""
    model, _ = _calls(sandbox, sub)
    official_peak = _peak(sandbox) if device.type == "cuda" else None
    first = None
    for split, decoded, overhead in zip(splits, decoded_splits, overheads):
        inputs = [to_input(lr, sub.data_range) for lr, _ in decoded]
        sandbox.request("reset_peak")
        timed = time_split(model, inputs, config.protocol)
        peaks = (None, None)
        if device.type == "cuda":
            split_peak = _peak(sandbox)
            official_peak = max(official_peak or 0.0, split_peak or 0.0)
            peaks = (split_peak, official_peak)
        row, samples = _score_split(run_id, sub, split, timed, [hr for _, hr in decoded],
                                    [lr.shape[:2] for lr, _ in decoded], config, peaks,
                                    external_check(timed, overhead), overhead)
        split_rows.append(row)
        sample_rows.extend(samples)
        first = timed.outputs[0] if first is None else first
    return first


def complexity_fields(sandbox: Sandbox, sub, config, device, real_lr: np.ndarray,
                      real_sr: np.ndarray) -> tuple[Complexity, dict]:
    """The official counts as the sandbox reports them on the probe, checked here against a trace
    of the model on a real evaluation input (the first LR image of the first split, whose scored
    output is ``real_sr``) and against the checkpoint: (the counts, the row's fields)."""
    reply = sandbox.request("complexity", shape=list(config.complexity_input_shape), data_range=sub.data_range)
    c = complexity_from_reply(reply, None, config.complexity_input_shape)
    probe_px = reply.get("flops_audit_per_px_probe")
    if type(probe_px) not in (int, float):
        raise SandboxError("the submission's process sent a malformed flops_audit_per_px_probe")
    real = to_input(real_lr, sub.data_range)
    sandbox.request("trace", [real])
    archive = sandbox.last_arrays[0].tobytes() if sandbox.last_arrays else b""
    fresh = np.ascontiguousarray(real[..., ::-1])
    fresh_sr = _checked_output(sandbox.forward(fresh, data_range=sub.data_range)[0].output,
                               "the fresh input")
    trace = check_trace(archive, real, real_sr, fresh, fresh_sr, sub.data_range, sub.scale, device)
    in_checkpoint = checkpoint_float_elements(sub)
    hidden = None if trace.float_elements is None else max(trace.float_elements - c.params, 0)
    found = {
        "trace_unverified": not trace.verified,
        "flops_input_dependent": trace.flops_per_px is not None and input_dependence_flag(probe_px, trace.flops_per_px),
        "params_in_buffers": buffer_flag(c.params, max(c.float_buffer_elements, hidden or 0)),
        "params_not_in_checkpoint": in_checkpoint is not None and trace.float_elements is not None
        and trace.float_elements > (1 + BUFFER_SHARE) * in_checkpoint,
    }
    return c, dict(
        complexity_input_shape="x".join(map(str, c.input_shape)), params=c.params,
        flops_fvcore=c.flops_fvcore, flops_hook_2022=c.flops_hook_2022,
        flops_audit=c.flops_audit, flops_audit_ratio=c.audit_ratio, flops_audit_flag=c.audit_flag,
        flops_zero_counted_ops=json.dumps([[op.op, op.calls, op.category] for op in c.zero_counted_ops]),
        activations=c.activations, num_conv=c.num_conv, float_buffer_elements=c.float_buffer_elements,
        flops_audit_per_px_probe=float(probe_px), flops_audit_per_px_real=trace.flops_per_px,
        params_clean=trace.float_elements, checkpoint_float_elements=in_checkpoint,
        trace_verified=trace.verified, trace_detail=trace.detail or None,
        complexity_flags=",".join(name for name, hit in found.items() if hit) or None)


def hygiene_fields(adapter, device) -> dict:
    """The hygiene checks on the first images of the embedded split at the adapter's scale."""
    embedded = embedded_split(scale=adapter.scale)
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


def describe_failure(stage: str, exc: BaseException, memory_limit_mb: int | None = None) -> Failure:
    """The :class:`Failure` for an exception raised in ``stage`` while evaluating a submission;
    what the sandbox reported is quoted escaped and clipped (it is the submission's text)."""
    if isinstance(exc, SubmissionError):
        return Failure(exc.stage, f"{exc.field_name}: {exc.problem}", exc.fix)
    if isinstance(exc, EvaluationError):
        return Failure(exc.stage, exc.problem, exc.fix)
    if isinstance(exc, RemoteError):
        said = printable(str(exc), MESSAGE_CHARS)
        if exc.stage:
            return Failure(exc.stage, printable(f"{exc.field_name}: {exc.problem}", MESSAGE_CHARS),
                           printable(str(exc.fix), 500))
        if exc.type_name == "NonFiniteOutputError":
            return Failure(stage, "the output contains NaN or Inf",
                           "check the declared data_range and the weights; the network is unstable on this input")
        if exc.memory and memory_limit_mb is not None and exc.type_name != "OutOfMemoryError":
            return Failure(stage, f"{stage} ran past the memory limit of {memory_limit_mb} MiB of host memory "
                                  f"({exc.type_name}: {said[:200]})",
                           "reduce the model's memory use (adapter.tile), or the organiser raises --memory-limit-mb")
        if exc.type_name == "OutOfMemoryError":
            return Failure(stage, f"out of memory during {stage}: {said}",
                           "declare an adapter tile (adapter.tile) or reduce the model's memory use")
        return Failure(stage, f"{stage} raised {printable(exc.type_name, 100)}: {said}", _STAGE_FIXES[stage], True)
    if isinstance(exc, SandboxError):
        return Failure(stage, f"{stage}: {printable(str(exc), MESSAGE_CHARS)}",
                       f"{_STAGE_FIXES[stage]}; a model must not end, signal or write to the evaluator's process")
    return Failure(stage, f"{stage} raised {type(exc).__name__}: {exc}", _STAGE_FIXES[stage], True)


def _describe_failure(submission_id: str, stage: str, exc: BaseException,
                      memory_limit_mb: int | None = None) -> tuple[str, str]:
    """(stage, the row's error message) for an exception raised while evaluating a submission."""
    failure = describe_failure(stage, exc, memory_limit_mb)
    if isinstance(exc, SubmissionError):
        return failure.stage, str(exc)
    if isinstance(exc, RemoteError) and exc.stage:  # a SubmissionError in the sandbox, as it worded it
        return failure.stage, printable(str(exc), MESSAGE_CHARS)
    where = (f" (the traceback column shows where; `esr-eval check {submission_id}` reproduces it)"
             if failure.raised else "")
    return failure.stage, f"[{submission_id}] {failure.problem}. Fix: {failure.fix}{where}"


def _prepare_device(config: EvaluationConfig) -> torch.device:
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device cuda was asked for but torch sees no CUDA device")
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    return device


def unmet_needs(sub: Submission, device: torch.device) -> str | None:
    """Why this run cannot measure ``sub`` (its manifest's ``needs``, or a CUDA-only extension its
    code imports, on a device that lacks it); None when it can."""
    needs = sub.needs
    if device.type != "cuda":
        if needs.cuda:
            return "the manifest declares `needs: {cuda: true}` and this run has no CUDA device"
        extension = next(iter(cuda_only(import_sites(sub.model_path, sub.root))), None)
        if extension is not None:
            return (f"it imports the CUDA-only extension {extension.describe(sub.root)} and this run has no "
                    "CUDA device")
    elif needs.min_gpu_memory_gb:
        total_gb = torch.cuda.get_device_properties(device).total_memory / 2**30
        if total_gb < needs.min_gpu_memory_gb:
            return f"it needs {needs.min_gpu_memory_gb:g} GiB of GPU memory and this GPU has {total_gb:.1f} GiB"
    if needs.python and not SpecifierSet(needs.python).contains(platform.python_version()):
        return f"it runs on Python {needs.python} and this run has Python {platform.python_version()}"
    return None


def evaluate_submission(sub: Submission, splits: list[Split], config: EvaluationConfig,
                        run_id: str) -> EvaluationResult:
    """Measure one submission on every split of its scale, its code in a sandbox process (memory limit,
    Landlock, nothing it spawns survives); failures become an error row; a submission this run cannot
    measure (:func:`unmet_needs`) a ``skipped`` row that says why, its code never run; one with no split
    of its scale a ``manifest`` error row (:func:`esr_eval.data.scale_gap`), its code never run."""
    device = _prepare_device(config)
    started = time.time()
    facts = facts_dict(device_facts(device))
    base = dict(run_id=run_id, **manifest_fields(sub), timing_protocol=config.protocol.protocol_id,
                runtime_statistic=config.protocol.headline, started_at_unix_s=started, **facts)
    gap = scale_gap(sub.scale, splits)
    if gap is not None:
        error = SubmissionError(sub.submission_id, f"scale {sub.scale}", *gap)
        return EvaluationResult(submission=SubmissionRow(status="error", error=str(error), error_stage=error.stage,
                                                         **base, wall_s=time.time() - started))
    splits = [split for split in splits if split.scale == sub.scale]
    unmet = unmet_needs(sub, device)
    if unmet is not None:
        row = SubmissionRow(status="skipped", error=f"[{sub.submission_id}] not measured on this hardware: {unmet}",
                            error_stage="needs", **base, wall_s=time.time() - started)
        return EvaluationResult(submission=row, splits=(), samples=())
    fields, split_rows, sample_rows = {}, [], []
    failure = None
    with contained(None) as box:
        try:
            _measure(sub, splits, config, run_id, device, fields, split_rows, sample_rows)
        except _StageFailure as exc:
            failure = exc
    box.memory_limit_mb = config.memory_limit_mb
    box.memory_limited = bool(fields.pop("memory_limited", False))
    box.signals_isolated = bool(fields.pop("landlock_signals", False))
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


def restrict_fields(sandbox: Sandbox, sub: Submission, config: EvaluationConfig) -> dict:
    """Have the sandbox limit its memory and restrict itself (before any of the submission's code
    runs); the row's fields saying which protections are active."""
    restricted = restrict(sandbox, sub, config.memory_limit_mb, config.landlock)
    return dict(sandbox=printable(str(restricted.get("landlock")), 300),
                memory_limited=restricted.get("memory_limited"), landlock_signals=restricted.get("landlock_signals"))


def _load(sandbox: Sandbox, sub: Submission, config: EvaluationConfig, fields: dict) -> None:
    fields.update(restrict_fields(sandbox, sub, config))
    reply = sandbox.request("load")
    keys = reply.get("missing_keys"), reply.get("unexpected_keys")
    fields.update(checkpoint_sha256=reply.get("checkpoint_sha256"),
                  missing_keys=",".join(map(str, keys[0] or [])) or None,
                  unexpected_keys=",".join(map(str, keys[1] or [])) or None,
                  cuda_calls_redirected=reply.get("cuda_calls_redirected"),
                  after_load="; ".join(reply.get("after_load") or []) or None,
                  params_before_forward=reply.get("params_before_forward"))


def _measure(sub, splits, config, run_id, device, fields: dict, split_rows: list, sample_rows: list) -> None:
    """Decode, start the sandbox, load, time and score every split, count complexity, run
    hygiene; fills the lists and fields as it goes (kept when a later stage fails) and raises
    :class:`_StageFailure` for any fault."""
    stage = "load"
    sandbox = None
    try:
        decoded_splits = [decode_split(split) for split in splits]
        sandbox = obtain(config.device, config.torch_threads)
        overheads = calibrate(sandbox, sub, decoded_splits)
        _load(sandbox, sub, config, fields)
        stage = "inference"
        first_sr = run_splits(run_id, sub, sandbox, splits, decoded_splits, overheads, config, device,
                               split_rows, sample_rows)
        stage = "complexity"
        fields.update(complexity_fields(sandbox, sub, config, device, decoded_splits[0][0][0], first_sr)[1])
        if config.hygiene:
            stage = "hygiene"
            fields.update(hygiene_fields(RemoteAdapter(sandbox, sub.scale, sub.data_range), device))
    except (Exception, SystemExit) as exc:  # a submission's fault is a row, never a crash
        raise _StageFailure(stage, traceback.format_exc()) from exc
    finally:
        if sandbox is not None:
            sandbox.close()


def requirements_failure(sub: Submission, unmet: list[str], run_id: str) -> EvaluationResult:
    """The row of a submission the in-process evaluation does not run: its requirements are not installed."""
    message = (f"[{sub.submission_id}] requirements: this environment lacks {', '.join(unmet)}; not run. Fix: "
               f"pip install {' '.join(repr(line) for line in unmet)}, or evaluate it with evaluate_all.py, which "
               "installs each submission's requirements in its own environment")
    return EvaluationResult(submission=SubmissionRow(run_id=run_id, status="error", error=message,
                                                     error_stage="requirements", **manifest_fields(sub)))


def manifest_failure(error: SubmissionError, run_id: str) -> EvaluationResult:
    """The result row of a submission whose manifest did not validate."""
    return EvaluationResult(submission=SubmissionRow(
        run_id=run_id, submission_id=error.submission_id, team_id="", name=error.submission_id,
        status="error", error=str(error), error_stage=error.stage))
