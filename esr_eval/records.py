"""The run folder: Parquet table schemas (defined once, here), an atomic part-file writer, readers.

Contract
--------
``results/<run_id>/`` holds one folder per table, each a set of Parquet part files, so that
``pd.read_parquet("results/<run_id>/<table>")`` reads a table whole while a run still streams,
plus ``run.json`` (provenance). Each table's schema is the field list of one frozen dataclass
below; a row is an instance of it. Units are in column names; raw values are stored and
rounding happens only in reports. Part files are written to a temporary name in the same
folder and renamed, so a crash never leaves half a file and readers never see one.
A failed submission is a ``SubmissionRow`` with ``status`` and ``error``, never a missing row.
The column reference lives in ``docs/SCHEMA.md``; :func:`schema_markdown` regenerates it.

Integrity
---------
The run's single writer (``esr_eval.run.RunFolder``) records every file it writes (each part
file and ``run.json``) in ``ledger.json``: relative path → ``sha256`` of the bytes written,
``size`` and ``written_at_unix_s``, rewritten atomically after every write (the driver's
in-memory copy is authoritative; an edited ledger is overwritten by its next write).
:func:`verify_run` classifies a run folder against it: ``unexpected`` files in a table folder
that the ledger does not hold (never read), recorded files ``missing`` on disk, recorded files
whose bytes ``changed`` (never read), and split files that changed during the run (the driver
re-hashes them at the end: ``run.json`` ``splits_verified_at_end``). Any of the first three
marks the run ``tampered``. Readers (:func:`read_verified`, ``esr_eval.ranking.read_run``) parse
exactly the bytes they hashed, so a file swapped after the check is not read either. A run
folder without a ledger (written by hand, by ``esr_eval.synthetic`` or by an esr-eval older
than the ledger) is ``unverified``: read whole, as before, and said so.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import types
import typing
import uuid
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Mapping

import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA_VERSION = 1
STATUSES = ("ok", "error", "timeout", "startup_timeout", "crashed")


@dataclass(frozen=True)
class SubmissionRow:
    """One row per submission and run: status, complexity, hygiene, provenance."""

    run_id: str
    submission_id: str
    team_id: str
    name: str
    status: str
    fingerprint: str | None = None
    error: str | None = None
    error_stage: str | None = None
    traceback: str | None = None
    attempts: int = 1
    strict: bool = True
    trusted_pickle: bool = False
    data_range: float = 1.0
    scale: int = 4
    adapter: str = "none"
    manifest_sha256: str | None = None
    checkpoint_sha256: str | None = None
    missing_keys: str | None = None
    unexpected_keys: str | None = None
    cuda_calls_redirected: int | None = None
    complexity_input_shape: str | None = None
    params: int | None = None
    params_before_forward: int | None = None
    flops_fvcore: int | None = None
    flops_hook_2022: int | None = None
    flops_audit: int | None = None
    flops_audit_ratio: float | None = None
    flops_audit_flag: bool | None = None
    flops_zero_counted_ops: str | None = None
    activations: int | None = None
    num_conv: int | None = None
    float_buffer_elements: int | None = None
    flops_audit_per_px_probe: float | None = None
    flops_audit_per_px_real: float | None = None
    params_clean: int | None = None
    checkpoint_float_elements: int | None = None
    trace_verified: bool | None = None
    trace_detail: str | None = None
    complexity_flags: str | None = None
    hygiene_input_mutated: bool | None = None
    hygiene_repeat_max_abs_diff: float | None = None
    hygiene_nonfinite_outputs: bool | None = None
    hygiene_cache_suspect: bool | None = None
    hygiene_cache_detail: str | None = None
    hygiene_data_range_psnr_db: float | None = None
    hygiene_other_data_range_psnr_db: float | None = None
    hygiene_data_range_flag: bool | None = None
    hygiene_flags: str | None = None
    timing_protocol: str | None = None
    runtime_statistic: str | None = None
    device_kind: str | None = None
    device_name: str | None = None
    gpu_uuid: str | None = None
    hostname: str | None = None
    node_id: str | None = None
    torch_num_threads: int | None = None
    cudnn_benchmark: bool | None = None
    tf32_matmul: bool | None = None
    tf32_cudnn: bool | None = None
    memory_limit_mb: int | None = None
    sandbox: str | None = None
    containment: str | None = None
    leftover_processes_killed: int | None = None
    leftover_processes: str | None = None
    started_at_unix_s: float | None = None
    wall_s: float | None = None


@dataclass(frozen=True)
class SplitRow:
    """One row per (submission, split) measured: quality and runtime summaries, memory."""

    run_id: str
    submission_id: str
    split: str
    num_images: int
    dataset_sha256: str
    psnr_db: float
    ssim: float | None
    psnr_y_db: float
    ssim_y: float | None
    runtime_ms: float
    runtime_mean_ms: float
    runtime_median_ms: float
    runtime_p90_ms: float
    runtime_n: int
    wall_mean_ms: float
    warmup_calls: int
    repeats: int
    peak_mem_mb: float | None = None
    peak_mem_official_mb: float | None = None
    runtime_sandbox_ms: float | None = None
    runtime_external_ms: float | None = None
    external_overhead_ms: float | None = None
    timing_tampered: bool | None = None
    timing_detail: str | None = None


@dataclass(frozen=True)
class SampleRow:
    """One row per (submission, split, image, repeat); quality only on repeat 0."""

    run_id: str
    submission_id: str
    split: str
    image: str
    repeat: int
    latency_ms: float
    wall_ms: float
    lr_height: int
    lr_width: int
    external_ms: float | None = None
    overhead_ms: float | None = None
    psnr_db: float | None = None
    ssim: float | None = None
    psnr_y_db: float | None = None
    ssim_y: float | None = None


@dataclass(frozen=True)
class EvaluationResult:
    """Everything one submission produced: its row, and its split and sample rows (maybe none)."""

    submission: SubmissionRow
    splits: tuple[SplitRow, ...] = ()
    samples: tuple[SampleRow, ...] = ()


TABLES: dict[str, type] = {"submissions": SubmissionRow, "splits": SplitRow, "samples": SampleRow}

_ARROW_TYPES = {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_()}


def _arrow_type(annotation) -> tuple[pa.DataType, bool]:
    """(arrow type, nullable) for a field annotation such as ``float | None``."""
    args = typing.get_args(annotation)
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        (inner,) = [a for a in args if a is not type(None)]
        return _ARROW_TYPES[inner], True
    return _ARROW_TYPES[annotation], False


def arrow_schema(row_type: type) -> pa.Schema:
    hints = typing.get_type_hints(row_type)
    return pa.schema([pa.field(f.name, *_arrow_type(hints[f.name])) for f in fields(row_type)],
                     metadata={"esr_eval_schema_version": str(SCHEMA_VERSION)})


def schema_markdown() -> str:
    """The column reference (docs/SCHEMA.md) generated from the dataclasses."""
    lines = ["# Run folder schema", "",
             "Generated by `esr_eval.records.schema_markdown()`; the dataclasses in `esr_eval/records.py` "
             "are the single definition.", ""]
    for table, row_type in TABLES.items():
        lines += [f"## `{table}`", "", row_type.__doc__.strip(), "", "| column | type | nullable |", "|---|---|---|"]
        for f in arrow_schema(row_type):
            lines.append(f"| `{f.name}` | {f.type} | {'yes' if f.nullable else 'no'} |")
        lines.append("")
    return "\n".join(lines)


def file_entry(data: bytes) -> dict:
    """The ledger's record of one file: sha256 and size of ``data`` (the bytes written), and when."""
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "written_at_unix_s": time.time()}


