"""``esr-eval summary``: every selected submission's complexity, several at once, each in its own
sandbox process, what its code writes kept apart from the command's output.

Contract
--------
* :func:`summarize` measures each submission in a fresh sandbox process, the evaluator's
  (:class:`esr_eval.sandbox.Sandbox`: memory limit, Landlock, LR-only requests): ``restrict`` →
  ``load`` → ``complexity`` on the probe input. For more than one submission the sandboxes are
  forked by one :class:`esr_eval.forkserver.ForkServer` (the interpreter start and the imports,
  about 3.5 CPU-s, paid once); where it is unavailable, each is a fresh interpreter. Up to
  ``jobs`` sandboxes run at once (default: the CPUs this process may use), driven from threads of
  this process, each with
  ``max(1, cpus // jobs)`` torch threads; the whole run is wrapped in
  :func:`esr_eval.containment.contained`, so nothing a submission spawns outlives the command.
* The numbers are :func:`esr_eval.complexity.measure_complexity`'s on the submission's model, as
  the sandbox reports them (:func:`esr_eval.complexity.complexity_from_reply`;
  ``params_before_forward`` is the parameter count after loading): the figures the command
  printed when it loaded the submissions in its own process, digit for digit.
* A submission's own output, from the moment its sandbox has restricted itself (before any of its
  code runs) until the process exits (``print``, warnings, tracer warnings, C-level writes to
  fd 1 and 2), goes to the sandbox's log, never to this process's stdout or stderr. It becomes
  the row's ``output`` (each line escaped with :func:`esr_eval.validation.printable`; beyond
  ``OUTPUT_MAX_BYTES`` the head and tail are kept) and ``output_lines``. The sandbox is ended by
  closing its request pipe, so Python and C stdio flush what they buffered; a process still
  running ``FINISH_WAIT_S`` later (a non-daemon thread of the submission) is killed, and so is
  one that timed out, losing only what it had not flushed.
* Never raises for a submission's fault: an invalid manifest, a failure to import, load or count,
  the process ending, or a request left unanswered for ``timeout_s`` is an ``error`` row whose
  message is worded as the evaluator's error row (``[id] problem. Fix: ...``). Rows come back in
  this order: the manifest errors, then the submissions as selected.
* Formats (:data:`FORMATS`, :func:`write_summary`): ``table`` (aligned text, the probe shape
  above it, one line per submission that wrote output below it, errors on stderr), ``csv``,
  ``json`` (a list of objects) and ``parquet`` (a file: ``out`` is required,
  :func:`check_summary_args` says so before anything is measured). Every row field is a column.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, TextIO

import pandas as pd
from tqdm import tqdm

from esr_eval.complexity import Complexity, complexity_from_reply
from esr_eval.containment import contained
from esr_eval.evaluate import MESSAGE_CHARS, describe_failure
from esr_eval.forkserver import ForkServer, ForkServerError
from esr_eval.forkserver import available as forkserver_available
from esr_eval.manifest import Submission, SubmissionError
from esr_eval.sandbox import RemoteError, Sandbox, SandboxTimeout, restrict, sandbox_env
from esr_eval.settings import DEFAULT_INPUT_SHAPE, DEFAULT_MEMORY_LIMIT_MB
from esr_eval.validation import printable

FORMATS = ("table", "csv", "json", "parquet")
DEFAULT_TIMEOUT_S = 600.0  # per request to a sandbox (its load, its counts)
FINISH_WAIT_S = 10.0  # a sandbox whose pipe is closed gets this long to exit (and flush) before it is killed
OUTPUT_MAX_BYTES = 20_000  # of a submission's output kept in its row: the head and the tail, half each
_READ_CHUNK_BYTES = 1 << 20
TABLE_HEADERS = ["submission", "params", "flops_fvcore", "flops_hook_2022", "flops_audit", "activations",
                 "num_conv", "audit"]
_INT_COLUMNS = ("params", "params_before_forward", "flops_fvcore", "flops_hook_2022", "flops_audit",
                "activations", "num_conv", "output_lines")


@dataclass(frozen=True)
class SummaryRow:
    """One submission's complexity (``status`` ``ok``) or why it has none (``error``)."""

    submission_id: str
    status: str
    input_shape: str
    params: int | None = None
    params_before_forward: int | None = None
    flops_fvcore: int | None = None
    flops_hook_2022: int | None = None
    flops_audit: int | None = None
    flops_audit_flag: bool | None = None
    activations: int | None = None
    num_conv: int | None = None
    audit: str | None = None
    error: str | None = None
    error_stage: str | None = None
    output: str = ""
    output_lines: int = 0
    wall_s: float | None = None


