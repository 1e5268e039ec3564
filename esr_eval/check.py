"""``esr-eval check``: one submission's pre-flight, for participants before they submit and for
organisers on receipt.

Contract
--------
:func:`check_submission` runs named checks in this order and returns a :class:`CheckReport`;
it never raises for a fault of the submission. Each :class:`CheckResult` is ``pass``, ``warn``,
``fail`` or ``skipped``, with a message and, on ``fail`` (and on ``warn`` where there is advice),
the fix.

The checks are the evaluation itself (:mod:`esr_eval.evaluate`), on the embedded split under the
official timing protocol, judged stage by stage: every stage is the evaluator's function, and a
stage that fails is worded by :func:`esr_eval.evaluate.describe_failure`, exactly as the
evaluator's error row words it. What this module adds is its verdicts:

1. ``manifest``: the manifest parses and validates (:mod:`esr_eval.manifest`); no model code runs.
2. ``import``: the model code's imports are read (:mod:`esr_eval.requirements`, nothing run) and
   every module this environment lacks is listed with the line that imports it, all at once; the
   sandbox restricts itself as in the evaluation, then builds the class with the manifest's
   arguments; the message says which protections are active. A lacking module the construction
   never reached (an optional import, or one in code that runs later) is a warning.
3. ``load``: the checkpoint loads as the evaluator loads it (:mod:`esr_eval.loading`: sha256,
   ``weights_only`` unpickling, strict keys and shapes). ``strict: false`` with key differences,
   ``trusted_pickle`` used, and ``.cuda()`` calls redirected to the CPU are warnings.
4. ``forward``: the evaluator's timed, scored pass over the split (one call per image, no warm-up;
   an output that is not ×scale or not finite fails there). Then one more call per image returns
   the raw output: at least ``PLAUSIBLE_FRACTION`` of its values must lie within
   [``PLAUSIBLE_LOW``, ``PLAUSIBLE_HIGH``]·data_range before clamping.
5. ``complexity``: the evaluator's counts on the official 1×3×256×256 input (params, FLOPs as
   MACs, activations, #conv) with the audit and the trace check; a warning when the FLOPs audit
   or one of the evaluator's complexity flags would be raised.
6. ``hygiene``: the evaluator's hygiene checks (:func:`esr_eval.evaluate.hygiene_fields`); an input
   changed in place, nondeterminism, non-finite output, signs of output caching and a wrong
   declared data_range are failures. A finding counts only when a second run repeats it (the
   caching test partly rests on timings, which a busy machine can disturb once).
7. ``psnr``: the evaluator's mean PSNR of the scored outputs (dB, RGB, border = scale) beside
   bicubic upsampling (torch, as the ``team99_Bicubic`` reference); a warning below bicubic.

A failure that leaves later checks impossible (import, load, forward, or the sandbox process
ending) marks the rest ``skipped``.

Isolation: the evaluation's privilege separation and containment (:mod:`esr_eval.sandbox`,
:func:`esr_eval.containment.contained`): the checker decodes the images and scores against HR;
the submission's code runs only in a sandbox process that restricts itself (memory limit,
Landlock) before importing it and receives LR inputs only; nothing it spawns survives the check.
Every request to the sandbox is bounded by ``timeout_s``: a model that hangs fails the check in
progress as a timeout, one that ends its process fails it as the evaluator's error row would,
and the checker lives on. Units: seconds, milliseconds for latency, dB for PSNR.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from esr_eval.containment import contained
from esr_eval.data import embedded_split
from esr_eval.evaluate import (
    HYGIENE_IMAGES,
    EvaluationConfig,
    calibrate,
    complexity_fields,
    decode_split,
    describe_failure,
    hygiene_fields,
    restrict_fields,
    run_splits,
)
from esr_eval.hygiene import REPEAT_TOLERANCE
from esr_eval.manifest import MANIFEST_SUFFIXES, Submission, SubmissionError, manifest_paths, parse_manifest, printable
from esr_eval.quality import psnr_db, to_uint8
from esr_eval.requirements import ImportSite, import_sites, missing, requirements_for
from esr_eval.sandbox import RemoteAdapter, RemoteError, Sandbox, SandboxError, SandboxTimeout, to_input
from esr_eval.timing import OFFICIAL

PASS, WARN, FAIL, SKIPPED = "pass", "warn", "fail", "skipped"
MANIFEST, IMPORT, LOAD, FORWARD, COMPLEXITY, HYGIENE, PSNR = (
    "manifest", "import", "load", "forward", "complexity", "hygiene", "psnr")
CHECK_NAMES = (MANIFEST, IMPORT, LOAD, FORWARD, COMPLEXITY, HYGIENE, PSNR)
DEFAULT_TIMEOUT_S = 120.0
PLAUSIBLE_LOW, PLAUSIBLE_HIGH = -0.1, 1.1
PLAUSIBLE_FRACTION = 0.9
_EVALUATION_STAGE = {IMPORT: "load", LOAD: "load", FORWARD: "inference", COMPLEXITY: "complexity",
                     HYGIENE: "hygiene", PSNR: "inference"}  # the evaluator's stage each check runs


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


def _bicubic_u8(lr: np.ndarray, scale: int) -> np.ndarray:
    x = torch.from_numpy(np.ascontiguousarray(lr.transpose(2, 0, 1), dtype=np.float32)).unsqueeze(0) / 255.0
    return to_uint8(F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False), 1.0)


def _remote_where(exc: RemoteError, model_path: Path) -> str:
    """' (at file.py:line)' for the deepest line of the sandbox's traceback inside the model file."""
    lines = re.findall(rf'File "{re.escape(str(model_path))}", line (\d+)', exc.remote_traceback)
    return f" (at {model_path.name}:{lines[-1]})" if lines else ""


