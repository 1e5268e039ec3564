"""``esr-eval check``: one submission's pre-flight, for participants before they submit and for
organisers on receipt.

Contract
--------
:func:`check_submission` runs named checks in this order and returns a :class:`CheckReport`;
it never raises for a fault of the submission. Each :class:`CheckResult` is ``pass``, ``warn``,
``fail`` or ``skipped``, with a message and, on ``fail`` (and on ``warn`` where there is advice),
the fix.

1. ``manifest``: the manifest parses and validates (:mod:`esr_eval.manifest`); no model code runs.
2. ``import``: the model file imports and the class is built with the manifest's arguments (in the
   sandbox, which says which protections are active).
3. ``load``: the checkpoint loads as the evaluator loads it (:mod:`esr_eval.loading`: sha256,
   ``weights_only`` unpickling, strict keys and shapes). ``strict: false`` with key differences,
   ``trusted_pickle`` used, and ``.cuda()`` calls redirected to the CPU are warnings.
4. ``forward``: one call per image of the embedded split under the official timing protocol
   (no warm-up, one call each). The output must be a tensor of 3 × (H·scale) × (W·scale),
   finite, with at least ``PLAUSIBLE_FRACTION`` of its values within
   [``PLAUSIBLE_LOW``, ``PLAUSIBLE_HIGH``]·data_range before clamping.
5. ``complexity``: params, FLOPs (fvcore; MACs), activations, #conv on the official
   1×3×256×256 input (:mod:`esr_eval.complexity`); a warning when the FLOPs audit flags the count.
6. ``hygiene``: :func:`esr_eval.hygiene.check_hygiene` on the first ``HYGIENE_IMAGES`` images;
   an input changed in place, nondeterminism, non-finite output, signs of output caching and a
   wrong declared data_range are failures. A finding counts only when a second run repeats it
   (the caching test partly rests on timings, which a busy machine can disturb once).
7. ``psnr``: mean PSNR (dB, RGB, border = scale) of the forward outputs against the HR images,
   beside bicubic upsampling (torch, as the ``team99_Bicubic`` reference); a warning below bicubic.

A failure that leaves later checks impossible (import, load, or a forward that raises or returns
a wrong shape or non-finite values) marks the rest ``skipped``.

Isolation: the same privilege separation as the evaluation (:mod:`esr_eval.sandbox`): the
submission's code runs only in a sandbox process that has restricted itself (memory limit,
Landlock) before importing it and that receives LR inputs only; the checker decodes the images,
scores PSNR against HR, and reads every answer as untrusted data (no pickle). A model that hangs
or ends its process fails the check in progress, as a timeout or a crash with the fix, instead of
taking the checker down. ``timeout_s`` bounds each check separately. Units: seconds, milliseconds
for latency, dB for PSNR.
"""

from __future__ import annotations

import difflib
import math
import re
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from esr_eval.complexity import DEFAULT_INPUT_SHAPE, complexity_from_reply
from esr_eval.data import Split, embedded_split, load_pair
from esr_eval.evaluate import HYGIENE_IMAGES
from esr_eval.hygiene import REPEAT_TOLERANCE, check_hygiene
from esr_eval.manifest import (MANIFEST_SUFFIXES, Submission, SubmissionError, manifest_paths, parse_manifest,
                               printable)
from esr_eval.quality import psnr_db, to_uint8
from esr_eval.sandbox import RemoteAdapter, RemoteError, Sandbox, SandboxError, SandboxTimeout, restrict
from esr_eval.settings import DEFAULT_MEMORY_LIMIT_MB
from esr_eval.timing import OFFICIAL, CallTiming, time_split

PASS, WARN, FAIL, SKIPPED = "pass", "warn", "fail", "skipped"
MANIFEST, IMPORT, LOAD, FORWARD, COMPLEXITY, HYGIENE, PSNR = (
    "manifest", "import", "load", "forward", "complexity", "hygiene", "psnr")