def available_cpus() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class _SummarySandbox(Sandbox):
    """The evaluator's sandbox process, every request bounded by ``timeout_s``, ended so that what
    the submission printed is flushed to its log (:meth:`Sandbox.finish`)."""

    def __init__(self, device: str, torch_threads: int, timeout_s: float, forkserver: ForkServer | None):
        self.timeout_s = timeout_s
        super().__init__(device, torch_threads, forkserver)

    def request(self, op: str, arrays=(), timeout_s: float | None = None, **header) -> dict:
        return super().request(op, arrays, timeout_s or self.timeout_s, **header)

    def log_size(self) -> int:
        with contextlib.suppress(OSError):
            return self.log_path.stat().st_size
        return 0



@dataclass(frozen=True)
class _Options:
    input_shape: tuple[int, ...]
    device: str
    torch_threads: int
    timeout_s: float
    memory_limit_mb: int | None
    landlock: bool


def _ok_row(sub: Submission, c: Complexity, output: tuple[str, int], wall_s: float) -> SummaryRow:
    return SummaryRow(
        submission_id=sub.submission_id, status="ok", input_shape="x".join(map(str, c.input_shape)),
        params=c.params, params_before_forward=c.params_before_forward, flops_fvcore=c.flops_fvcore,
        flops_hook_2022=c.flops_hook_2022, flops_audit=c.flops_audit, flops_audit_flag=c.audit_flag,
        activations=c.activations, num_conv=c.num_conv, audit=printable(c.audit_text(), MESSAGE_CHARS),
        output=output[0], output_lines=output[1], wall_s=wall_s)


def _error_message(submission_id: str, stage: str, exc: Exception, options: _Options) -> str:
    """The error row's message, worded as the evaluator's (:func:`esr_eval.evaluate.describe_failure`)."""
    if isinstance(exc, SandboxTimeout):
        return (f"[{submission_id}] {stage}: no answer within {options.timeout_s:g} s, its process was stopped. "
                "Fix: make the model's forward on the probe input finish sooner, or give a longer --timeout")
    if isinstance(exc, RemoteError) and exc.stage:  # a SubmissionError in the sandbox, as it worded it
        return printable(str(exc), MESSAGE_CHARS)
    failure = describe_failure(stage, exc, options.memory_limit_mb)
    where = f" (`esr-eval check {submission_id}` shows where)" if failure.raised else ""
    return f"[{submission_id}] {failure.problem}. Fix: {failure.fix}{where}"


def _captured(log_path: Path, offset: int) -> tuple[str, int]:
    """(the output written to the log from ``offset`` on, escaped line by line and clipped; its line count)."""
    try:
        with open(log_path, "rb") as log:
            size = log.seek(0, os.SEEK_END)
            log.seek(offset)
            lines = newline = 0
            while chunk := log.read(_READ_CHUNK_BYTES):
                lines += chunk.count(b"\n")
                newline = chunk.endswith(b"\n")
            lines += size > offset and not newline
            half = OUTPUT_MAX_BYTES // 2
            log.seek(offset)
            if size - offset <= OUTPUT_MAX_BYTES:
                parts = [log.read()]
            else:
                head = log.read(half)
                log.seek(size - half)
                parts = [head, f"\n… {size - offset - 2 * half:,} bytes not kept …\n".encode(), log.read()]
    except OSError:
        return "", 0
    text = b"".join(parts).decode("utf-8", "replace")
    return "\n".join(printable(line, None) for line in text.splitlines()), int(lines)