def _atomic_write(path: Path, write) -> dict:
    """Write through a temporary file and rename; returns the :func:`file_entry` of the bytes
    written, hashed before the rename (the file as this writer produced it)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        entry = file_entry(tmp.read_bytes())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return entry


def write_rows(run_dir: Path, table: str, rows: list, part_name: str) -> Path | None:
    """Write rows of one table as ``<run_dir>/<table>/<part_name>.parquet`` (atomically)."""
    written = write_part(run_dir, table, rows, part_name)
    return None if written is None else written[0]


def write_part(run_dir: Path, table: str, rows: list, part_name: str) -> tuple[Path, dict] | None:
    """:func:`write_rows`, also returning the ledger entry (:func:`file_entry`) of the file written."""
    if not rows:
        return None
    row_type = TABLES[table]
    schema = arrow_schema(row_type)
    columns = {f.name: [getattr(r, f.name) for r in rows] for f in fields(row_type)}
    arrow_table = pa.table(columns, schema=schema)
    folder = Path(run_dir) / table
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{part_name}.parquet"
    return path, _atomic_write(path, lambda tmp: pq.write_table(arrow_table, tmp))


def write_json(path: Path, payload: dict, indent: int | None = 2) -> dict:
    """Write ``payload`` as JSON atomically; returns the ledger entry of the bytes written.

    ``indent=None`` writes compact JSON with the C encoder (the ledger, rewritten after every
    submission, stays cheap as it grows)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(payload, indent=indent, sort_keys=True, default=str,
                      separators=None if indent else (",", ":"))
    return _atomic_write(path, lambda tmp: tmp.write_text(text))