def _timed_out(name: str, timeout_s: float) -> CheckResult:
    return CheckResult(name, FAIL, f"no answer within {timeout_s:g} s during {name}; the check process was "
                                   "stopped (the evaluator records this as status 'timeout')",
                       "look for an endless loop, a sleep or a blocking wait in the model; if it is only slow, "
                       "give more time (`esr-eval check --timeout SECONDS`)")


def _hygiene_flags(fields: dict) -> list[str]:
    return [flag for flag in (fields["hygiene_flags"] or "").split(",") if flag]


class _BoundedSandbox(Sandbox):
    """The evaluator's sandbox process, every request bounded by the check's time limit (one left
    unanswered that long kills the sandbox: :class:`SandboxTimeout`)."""

    def __init__(self, device: str, timeout_s: float):
        self.timeout_s = timeout_s
        super().__init__(device)

    def request(self, op: str, arrays=(), timeout_s: float | None = None, **header) -> dict:
        return super().request(op, arrays, timeout_s or self.timeout_s, **header)

    def forward(self, x: np.ndarray, *, timeout_s: float | None = None, **options):
        return super().forward(x, timeout_s=timeout_s or self.timeout_s, **options)


class _Checker:
    """Checks 2–7 in order against one sandbox, keeping what later checks need; ``blocked`` ends the run."""

    def __init__(self, sub: Submission, config: EvaluationConfig, timeout_s: float):
        self.sub, self.config, self.timeout_s = sub, config, timeout_s
        self.device = torch.device(config.device)
        self.split = embedded_split(scale=self.sub.scale)
        self.decoded = decode_split(self.split)
        self.sandbox: Sandbox | None = None
        self.overheads: list[np.ndarray] = []
        self.params_before = 0
        self.split_row = None
        self.first_sr: np.ndarray | None = None
        self.blocked = False

    def stages(self) -> tuple[tuple[str, Callable[[], CheckResult]], ...]:
        return ((IMPORT, self.check_import), (LOAD, self.check_load), (FORWARD, self.check_forward),
                (COMPLEXITY, self.check_complexity), (HYGIENE, self.check_hygiene), (PSNR, self.check_psnr))

    def run(self, name: str, check: Callable[[], CheckResult]) -> CheckResult:
        """One check; a stage that fails, hangs or ends the sandbox fails it (and blocks the rest where needed)."""
        try:
            return check()
        except SandboxTimeout:
            self.blocked = True
            return _timed_out(name, self.timeout_s)
        except Exception as exc:  # a submission's fault is a verdict, never a crash
            self.blocked = self.blocked or name in (IMPORT, LOAD, FORWARD) or isinstance(exc, SandboxError)
            failure = describe_failure(_EVALUATION_STAGE[name], exc, self.config.memory_limit_mb)
            where = _remote_where(exc, self.sub.model_path) if failure.raised and isinstance(exc, RemoteError) else ""
            return CheckResult(name, FAIL, failure.problem + where, failure.fix)

    def close(self) -> None:
        if self.sandbox is not None:
            self.sandbox.close()

    def check_import(self) -> CheckResult:
        absent = missing(import_sites(self.sub.model_path, self.sub.root))  # every one, read not run
        self.sandbox = _BoundedSandbox(self.config.device, self.timeout_s)
        self.overheads = calibrate(self.sandbox, self.sub, [self.decoded])  # before any submission code
        protections = restrict_fields(self.sandbox, self.sub, self.config)["sandbox"]
        try:
            reply = self.sandbox.request("construct")
        except RemoteError as exc:
            if not absent:
                raise
            self.blocked = True
            failure = describe_failure("load", exc, self.config.memory_limit_mb)
            return CheckResult(IMPORT, FAIL, f"{failure.problem}; {_absent_modules(absent, self.sub.root)}",
                               f"{failure.fix}; all of them: pip install {' '.join(requirements_for(absent))}")
        built = (f"built {printable(str(reply.get('class_name')), 100)} from {self.sub.model.file} in the sandbox "
                 f"({protections})")
        if absent:  # imports the construction never reached (optional, or in code run later)
            return CheckResult(IMPORT, WARN, f"{built}; {_absent_modules(absent, self.sub.root)}, not reached yet",
                               "list them under `requirements:` if the model needs them when it runs")
        return CheckResult(IMPORT, PASS, built)

    def check_load(self) -> CheckResult:
        info = self.sandbox.request("load")
        spec = self.sub.checkpoint
        params = self.params_before = int(info.get("params_before_forward") or 0)
        after_load = list(info.get("after_load") or [])
        ran_after = f"; then ran after_load: {'; '.join(after_load)}" if after_load else ""
        if spec is None:
            untrained = " as constructed (untrained)" if params and not after_load else ""
            return CheckResult(LOAD, PASS, f"no checkpoint declared; the model holds {params:,} parameters"
                                           + untrained + ran_after, numbers={"params": params})
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
                 f"{params:,} parameters{ran_after}")
        if warnings:
            return CheckResult(LOAD, WARN, facts + "; " + "; ".join(warnings), "; ".join(fixes),
                               numbers={"params": params})
        return CheckResult(LOAD, PASS, facts + (", strict" if spec.strict else ", strict: false, keys all matched"),
                           numbers={"params": params})

    def _in_range_fraction(self, lr: np.ndarray) -> float:
        """Share of one raw (float, unclamped) output's values within the plausible range."""
        data_range = self.sub.data_range
        out = self.sandbox.forward(to_input(lr, data_range), data_range=data_range, output="float32")[0].output
        return float(np.mean((out >= PLAUSIBLE_LOW * data_range) & (out <= PLAUSIBLE_HIGH * data_range)))

    def check_forward(self) -> CheckResult:
        rows: list = []
        self.first_sr = run_splits("check", self.sub, self.sandbox, [self.split], [self.decoded], self.overheads,
                                   self.config, self.device, rows, [])
        self.split_row = rows[0]
        fraction = min(self._in_range_fraction(lr) for lr, _ in self.decoded)
        scale, data_range, latency_ms = self.sub.scale, self.sub.data_range, self.split_row.runtime_ms
        numbers = {"latency_mean_ms": latency_ms, "in_range_fraction": fraction, "images": len(self.decoded)}
        bounds = f"[{PLAUSIBLE_LOW * data_range:g}, {PLAUSIBLE_HIGH * data_range:g}]"
        if fraction < PLAUSIBLE_FRACTION:
            return CheckResult(FORWARD, FAIL,
                               f"only {fraction:.1%} of an output's values lie within {bounds} (declared "
                               f"data_range {data_range:g}); at least {PLAUSIBLE_FRACTION:.0%} are expected",
                               "declare the `data_range` the network was trained with (1.0 or 255.0); if it is "
                               "right, the checkpoint is probably not the trained weights", numbers)
        return CheckResult(FORWARD, PASS,
                           f"{len(self.decoded)} images, x{scale} output, finite, >= {fraction:.1%} of values "
                           f"within {bounds}; mean latency {latency_ms:.1f} ms (official protocol: one call per "
                           f"image, first call cold, on {self.sandbox.device})", numbers=numbers)

    def check_complexity(self) -> CheckResult:
        c, fields = complexity_fields(self.sandbox, self.sub, self.config, self.device, self.decoded[0][0],
                                      self.first_sr)
        numbers = {"params": c.params, "params_before_forward": self.params_before,
                   "flops_fvcore": c.flops_fvcore, "flops_hook_2022": c.flops_hook_2022,
                   "flops_audit": c.flops_audit, "activations": c.activations, "num_conv": c.num_conv}
        fused = "" if c.params == self.params_before else f" ({self.params_before:,} before the first forward)"
        text = (f"on {'x'.join(map(str, c.input_shape))}: params {c.params:,}{fused}, FLOPs (fvcore, MACs) "
                f"{c.flops_fvcore:,}, 2022 hook counter {c.flops_hook_2022:,}, activations {c.activations:,}, "
                f"{c.num_conv} conv calls; {c.audit_text()}")
        if c.audit_flag:
            return CheckResult(COMPLEXITY, WARN, f"{text}; the FLOPs audit flags the official count",
                               "the official counter misses some of this model's work (same-padded convs, FFTs, "
                               "custom ops count as 0); organisers see both numbers", numbers)
        if fields["complexity_flags"]:
            detail = f" ({printable(fields['trace_detail'], 300)})" if fields["trace_detail"] else ""
            return CheckResult(COMPLEXITY, WARN, f"{text}; the evaluator flags {fields['complexity_flags']}{detail}",
                               "the model that is counted must be the one that runs: keep forward traceable, its "
                               "work independent of the input, and every weight a parameter saved in the "
                               "checkpoint; organisers see the flags", numbers)
        return CheckResult(COMPLEXITY, PASS, text, numbers=numbers)

    def check_hygiene(self) -> CheckResult:
        adapter = RemoteAdapter(self.sandbox, self.sub.scale, self.sub.data_range)
        found = hygiene_fields(adapter, self.device)
        first = _hygiene_flags(found)
        confirmed = _hygiene_flags(hygiene_fields(adapter, self.device)) if first else []
        flags = [flag for flag in first if flag in confirmed]
        declared = self.sub.data_range
        other_range = 255.0 if declared == 1.0 else 1.0
        findings = {
            "input_mutated": ("forward changes its input tensor in place",
                              "work on a copy (x = x.clone()) or out of place (x = x - mean, not x -= mean)"),
            "nondeterministic": (f"two calls on the same input differ by up to "
                                 f"{found['hygiene_repeat_max_abs_diff']:.3g} (tolerance {REPEAT_TOLERANCE:g})",
                                 "remove randomness at inference (dropout or noise active in eval mode)"),
            "nonfinite_output": ("the output contains NaN or Inf on a repeated call",
                                 "make forward numerically stable"),
            "cache_suspect": (f"output caching suspected: {found['hygiene_cache_detail']}",
                              "compute every output from its input; do not keep results between calls"),
            "data_range": (f"declared data_range {declared:g} scores {found['hygiene_data_range_psnr_db']:.2f} dB, "
                           f"{other_range:g} would score {found['hygiene_other_data_range_psnr_db'] or 0:.2f} dB",
                           f"declare `data_range: {other_range}` in the manifest (the range the network was "
                           "trained with)"),
        }
        numbers = {"repeat_max_abs_diff": found["hygiene_repeat_max_abs_diff"],
                   "data_range_psnr_db": found["hygiene_data_range_psnr_db"]}
        if flags:
            return CheckResult(HYGIENE, FAIL, "; ".join(findings[f][0] for f in flags),
                               "; ".join(findings[f][1] for f in flags), numbers)
        return CheckResult(HYGIENE, PASS,
                           f"input untouched, deterministic (max diff {found['hygiene_repeat_max_abs_diff']:.3g}), "
                           f"no sign of output caching, declared data_range {declared:g} confirmed on "
                           f"{HYGIENE_IMAGES} images", numbers=numbers)

    def check_psnr(self) -> CheckResult:
        scale = self.sub.scale
        model_db = self.split_row.psnr_db
        bicubic_db = float(np.mean([psnr_db(_bicubic_u8(lr, scale), hr, scale) for lr, hr in self.decoded]))
        gain_db = model_db - bicubic_db
        numbers = {"psnr_db": model_db, "bicubic_psnr_db": bicubic_db, "gain_db": gain_db}
        text = (f"{model_db:.2f} dB vs bicubic {bicubic_db:.2f} dB ({gain_db:+.2f} dB) on the embedded split "
                f"({len(self.decoded)} images, RGB, border {scale})")
        if gain_db < 0:
            return CheckResult(PSNR, WARN, text + ": below bicubic",
                               "check that the checkpoint holds the trained weights and that `data_range` is right",
                               numbers)
        return CheckResult(PSNR, PASS, text, numbers=numbers)


def _run_isolated(sub: Submission, device: str, timeout_s: float) -> list[CheckResult]:
    """Checks 2–7 as the evaluator runs a submission: the split decoded here, then one sandbox
    process, its whole life contained (nothing it spawns survives); stops at a blocking failure."""
    checker = _Checker(sub, EvaluationConfig(protocol=OFFICIAL, device=device), timeout_s)
    results: list[CheckResult] = []
    with contained(None):
        try:
            for name, check in checker.stages():
                results.append(checker.run(name, check))
                if checker.blocked:
                    break
        finally:
            checker.close()
    return results


def _absent_modules(absent: list[ImportSite], root: Path) -> str:
    count = f"{len(absent)} module{'s' if len(absent) > 1 else ''}"
    return f"the model code imports {count} this environment lacks: " + "; ".join(s.describe(root) for s in absent)


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
        failure = describe_failure(MANIFEST, exc)
        results = [CheckResult(MANIFEST, FAIL, failure.problem, failure.fix)]
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