def _measure(sub: Submission, options: _Options, forkserver: ForkServer | None) -> SummaryRow:
    """One submission in its own sandbox: restrict, load, count; never raises for its faults."""
    started = time.perf_counter()
    stage, sandbox, offset, output = "load", None, 0, ("", 0)
    try:
        sandbox = _SummarySandbox(options.device, options.torch_threads, options.timeout_s, forkserver)
        restrict(sandbox, sub, options.memory_limit_mb, options.landlock)
        offset = sandbox.log_size()  # what the sandbox wrote before the submission's code, not its output
        loaded = sandbox.request("load")
        stage = "complexity"
        reply = sandbox.request("complexity", shape=list(options.input_shape), data_range=sub.data_range)
        before = loaded.get("params_before_forward")
        c = complexity_from_reply(reply, before if type(before) is int else None, options.input_shape)
        sandbox.finish(FINISH_WAIT_S)
        output = _captured(sandbox.log_path, offset)
        return _ok_row(sub, c, output, time.perf_counter() - started)
    except Exception as exc:  # a submission's fault is a row, never a crash
        if sandbox is not None:
            sandbox.finish(FINISH_WAIT_S)
            output = _captured(sandbox.log_path, offset)
        return SummaryRow(sub.submission_id, "error", "x".join(map(str, options.input_shape)),
                          error=_error_message(sub.submission_id, stage, exc, options), error_stage=stage,
                          output=output[0], output_lines=output[1], wall_s=time.perf_counter() - started)
    finally:
        if sandbox is not None:
            sandbox.close()


@contextlib.contextmanager
def _fork_server(count: int) -> Iterator[ForkServer | None]:
    """A fork server for more than one submission where the system has one (each sandbox then
    skips the interpreter start and the imports); None: each sandbox is a fresh interpreter."""
    if count < 2 or not forkserver_available():
        yield None
        return
    try:
        server = ForkServer(sandbox_env(Path(tempfile.gettempdir())))
    except ForkServerError:
        yield None
        return
    with server:
        yield server


def summarize(subs: list[Submission], manifest_errors: Iterable[SubmissionError] = (), *,
              input_shape: tuple[int, ...] = DEFAULT_INPUT_SHAPE, device: str = "cpu", jobs: int | None = None,
              timeout_s: float | None = None, memory_limit_mb: int | None = DEFAULT_MEMORY_LIMIT_MB,
              landlock: bool = True) -> list[SummaryRow]:
    """Every submission's row (see the module docstring); ``timeout_s`` bounds each request to a
    sandbox (default ``DEFAULT_TIMEOUT_S``); a progress bar on stderr when that is a terminal."""
    shape = "x".join(map(str, input_shape))
    rows = [SummaryRow(e.submission_id, "error", shape, error=str(e), error_stage=e.stage) for e in manifest_errors]
    if not subs:
        return rows
    workers = min(jobs or available_cpus(), len(subs))
    options = _Options(tuple(input_shape), device, max(1, available_cpus() // workers),
                       timeout_s or DEFAULT_TIMEOUT_S, memory_limit_mb, landlock)
    with contained(None), _fork_server(len(subs)) as forkserver, \
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="esr-summary") as pool:
        futures = [pool.submit(_measure, sub, options, forkserver) for sub in subs]
        with tqdm(total=len(futures), desc="summary", unit="submission", file=sys.stderr, disable=None) as bar:
            for _ in as_completed(futures):
                bar.update()
        return rows + [future.result() for future in futures]


def check_summary_args(fmt: str, out: Path | None, jobs: int | None = None, timeout_s: float | None = None) -> None:
    """Refuse, before anything is measured, a format or ``--out`` that cannot be written and a
    ``--jobs`` or ``--timeout`` that is not positive."""
    if jobs is not None and jobs < 1:
        raise ValueError(f"--jobs {jobs}: at least one submission must run at a time. Fix: pass --jobs 1 or more, "
                         "or leave it out (one per CPU)")
    if timeout_s is not None and not timeout_s > 0:
        raise ValueError(f"--timeout {timeout_s:g}: a request needs some time to be answered. Fix: pass a positive "
                         f"number of seconds, or leave it out ({DEFAULT_TIMEOUT_S:g} s)")
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt}: not a summary format. Fix: pass one of {', '.join(FORMATS)}")
    if fmt == "parquet" and out is None:
        raise ValueError("--format parquet writes a file and no --out was given. Fix: add --out PATH, "
                         "e.g. --out summary.parquet")
    if out is not None and out.is_dir():
        raise ValueError(f"--out {out} is a folder. Fix: pass a file path, e.g. {out / ('summary.' + fmt)}")
    if out is not None and not out.parent.is_dir():
        raise ValueError(f"--out {out}: the folder {out.parent} does not exist. Fix: create it, or pass a path "
                         "in an existing folder")