CHECK_NAMES = (MANIFEST, IMPORT, LOAD, FORWARD, COMPLEXITY, HYGIENE, PSNR)
DEFAULT_TIMEOUT_S = 120.0
PLAUSIBLE_LOW, PLAUSIBLE_HIGH = -0.1, 1.1
PLAUSIBLE_FRACTION = 0.9


@dataclass(frozen=True)
class CheckResult:
    """One named check: status, what was found, and the fix (on failure, or advice on a warning)."""

    name: str
    status: str
    message: str
    fix: str | None = None
    numbers: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class CheckReport:
    """Every check of one submission, in order."""

    submission_id: str
    manifest_path: Path
    results: tuple[CheckResult, ...]

    @property
    def ok(self) -> bool:
        """True when no check failed (warnings allowed)."""
        return all(r.status != FAIL for r in self.results)

    def result(self, name: str) -> CheckResult:
        for result in self.results:
            if result.name == name:
                return result
        raise KeyError(f"no check named {name!r}; checks are {', '.join(CHECK_NAMES)}")

    def render(self) -> str:
        """A pass/fail list, one line per check, the fix under each failure."""
        lines = [f"esr-eval check {self.submission_id}  ({self.manifest_path})"]
        width = max(len(name) for name in CHECK_NAMES)
        for r in self.results:
            first, *rest = r.message.splitlines() or [""]
            lines.append(f"  {r.status.upper() if r.status in (FAIL, WARN) else r.status:<7}  "
                         f"{r.name:<{width}}  {first}")
            lines += [" " * (13 + width) + line for line in rest]
            if r.fix and r.status in (FAIL, WARN):
                lines.append(" " * (13 + width) + f"fix: {r.fix}")
        counts = {s: sum(r.status == s for r in self.results) for s in (FAIL, WARN, SKIPPED)}
        verdict = "FAILED" if counts[FAIL] else "PASSED"
        lines.append(f"{verdict}: {counts[FAIL]} failed, {counts[WARN]} warnings, {counts[SKIPPED]} skipped")
        return "\n".join(lines)


def _from_error(name: str, exc: SubmissionError) -> CheckResult:
    return CheckResult(name, FAIL, f"{exc.field_name}: {exc.problem}", exc.fix)


def _bicubic_u8(lr: np.ndarray, scale: int) -> np.ndarray:
    x = torch.from_numpy(np.ascontiguousarray(lr.transpose(2, 0, 1), dtype=np.float32)).unsqueeze(0) / 255.0
    return to_uint8(F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False), 1.0)


def _output_problem(out: object, lr_hw: tuple[int, int], scale: int) -> tuple[str, str] | None:
    """(problem, fix) when one raw output is not a finite 3 x (H*scale) x (W*scale) tensor, else None."""
    if not isinstance(out, torch.Tensor):
        return f"forward returned a {type(out).__name__}, not a tensor", "return the SR image as one 1x3xHxW tensor"
    expected = (3, lr_hw[0] * scale, lr_hw[1] * scale)
    if tuple(out.shape[-3:]) != expected or out.numel() != math.prod(expected):
        return (f"output shape {list(out.shape)} for a 1x3x{lr_hw[0]}x{lr_hw[1]} input; expected "
                f"[1, {expected[0]}, {expected[1]}, {expected[2]}] (x{scale} in both dimensions)",
                f"upscale by exactly `scale` ({scale}) in height and width; if the network only takes sizes "
                "that are a multiple of N, declare `adapter: {pad_to_multiple: N}`")
    if not bool(torch.isfinite(out).all()):
        return ("the output contains NaN or Inf",
                "find the division by zero, log of a non-positive value or overflow in forward, and check that "
                "`data_range` is the range the network was trained with")
    return None


def _from_remote(name: str, exc: RemoteError, model_path: Path, fix: str) -> CheckResult:
    """A failure the sandbox reported: a submission error as itself, anything else as raised there."""
    if exc.problem is not None:
        return CheckResult(name, FAIL, printable(f"{exc.field_name}: {exc.problem}", 2000), printable(str(exc.fix), 500))
    if exc.type_name == "OutOfMemoryError":
        return CheckResult(name, FAIL, f"out of memory: {printable(str(exc), 500)}",
                           "declare a tiled forward (`adapter: {tile: {size: 128, overlap: 16}}`) "
                           "or reduce the model's memory use")
    return CheckResult(name, FAIL, f"raised {printable(exc.type_name, 100)}: {printable(str(exc), 2000)}"
                                   f"{_remote_where(exc, model_path)}", fix)