def read_table(run_dir: Path, table: str):
    """The whole table as a pandas DataFrame (empty, with the right columns, if absent)."""
    import pandas as pd

    folder = Path(run_dir) / table
    if not folder.is_dir() or not any(folder.glob("*.parquet")):
        return arrow_schema(TABLES[table]).empty_table().to_pandas() if table in TABLES else pd.DataFrame()
    return pd.read_parquet(folder)



# --- the ledger and verified reading (module doc, "Integrity") ----------------------------------

LEDGER_NAME = "ledger.json"
LEDGER_FORMAT = "esr-eval-ledger-v1"
RUN_JSON_NAME = "run.json"
MAX_LISTED_FINDINGS = 12


class RunIntegrityWarning(UserWarning):
    """:func:`read_verified` read a run that is tampered, unverified (no ledger) or whose split changed."""


class RunIntegrityError(ValueError):
    """:func:`read_verified` with ``strict=True`` on a run that is not verified clean."""


def ledger_payload(run_id: str, files: Mapping[str, dict]) -> dict:
    """The JSON ``ledger.json`` holds (the driver writes it; readers check against it)."""
    return {"format": LEDGER_FORMAT, "run_id": run_id, "files": dict(sorted(files.items()))}


def is_ledger_path(relpath: str) -> bool:
    """Whether a ledger key names a file the driver writes: ``run.json`` or ``<table>/<part>.parquet``."""
    parts = relpath.split("/")
    if relpath == RUN_JSON_NAME:
        return True
    return (len(parts) == 2 and parts[0] in TABLES and parts[1].endswith(".parquet")
            and not parts[1].startswith((".", "_")) and "\\" not in parts[1])


def table_files(run_dir: Path) -> list[str]:
    """Relative paths of every file under the table folders that a reader could take for data
    (pandas reads every file not starting with ``.`` or ``_``, in sub-folders too)."""
    run_dir = Path(run_dir)
    found = []
    for table in TABLES:
        folder = run_dir / table
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*")):
            relative = path.relative_to(run_dir)
            if any(part.startswith((".", "_")) for part in relative.parts) or path.is_dir():
                continue
            found.append(relative.as_posix())
    return found


def _empty_frame(table: str):
    return arrow_schema(TABLES[table]).empty_table().to_pandas()


def _frame(table: str, parts: list[bytes]):
    """One table from the bytes of its part files (the very bytes that were hashed)."""
    if not parts:
        return _empty_frame(table)
    arrow_tables = [pq.read_table(pa.BufferReader(data)) for data in parts]
    return pa.concat_tables(arrow_tables, promote_options="default").to_pandas()


def read_parts(run_dir: Path, table: str, files: Mapping[str, dict]):
    """``table`` from the parts ``files`` (a ledger's ``files``) records whose bytes still match; the rest is not read."""
    parts = []
    for relpath in sorted(files):
        if relpath.startswith(f"{table}/") and is_ledger_path(relpath):
            try:
                data = (Path(run_dir) / relpath).read_bytes()
            except OSError:
                continue
            if hashlib.sha256(data).hexdigest() == files[relpath].get("sha256"):
                parts.append(data)
    return _frame(table, parts)


def _short(digest: Any) -> str:
    return f"{digest[:12]}…" if isinstance(digest, str) and digest else "none"


def _listed(items: list[str]) -> str:
    shown = "; ".join(items[:MAX_LISTED_FINDINGS])
    return shown + (f"; … and {len(items) - MAX_LISTED_FINDINGS} more" if len(items) > MAX_LISTED_FINDINGS else "")


