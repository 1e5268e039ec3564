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
"""

from __future__ import annotations

import json
import os
import types
import typing
import uuid
from dataclasses import dataclass, fields
from pathlib import Path

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


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_rows(run_dir: Path, table: str, rows: list, part_name: str) -> Path | None:
    """Write rows of one table as ``<run_dir>/<table>/<part_name>.parquet`` (atomically)."""
    if not rows:
        return None
    row_type = TABLES[table]
    schema = arrow_schema(row_type)
    columns = {f.name: [getattr(r, f.name) for r in rows] for f in fields(row_type)}
    arrow_table = pa.table(columns, schema=schema)
    folder = Path(run_dir) / table
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{part_name}.parquet"
    _atomic_write(path, lambda tmp: pq.write_table(arrow_table, tmp))
    return path


def write_json(path: Path, payload: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, lambda tmp: tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str)))


def read_table(run_dir: Path, table: str):
    """The whole table as a pandas DataFrame (empty, with the right columns, if absent)."""
    import pandas as pd

    folder = Path(run_dir) / table
    if not folder.is_dir() or not any(folder.glob("*.parquet")):
        return arrow_schema(TABLES[table]).empty_table().to_pandas() if table in TABLES else pd.DataFrame()
    return pd.read_parquet(folder)