def summary_frame(rows: list[SummaryRow]) -> pd.DataFrame:
    """The rows as a DataFrame; integer columns stay integers (nullable ``Int64``) beside error rows."""
    frame = pd.DataFrame([dataclasses.asdict(row) for row in rows],
                         columns=[f.name for f in dataclasses.fields(SummaryRow)])
    return frame.astype({**{column: "Int64" for column in _INT_COLUMNS}, "flops_audit_flag": "boolean"})


def _table_cells(row: SummaryRow) -> list[str]:
    if row.status != "ok":
        return [row.submission_id, "ERROR"] + [""] * 6
    fused = "" if row.params == row.params_before_forward else f" (before: {row.params_before_forward:,})"
    return [row.submission_id, f"{row.params:,}{fused}", f"{row.flops_fvcore:,}", f"{row.flops_hook_2022:,}",
            f"{row.flops_audit:,}" + (" FLAG" if row.flops_audit_flag else ""), f"{row.activations:,}",
            str(row.num_conv), row.audit]


def render_table(rows: list[SummaryRow], input_shape: tuple[int, ...] = DEFAULT_INPUT_SHAPE) -> str:
    """The text table: the probe shape, then the headers, and one line per submission, the
    numbers right-aligned, columns two spaces apart."""
    cells = [_table_cells(row) for row in rows]
    widths = [max(len(cell) for cell in column) for column in zip(TABLE_HEADERS, *cells)]
    last = len(widths) - 1
    lines = [f"complexity on input {'x'.join(map(str, input_shape))} (FLOPs are MAC counts, as the official tools)",
             "  ".join(h.ljust(w) for h, w in zip(TABLE_HEADERS, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) if 0 < i < last else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
              for row in cells]
    return "\n".join(lines)


def output_notes(rows: list[SummaryRow], show_output: bool = False) -> list[str]:
    """One line per submission that wrote output; with ``show_output`` its output under it."""
    lines = []
    for row in rows:
        if not row.output_lines:
            continue
        plural = "" if row.output_lines == 1 else "s"
        if show_output:
            lines += [f"--- {row.submission_id}: {row.output_lines} line{plural} of output ---",
                      *row.output.splitlines()]
        else:
            lines.append(f"{row.submission_id}: {row.output_lines} line{plural} of output captured "
                         "(--show-output to print)")
    return lines


def write_summary(rows: list[SummaryRow], fmt: str, out: Path | None = None, *, show_output: bool = False,
                  input_shape: tuple[int, ...] = DEFAULT_INPUT_SHAPE, stdout: TextIO | None = None,
                  stderr: TextIO | None = None) -> int:
    """Write the rows in ``fmt`` to ``out`` (else stdout), the output notes after them (on stderr
    when csv or json goes to stdout) and each error on stderr; the exit status: 1 when a row is an error."""
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    check_summary_args(fmt, out)
    if fmt == "parquet":
        summary_frame(rows).to_parquet(out, index=False)
    else:
        text = {"table": lambda: render_table(rows, input_shape),
                "csv": lambda: summary_frame(rows).to_csv(index=False).rstrip("\n"),
                "json": lambda: json.dumps([dataclasses.asdict(row) for row in rows], indent=2)}[fmt]()
        if out is None:
            print(text, file=stdout)
        else:
            out.write_text(text + "\n", encoding="utf-8")
    notes_to = stderr if out is None and fmt != "table" else stdout
    for line in output_notes(rows, show_output):
        print(line, file=notes_to)
    if out is not None:
        print(f"written: {out}", file=stdout)
    for row in rows:
        if row.error:
            print(f"\nerror: {row.error}", file=stderr)
    return 1 if any(row.status != "ok" for row in rows) else 0