@dataclass(frozen=True)
class RunIntegrity:
    """A run folder checked against its ledger (module doc, "Integrity").

    ``ledger``: ``present``, ``absent`` (never kept: an unverified run), ``lost`` (run.json says the
    driver kept one but it is gone) or ``unreadable``. Paths are relative to the run folder.
    ``tables`` holds the tables asked for, built from verified parts only (all parts when unverified).
    """

    run_dir: Path
    ledger: str
    ledger_sha256: str | None = None
    unexpected: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    ledger_problem: str | None = None
    split_changes: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    run_info: Mapping[str, Any] = field(default_factory=dict, compare=False)
    tables: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def tampered(self) -> bool:
        return bool(self.unexpected or self.missing or self.changed or self.ledger_problem)

    @property
    def split_changed(self) -> bool:
        return bool(self.split_changes)

    @property
    def unverified(self) -> bool:
        return self.ledger == "absent"

    @property
    def clean(self) -> bool:
        """Verified against a ledger, with no finding and no split change."""
        return not (self.tampered or self.split_changed or self.unverified)

    @property
    def status(self) -> str:
        """``verified``, ``unverified``, ``tampered``, ``split-changed``, or both of the last two joined by ``+``."""
        flags = [flag for flag, on in (("tampered", self.tampered), ("split-changed", self.split_changed)) if on]
        return "+".join(flags) or ("unverified" if self.unverified else "verified")

    def findings(self) -> list[str]:
        """One line per tampering finding (empty for an untouched run)."""
        lines = [self.ledger_problem] if self.ledger_problem else []
        lines += [f"unexpected file {p} (not in the ledger: not written by the driver; not read)" for p in self.unexpected]
        lines += [f"missing file {p} (written by the driver, now gone)" for p in self.missing]
        lines += [f"changed file {p} (bytes differ from what the driver wrote; not read)" for p in self.changed]
        return lines

    def banner(self) -> str | None:
        """The one line a report starts with and ``rank`` warns with; None for a clean run."""
        digest = f" (sha256 {_short(self.ledger_sha256)})" if self.ledger_sha256 else ""
        split = f"split changed mid-run: {_listed(list(self.split_changes))}" if self.split_changed else ""
        if self.tampered:
            findings = self.findings()
            text = (f"TAMPERED RUN: {len(findings)} finding(s) against {LEDGER_NAME}{digest}: {_listed(findings)}. "
                    "Rows of unexpected and changed files are not used.")
            return text + (f" Also {split}." if split else "")
        if self.split_changed:
            return (f"SPLIT CHANGED MID-RUN: {split[len('split changed mid-run: '):]}. Entries measured after the "
                    "change were scored on other data: evaluate again on intact, read-only data.")
        if self.unverified:
            return (f"UNVERIFIED RUN: {self.run_dir} holds no {LEDGER_NAME} (written by hand, by esr_eval.synthetic "
                    "or by an esr-eval older than the ledger), so its files could not be checked against what "
                    "the driver wrote.")
        return None

    def affected(self) -> dict[str, list[str]]:
        """submission_id → why some of its part files were not read (changed, missing, unexpected)."""
        out: dict[str, list[str]] = {}
        for paths, what in ((self.changed, "changed after the driver wrote it, not read"),
                            (self.missing, "missing"),
                            (self.unexpected, "not in the ledger, not read")):
            for relpath in paths:
                parts = relpath.split("/")
                if len(parts) == 2 and parts[0] in TABLES:
                    out.setdefault(Path(parts[1]).stem, []).append(f"{parts[0]} part {what}")
        return out

    def lines(self) -> list[str]:
        """What ``rank`` and ``report`` print: the banner as a warning (if any), and the ledger digest
        checked against, for the organiser to compare with the one the driver printed at the end."""
        lines = [f"WARNING: {self.banner()}"] if self.banner() else []
        if self.ledger_sha256:
            lines.append(f"integrity: {self.status}; checked against {LEDGER_NAME} sha256 {self.ledger_sha256} "
                         "(compare with the digest the driver printed at the end of the run)")
        else:
            lines.append(f"integrity: {self.status} (no {LEDGER_NAME} to check against)")
        return lines

    def summary(self) -> dict:
        """JSON-able summary (rankings metadata, report provenance)."""
        return {"status": self.status, "ledger": self.ledger, "ledger_sha256": self.ledger_sha256,
                "findings": self.findings(), "split_changes": list(self.split_changes), "notes": list(self.notes)}