def _remote_where(exc: RemoteError, model_path: Path) -> str:
    """' (at file.py:line)' for the deepest line of the sandbox's traceback inside the model file."""
    lines = re.findall(rf'File "{re.escape(str(model_path))}", line (\d+)', exc.remote_traceback)
    return f" (at {model_path.name}:{lines[-1]})" if lines else ""


def _died(name: str, exc: SandboxError) -> CheckResult:
    status = exc.exit_status
    how = ("" if status is None else f" (killed by {signal.Signals(-status).name})" if status < 0
           else f" (exit code {status})")
    return CheckResult(name, FAIL, f"the sandbox process died during {name}{how}: {printable(str(exc), 1000)}; the "
                                   "evaluator records this as an error row",
                       "remove whatever ends the process (os._exit, a signal, a crash in a compiled extension); "
                       "a model must return its output, never exit")


def _timed_out(name: str, timeout_s: float) -> CheckResult:
    return CheckResult(name, FAIL, f"no answer within {timeout_s:g} s during {name}; the check process was "
                                   "stopped (the evaluator records this as status 'timeout')",
                       "look for an endless loop, a sleep or a blocking wait in the model; if it is only slow, "
                       "give more time (`esr-eval check --timeout SECONDS`)")


class _Checker:
    """Checks 2–7 in order against one sandbox, keeping what later checks need; ``blocked`` ends the run."""

    def __init__(self, sub: Submission, sandbox: Sandbox, timeout_s: float):
        self.sub, self.sandbox, self.timeout_s = sub, sandbox, timeout_s
        self.remote = RemoteAdapter(sandbox, sub.scale, sub.data_range)
        self.split: Split | None = None
        self.pairs: list[tuple[np.ndarray, np.ndarray]] = []
        self.sr_images: list[np.ndarray] = []
        self.params_before: int | None = None
        self.blocked = False

    def stages(self) -> tuple[tuple[str, Callable[[], CheckResult]], ...]:
        return ((IMPORT, self.check_import), (LOAD, self.check_load), (FORWARD, self.check_forward),
                (COMPLEXITY, self.check_complexity), (HYGIENE, self.check_hygiene), (PSNR, self.check_psnr))

    def run(self, name: str, check: Callable[[], CheckResult], fix: str) -> CheckResult:
        """One check; a sandbox that fails, hangs or dies fails it (and blocks the rest where needed)."""
        try:
            return check()
        except SandboxTimeout:
            self.blocked = True
            return _timed_out(name, self.timeout_s)
        except SandboxError as exc:
            self.blocked = True
            return _died(name, exc)
        except RemoteError as exc:
            self.blocked = self.blocked or name in (IMPORT, LOAD, FORWARD)
            return _from_remote(name, exc, self.sub.model_path, fix)

    def check_import(self) -> CheckResult:
        restricted = restrict(self.sandbox, self.sub, DEFAULT_MEMORY_LIMIT_MB)
        reply = self.sandbox.request("construct", timeout_s=self.timeout_s)
        return CheckResult(IMPORT, PASS, f"built {printable(str(reply.get('class_name')), 100)} from "
                                         f"{self.sub.model.file} in the sandbox "
                                         f"({printable(str(restricted.get('landlock')), 200)})")

    def check_load(self) -> CheckResult:
        info = self.sandbox.request("load", timeout_s=self.timeout_s)
        spec = self.sub.checkpoint
        params = self.params_before = int(info.get("params_before_forward") or 0)
        if spec is None:
            return CheckResult(LOAD, PASS, f"no checkpoint declared; the model holds {params:,} parameters"
                                           + (" as constructed (untrained)" if params else ""),
                               numbers={"params": params})
        missing, unexpected = list(info.get("missing_keys") or []), list(info.get("unexpected_keys") or [])
        warnings, fixes = [], []
        if missing or unexpected:
            warnings.append(f"strict: false let {len(missing)} missing and {len(unexpected)} unexpected keys through "
                            f"(missing: {', '.join(map(str, missing[:5])) or '-'}; "
                            f"unexpected: {', '.join(map(str, unexpected[:5])) or '-'})")
            fixes.append("make the checkpoint match the model so that strict loading works")
        if info.get("trusted_pickle_used"):
            warnings.append("the checkpoint needed full unpickling, allowed by `trusted_pickle: true`")
            fixes.append("re-save it as a plain state dict: torch.save(model.state_dict(), path)")
        if info.get("cuda_calls_redirected"):
            warnings.append(f"the constructor called .cuda() {info['cuda_calls_redirected']} time(s); "
                            "redirected to the CPU here")
            fixes.append("leave device placement to the evaluator (no .cuda() in __init__)")
        facts = (f"{spec.path} (sha256 {str(info.get('checkpoint_sha256'))[:12]}…) loaded into "
                 f"{params:,} parameters")
        if warnings:
            return CheckResult(LOAD, WARN, facts + "; " + "; ".join(warnings), "; ".join(fixes),
                               numbers={"params": params})
        return CheckResult(LOAD, PASS, facts + (", strict" if spec.strict else ", strict: false, keys all matched"),
                           numbers={"params": params})

    def _call(self, x: torch.Tensor) -> CallTiming:
        timing, _, _ = self.sandbox.forward(x.numpy(), data_range=self.sub.data_range, output="float32",
                                            timeout_s=self.timeout_s)
        return CallTiming(torch.from_numpy(timing.output), timing.latency_ms, timing.wall_ms, timing.external_ms)

    def check_forward(self) -> CheckResult:
        split = self.split = embedded_split()
        self.pairs = [load_pair(pair, split.scale) for pair in split.pairs]
        inputs = [self.remote.to_input(lr) for lr, _ in self.pairs]
        timed = time_split(self._call, inputs, OFFICIAL)
        scale, data_range = self.sub.scale, self.sub.data_range
        fractions = []
        for pair, (lr, _), out in zip(split.pairs, self.pairs, timed.outputs):
            problem = _output_problem(out, lr.shape[:2], scale)
            if problem:
                self.blocked = True
                return CheckResult(FORWARD, FAIL, f"{pair.name}: {problem[0]}", problem[1])
            values = out.float()
            fractions.append(float(((values >= PLAUSIBLE_LOW * data_range)
                                    & (values <= PLAUSIBLE_HIGH * data_range)).float().mean()))
            self.sr_images.append(to_uint8(values, data_range))
        latency_ms = float(timed.latency_ms.mean())
        numbers = {"latency_mean_ms": latency_ms, "in_range_fraction": min(fractions), "images": len(self.pairs)}
        bounds = f"[{PLAUSIBLE_LOW * data_range:g}, {PLAUSIBLE_HIGH * data_range:g}]"
        if min(fractions) < PLAUSIBLE_FRACTION:
            return CheckResult(FORWARD, FAIL,
                               f"only {min(fractions):.1%} of an output's values lie within {bounds} (declared "
                               f"data_range {data_range:g}); at least {PLAUSIBLE_FRACTION:.0%} are expected",
                               "declare the `data_range` the network was trained with (1.0 or 255.0); if it is "
                               "right, the checkpoint is probably not the trained weights", numbers)
        return CheckResult(FORWARD, PASS,
                           f"{len(self.pairs)} images, x{scale} output, finite, >= {min(fractions):.1%} of values "
                           f"within {bounds}; mean latency {latency_ms:.1f} ms (official protocol: one call per "
                           f"image, first call cold, on {self.sandbox.device})", numbers=numbers)

    def check_complexity(self) -> CheckResult:
        reply = self.sandbox.request("complexity", shape=list(DEFAULT_INPUT_SHAPE), data_range=self.sub.data_range,
                                     timeout_s=self.timeout_s)
        c = complexity_from_reply(reply, self.params_before)
        numbers = {"params": c.params, "params_before_forward": c.params_before_forward,
                   "flops_fvcore": c.flops_fvcore, "flops_hook_2022": c.flops_hook_2022,
                   "flops_audit": c.flops_audit, "activations": c.activations, "num_conv": c.num_conv}
        fused = ("" if c.params == c.params_before_forward
                 else f" ({c.params_before_forward:,} before the first forward)")
        text = (f"on {'x'.join(map(str, c.input_shape))}: params {c.params:,}{fused}, FLOPs (fvcore, MACs) "
                f"{c.flops_fvcore:,}, 2022 hook counter {c.flops_hook_2022:,}, activations {c.activations:,}, "
                f"{c.num_conv} conv calls; {c.audit_text()}")
        if c.audit_flag:
            return CheckResult(COMPLEXITY, WARN, f"{text}; the FLOPs audit flags the official count",
                               "the official counter misses some of this model's work (same-padded convs, FFTs, "
                               "custom ops count as 0); organisers see both numbers", numbers)
        return CheckResult(COMPLEXITY, PASS, text, numbers=numbers)

    def check_hygiene(self) -> CheckResult:
        pairs = self.pairs[:HYGIENE_IMAGES]
        report = check_hygiene(self.remote, pairs, "cpu")
        confirmed = check_hygiene(self.remote, pairs, "cpu").flags if report.flags else ()
        flags = [flag for flag in report.flags if flag in confirmed]
        other_range = 255.0 if self.sub.data_range == 1.0 else 1.0
        findings = {
            "input_mutated": ("forward changes its input tensor in place",
                              "work on a copy (x = x.clone()) or out of place (x = x - mean, not x -= mean)"),
            "nondeterministic": (f"two calls on the same input differ by up to {report.repeat_max_abs_diff:.3g} "
                                 f"(tolerance {REPEAT_TOLERANCE:g})",
                                 "remove randomness at inference (dropout or noise active in eval mode)"),
            "nonfinite_output": ("the output contains NaN or Inf on a repeated call",
                                 "make forward numerically stable"),
            "cache_suspect": (f"output caching suspected: {report.cache_detail}",
                              "compute every output from its input; do not keep results between calls"),
            "data_range": (f"declared data_range {self.sub.data_range:g} scores {report.data_range_psnr_db:.2f} dB, "
                           f"{other_range:g} would score {report.other_data_range_psnr_db or 0:.2f} dB",
                           f"declare `data_range: {other_range}` in the manifest (the range the network was "
                           "trained with)"),
        }
        numbers = {"repeat_max_abs_diff": report.repeat_max_abs_diff,
                   "data_range_psnr_db": report.data_range_psnr_db}
        if flags:
            return CheckResult(HYGIENE, FAIL, "; ".join(findings[f][0] for f in flags),
                               "; ".join(findings[f][1] for f in flags), numbers)
        return CheckResult(HYGIENE, PASS,
                           f"input untouched, deterministic (max diff {report.repeat_max_abs_diff:.3g}), no sign of "
                           f"output caching, declared data_range {self.sub.data_range:g} confirmed on {len(pairs)} "
                           "images", numbers=numbers)

    def check_psnr(self) -> CheckResult:
        scale = self.sub.scale
        if scale != self.split.scale:
            return CheckResult(PSNR, SKIPPED, f"the embedded split is x{self.split.scale}; this model is x{scale}")
        model_db = float(np.mean([psnr_db(sr, hr, scale) for sr, (_, hr) in zip(self.sr_images, self.pairs)]))
        bicubic_db = float(np.mean([psnr_db(_bicubic_u8(lr, scale), hr, scale) for lr, hr in self.pairs]))
        gain_db = model_db - bicubic_db
        numbers = {"psnr_db": model_db, "bicubic_psnr_db": bicubic_db, "gain_db": gain_db}
        text = (f"{model_db:.2f} dB vs bicubic {bicubic_db:.2f} dB ({gain_db:+.2f} dB) on the embedded split "
                f"({len(self.pairs)} images, RGB, border {scale})")
        if gain_db < 0:
            return CheckResult(PSNR, WARN, text + ": below bicubic",
                               "check that the checkpoint holds the trained weights and that `data_range` is right",
                               numbers)
        return CheckResult(PSNR, PASS, text, numbers=numbers)


_FIXES = {
    IMPORT: "fix the model file so that it imports and the class builds with the manifest's arguments",
    LOAD: "make the checkpoint load as declared in the manifest",
    FORWARD: "make forward run on any 1x3xHxW float tensor in [0, data_range] (the LR images here are 64x64)",
    COMPLEXITY: "the official counter (fvcore) traces forward with torch.jit.trace on a 1x3x256x256 input: keep "
                "forward tensor-in, tensor-out and traceable",
    HYGIENE: "forward must give the same kind of answer every time it is called",
    PSNR: "",
}


def _run_isolated(sub: Submission, device: str, timeout_s: float) -> list[CheckResult]:
    """Checks 2–7 against a sandbox process; a hang or a dead sandbox fails the check in progress."""
    results: list[CheckResult] = []
    try:
        sandbox = Sandbox(device)
    except SandboxError as exc:
        return [_died(IMPORT, exc)]
    with sandbox:
        checker = _Checker(sub, sandbox, timeout_s)
        for name, check in checker.stages():
            results.append(checker.run(name, check, _FIXES[name]))
            if checker.blocked:
                break
    return results


def _manifest_summary(sub: Submission) -> str:
    checkpoint = "no checkpoint" if sub.checkpoint is None else f"checkpoint {sub.checkpoint.path}"
    return (f"team {sub.team_id} '{sub.name}': {sub.model.class_name} from {sub.model.file}, {checkpoint}, "
            f"data_range {sub.data_range:g}, x{sub.scale}, adapter {sub.adapter.describe()}")