def _json_or_empty(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _split_findings(run_info: Mapping[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(split changes, notes) from run.json's ``splits_verified_at_end``."""
    check = run_info.get("splits_verified_at_end")
    if not isinstance(check, dict):
        note = ("the split files were not re-hashed at the end of this run (it did not finish, or an esr-eval "
                "older than that check wrote it)")
        return (), ((note,) if run_info else ())
    changes = []
    for change in check.get("changed") or []:
        end = change.get("sha256_end")
        now = f"{_short(end)} at the end" if end else f"unreadable at the end ({change.get('error')})"
        changes.append(f"split {change.get('name')}: sha256 {_short(change.get('sha256_start'))} at the start, {now}")
    return tuple(changes), ()


def verify_run(run_dir: str | Path, read: Iterable[str] = ()) -> RunIntegrity:
    """Check a run folder against its ledger; with ``read``, also build those tables from verified parts."""
    run_dir = Path(run_dir)
    read = tuple(read)
    present = table_files(run_dir)
    ledger_path = run_dir / LEDGER_NAME
    if not ledger_path.exists():
        info = _json_or_empty(run_dir / RUN_JSON_NAME)
        if info.get("ledger") != LEDGER_NAME:
            changes, notes = _split_findings(info)
            tables = {t: read_table(run_dir, t) for t in read}
            return RunIntegrity(run_dir, "absent", split_changes=changes, notes=notes, run_info=info, tables=tables)
        return RunIntegrity(run_dir, "lost", unexpected=tuple(present),
                            ledger_problem=f"{LEDGER_NAME} is gone, though run.json says the driver kept one",
                            tables={t: _empty_frame(t) for t in read})
    raw = ledger_path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    try:
        ledger = json.loads(raw)
        files = ledger["files"] if ledger.get("format") == LEDGER_FORMAT else None
        if not isinstance(files, dict) or not all(isinstance(e, dict) for e in files.values()):
            raise ValueError
    except (ValueError, TypeError, AttributeError, KeyError):
        return RunIntegrity(run_dir, "unreadable", digest, unexpected=tuple(present),
                            ledger_problem=f"{LEDGER_NAME} is not a ledger esr-eval wrote",
                            tables={t: _empty_frame(t) for t in read})
    keep = {RUN_JSON_NAME, *read}
    missing, changed, bad_keys, verified = [], [], [], {}
    for relpath in sorted(files):
        if not is_ledger_path(relpath):
            bad_keys.append(relpath)
            continue
        try:
            data = (run_dir / relpath).read_bytes()
        except FileNotFoundError:
            missing.append(relpath)
            continue
        except OSError:
            changed.append(relpath)
            continue
        if hashlib.sha256(data).hexdigest() != files[relpath].get("sha256"):
            changed.append(relpath)
        elif relpath.split("/")[0] in keep:
            verified[relpath] = data
    unexpected = [p for p in present if p not in files]
    if (run_dir / RUN_JSON_NAME).exists() and RUN_JSON_NAME not in files:
        unexpected.append(RUN_JSON_NAME)
    try:
        info = json.loads(verified[RUN_JSON_NAME]) if RUN_JSON_NAME in verified else {}
    except ValueError:
        info = {}
    changes, notes = _split_findings(info)
    adopted = sorted(p for p, e in files.items() if e.get("adopted"))
    if adopted:
        notes += (f"{len(adopted)} file(s) predate the ledger: adopted when an older run was resumed, "
                  "unverified before then",)
    tables = {t: _frame(t, [verified[p] for p in sorted(verified) if p.startswith(f"{t}/")]) for t in read}
    problem = f"{LEDGER_NAME} names files outside the run's tables: {', '.join(bad_keys)}" if bad_keys else None
    return RunIntegrity(run_dir, "present", digest, tuple(unexpected), tuple(missing), tuple(changed), problem,
                        changes, notes, info, tables)


def read_verified(run_dir: str | Path, table: str, strict: bool = False):
    """One table of a run as a DataFrame, from the part files the driver recorded and that still match.

    The pandas reader to use instead of ``pd.read_parquet(run_dir / table)``: unexpected files are
    never read, changed ones neither. A run that is tampered, unverified (no ledger) or whose split
    changed mid-run gives a :class:`RunIntegrityWarning` naming the findings, or with ``strict``
    raises :class:`RunIntegrityError`. :func:`verify_run` gives the findings as data.
    """
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}; tables: {', '.join(TABLES)}")
    integrity = verify_run(run_dir, read=(table,))
    if not integrity.clean:
        if strict:
            raise RunIntegrityError(integrity.banner())
        warnings.warn(integrity.banner(), RunIntegrityWarning, stacklevel=2)
    return integrity.tables[table]