def check_submission(manifest_path: Path, root: Path, *, device: str = "cpu",
                     timeout_s: float = DEFAULT_TIMEOUT_S) -> CheckReport:
    """Run every check on one submission (see the module docstring); never raises for its faults."""
    manifest_path = Path(manifest_path)
    try:
        sub = parse_manifest(manifest_path, root, check_files=False)
    except SubmissionError as exc:
        results = [_from_error(MANIFEST, exc)]
        sid = exc.submission_id
    except OSError as exc:
        results = [CheckResult(MANIFEST, FAIL, f"cannot read {manifest_path}: {exc}",
                               "give the path of an existing manifest (.yaml, .yml or .toml)")]
        sid = manifest_path.stem
    else:
        results = [CheckResult(MANIFEST, PASS, _manifest_summary(sub))] + _run_isolated(sub, device, timeout_s)
        sid = sub.submission_id
    done = {r.name for r in results}
    stopped_at = next((r.name for r in results if r.status == FAIL), None)
    results += [CheckResult(name, SKIPPED, f"not run: {stopped_at} failed")
                for name in CHECK_NAMES if name not in done]
    return CheckReport(submission_id=sid, manifest_path=manifest_path, results=tuple(results))


def find_manifest(token: str, manifests_dir: Path) -> Path:
    """A manifest path as given, or the manifest whose stem (submission id) is ``token``."""
    path = Path(token)
    if path.suffix in MANIFEST_SUFFIXES:
        if not path.is_file():
            raise FileNotFoundError(f"manifest {path} does not exist; give an existing path or a submission id")
        return path
    matches = [p for p in manifest_paths(manifests_dir) if p.stem == token]
    if len(matches) > 1:
        raise ValueError(f"two manifests under {manifests_dir} have the id {token}: "
                         f"{', '.join(map(str, matches))}; pass the path of the one to check")
    if not matches:
        known = [p.stem for p in manifest_paths(manifests_dir)]
        close = difflib.get_close_matches(token, known, n=1)
        hint = f"did you mean '{close[0]}'?" if close else "`esr-eval ls` lists the submissions"
        raise FileNotFoundError(f"no manifest named {token} under {manifests_dir}; {hint} "
                                "(or pass a manifest path, or --manifests DIR)")
    return matches[0]
