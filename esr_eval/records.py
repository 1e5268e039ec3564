"""Every file esr-eval writes into a run folder, defined once here, with the one writer and the one reader.

Contract
--------
``results/<run_id>/`` holds:

* the driver's tables ``submissions``, ``splits`` and ``samples`` (:data:`TABLES`): one folder each
  of Parquet part files, so that ``pd.read_parquet("results/<run_id>/<table>")`` reads a table whole
  while a run still streams. Each table's schema is the field list of one frozen dataclass below
  (:class:`SubmissionRow`, :class:`SplitRow`, :class:`SampleRow`); a row is an instance of it and
  each field carries its meaning (:func:`column`). A failed submission is a ``SubmissionRow`` with
  ``status`` and ``error``, never a missing row;
* ``rankings`` (written by ``esr_eval.ranking.rank_run``): one part file whose columns depend on the
  protocol's metrics and tracks, specified by :data:`RANKINGS_COLUMNS` (``<metric>`` and ``<track>``
  stand for the protocol's names); its Parquet metadata (:data:`RANKINGS_METADATA`) names the rules
  and the state of the run it was ranked from;
* ``run.json`` (provenance, keys :data:`RUN_JSON_KEYS`) and ``ledger.json`` (:data:`LEDGER_KEYS`).

Every numeric column states its unit where it is defined (:func:`column`, :class:`Column`: ``ms``,
``dB``, ``MACs`` for the FLOP counts, ``MiB (2^20 B)`` for the ``_mb`` columns, ``count``, ...); raw
values are stored and rounding happens only in reports. ``docs/SCHEMA.md`` is
:func:`schema_markdown`, which renders its tables with :func:`markdown_table` (the one Markdown
table renderer, also used by ``esr_eval.report``).

One writer: :func:`atomic_write` writes to a temporary name in the same folder and renames, so a
crash never leaves half a file and readers never see one; :func:`write_part`, :func:`write_json` and
:func:`write_rankings` go through it. One reader: every table is decoded from the bytes of its part
files by :func:`_frame` — :func:`read_table` (all parts, unchecked), :func:`read_run` and
:func:`read_verified` (the parts the ledger verifies), :func:`read_rankings` (with its metadata).

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
marks the run ``tampered``. Readers (:func:`read_verified`, :func:`read_run`) parse exactly the
bytes they hashed, so a file swapped after the check is not read either. A run folder without a
ledger (written by hand, by the tests' synthetic-run writer or by an esr-eval older than the ledger) is
``unverified``: read whole, as before, and said so. ``rankings/`` is not in the ledger (the driver
does not write it); :func:`run_sha256` digests the files a ranking is made from, so a reader can
tell whether stored rankings still belong to the run as it is.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import types
import typing
import uuid
import warnings
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from esr_eval.hashing import file_sha256

if TYPE_CHECKING:
    import pandas as pd

SCHEMA_VERSION = 1
STATUSES = ("ok", "error", "timeout", "startup_timeout", "crashed")


def column(meaning: str, default: Any = MISSING, unit: str | None = None) -> Any:
    """A row field carrying its meaning and unit for docs/SCHEMA.md; every numeric column states its unit
    (``count``, ``ms``, ``dB``, ``MACs``, ``MiB (2^20 B)``, ...), a text or boolean column has none."""
    return field(default=default, metadata={"meaning": meaning, "unit": unit})


@dataclass(frozen=True)
class SubmissionRow:
    """One row per submission and run: status, complexity, hygiene, provenance."""

    run_id: str = column("the run: its folder name under `results/`")
    submission_id: str = column("`team<NN>_<Name>`, from the manifest")
    team_id: str = column("team number from the manifest (empty when the manifest did not parse)")
    name: str = column("method name from the manifest")
    status: str = column("`ok`, `skipped` (not measured on this hardware: `error` says why), `error`, `timeout`, "
                         "`startup_timeout` or `crashed`")
    fingerprint: str | None = column("sha256 of manifest, checkpoint, timing protocol and split hashes: what must "
                                     "match for a resumed run to keep the row", None)
    error: str | None = column("what failed, and the fix; null when ok", None)
    error_stage: str | None = column("stage that failed (manifest, checkpoint, load, inference, complexity, "
                                     "hygiene, ...; `needs` for a skipped row)", None)
    traceback: str | None = column("Python traceback of the failure", None)
    attempts: int = column("times the driver ran the submission (a crash or timeout is retried)", 1, unit="count")
    strict: bool = column("checkpoint loaded with `strict=True` (false only when declared)", True)
    trusted_pickle: bool = column("checkpoint fully unpickled (declared in the manifest)", False)
    data_range: float = column("declared pixel range of the model's input and output: 1.0 or 255.0", 1.0, unit="pixel value")
    scale: int = column("upscaling factor", 4, unit="× (factor)")
    adapter: str = column("declared adapter (padding, tiling) as text; `none` without one", "none")
    manifest_sha256: str | None = column("sha256 of the manifest file's bytes", None)
    checkpoint_sha256: str | None = column("sha256 of the checkpoint file's bytes", None)
    missing_keys: str | None = column("comma-separated model keys absent from the checkpoint (non-strict load)", None)
    unexpected_keys: str | None = column("comma-separated checkpoint keys the model does not have", None)
    cuda_calls_redirected: int | None = column("`.cuda()` calls of the model's constructor and after_load calls "
                                               "redirected to the CPU (a CPU run)", None, unit="count")
    after_load: str | None = column("the manifest's after_load calls run after the weights loaded, as Python source, "
                                    "`; `-separated in order; null when none", None)
    complexity_input_shape: str | None = column("input of the complexity counts, `NxCxHxW` (official 1x3x256x256)",
                                                None)
    params: int | None = column("parameters after the first forward (the official figure)", None, unit="count")
    params_before_forward: int | None = column("parameters before the first forward", None, unit="count")
    flops_fvcore: int | None = column("fvcore's total on the complexity input, the challenge's \"FLOPs\" (official from "
                                      "2024): a MAC count, one multiply-add counted once", None, unit="MACs")
    flops_hook_2022: int | None = column("the 2022-2023 hook counter's total, the challenge's \"FLOPs\" then: conv "
                                         "multiply-adds plus ReLU and BatchNorm elements", None, unit="MACs")
    flops_audit: int | None = column("independent count at the dispatcher level (`torch.utils.flop_counter`, halved "
                                     "to multiply-adds)", None, unit="MACs")
    flops_audit_ratio: float | None = column("flops_audit / flops_fvcore", None, unit="ratio")
    flops_audit_flag: bool | None = column("the audit disagrees with fvcore beyond tolerance, or fvcore skipped "
                                           "a flagged op", None)
    flops_zero_counted_ops: str | None = column("JSON list of [op, calls, category] fvcore counted as zero", None)
    activations: int | None = column("sum of conv output elements on the complexity input", None, unit="count")
    num_conv: int | None = column("conv calls on the complexity input", None, unit="count")
    float_buffer_elements: int | None = column("floating-point buffer elements after the first forward", None,
                                               unit="count")
    flops_audit_per_px_probe: float | None = column("audit count per output pixel on the complexity input", None,
                                                    unit="MACs per output px")
    flops_audit_per_px_real: float | None = column("audit count per output pixel on a real evaluation image", None,
                                                   unit="MACs per output px")
    params_clean: int | None = column("floating-point elements in the traced graph on a real image", None, unit="count")
    checkpoint_float_elements: int | None = column("floating-point elements in the checkpoint", None, unit="count")
    trace_verified: bool | None = column("the traced graph reproduces the model's output", None)
    trace_detail: str | None = column("why the trace could not be verified", None)
    complexity_flags: str | None = column("comma-separated: trace_unverified, flops_input_dependent, "
                                          "params_in_buffers, params_not_in_checkpoint", None)
    hygiene_input_mutated: bool | None = column("the model changed its input tensor in place", None)
    hygiene_repeat_max_abs_diff: float | None = column("largest difference between two calls on the same input "
                                                       "(pixel values, uint8 scale)", None, unit="uint8 levels (0-255)")
    hygiene_nonfinite_outputs: bool | None = column("NaN or Inf in an output", None)
    hygiene_cache_suspect: bool | None = column("outputs or timings suggest answers cached per input", None)
    hygiene_cache_detail: str | None = column("the cache measurements behind hygiene_cache_suspect", None)
    hygiene_data_range_psnr_db: float | None = column("PSNR with the declared data range", None, unit="dB")
    hygiene_other_data_range_psnr_db: float | None = column("PSNR with the other data range", None, unit="dB")
    hygiene_data_range_flag: bool | None = column("the other data range scores clearly better", None)
    hygiene_flags: str | None = column("comma-separated hygiene findings (empty when none)", None)
    timing_protocol: str | None = column("timing protocol id, e.g. `esr-default-v2`, `official-v1`", None)
    runtime_statistic: str | None = column("how a split's runtime_ms comes from its samples: `mean` or "
                                           "`mean_of_image_medians`", None)
    device_kind: str | None = column("`cuda` or `cpu`", None)
    device_name: str | None = column("GPU model or CPU model name", None)
    gpu_uuid: str | None = column("UUID of the GPU measured on", None)
    hostname: str | None = column("host measured on", None)
    node_id: str | None = column("Ray node measured on", None)
    actor_startup_s: float | None = column("seconds from the actor's request to its start (scheduling, process, imports "
                                           "and, for a submission with requirements, building its environment: "
                                           "cached per node and requirement set); never counted against `timeout`",
                                           None, unit="s")
    requirements_sha256: str | None = column("sha256 of the manifest's requirement set (sorted, normalised); null "
                                             "when it has none", None)
    requirements_installed: str | None = column("`name==version; ...` of the requirements as installed in the "
                                                "submission's environment (Ray runs)", None)
    torch_num_threads: int | None = column("torch intra-op threads", None, unit="count")
    process_niceness: int | None = column("niceness of the measuring process (0: normal priority; Ray starts workers "
                                          "at 15 unless `RAY_worker_niceness=0`, which esr-eval sets)", None,
                                          unit="nice level (-20 to 19)")
    cudnn_benchmark: bool | None = column("`torch.backends.cudnn.benchmark`", None)
    tf32_matmul: bool | None = column("TF32 allowed in matmul", None)
    tf32_cudnn: bool | None = column("TF32 allowed in cuDNN", None)
    memory_limit_mb: int | None = column("host memory limit of the submission's process (RLIMIT_DATA)", None,
                                         unit="MiB (2^20 B)")
    sandbox: str | None = column("the sandbox's restrictions (Landlock) as applied", None)
    containment: str | None = column("process containment as applied (memory limit, subreaper, signals)", None)
    leftover_processes_killed: int | None = column("processes the submission left behind, killed", None, unit="count")
    leftover_processes: str | None = column("their command lines", None)
    started_at_unix_s: float | None = column("evaluation start", None, unit="s (Unix time, UTC)")
    wall_s: float | None = column("evaluation wall time", None, unit="s")


@dataclass(frozen=True)
class SplitRow:
    """One row per (submission, split) measured: quality and runtime summaries, memory."""

    run_id: str = column("the run")
    submission_id: str = column("the submission")
    split: str = column("split name, e.g. `DIV2K_LSDIR_valid`, `embedded`")
    num_images: int = column("images in the split", unit="count")
    dataset_sha256: str = column("sha256 over the split's HR and LR files")
    psnr_db: float = column("mean PSNR over the images (RGB)", unit="dB")
    ssim: float | None = column("mean SSIM (RGB); null unless asked for", unit="unitless (<= 1)")
    psnr_y_db: float = column("mean PSNR on the Y channel", unit="dB")
    ssim_y: float | None = column("mean SSIM on the Y channel; null unless asked for", unit="unitless (<= 1)")
    runtime_ms: float = column("the split's runtime by runtime_statistic (the ranked figure)", unit="ms")
    runtime_mean_ms: float = column("mean of every timed call", unit="ms")
    runtime_median_ms: float = column("median of every timed call", unit="ms")
    runtime_p90_ms: float = column("90th percentile of the timed calls", unit="ms")
    runtime_n: int = column("timed calls", unit="count")
    wall_mean_ms: float = column("mean host-clock time around the synchronised call", unit="ms")
    warmup_calls: int = column("untimed calls before timing", unit="count")
    repeats: int = column("timed passes over the split", unit="count")
    peak_mem_mb: float | None = column("peak CUDA memory allocated during this split "
                                       "(`torch.cuda.max_memory_allocated` / 2^20, reset per split; the name says mb, "
                                       "the unit is MiB); null on CPU", None, unit="MiB (2^20 B)")
    peak_mem_official_mb: float | None = column("peak CUDA memory allocated since loading, never reset, as the official "
                                                "script reads it (its \"Mem [MB]\" is this figure, in MiB); null on CPU",
                                                None, unit="MiB (2^20 B)")
    runtime_sandbox_ms: float | None = column("runtime by the sandbox's own clock", None, unit="ms")
    runtime_external_ms: float | None = column("runtime bounded by the evaluator's clock", None, unit="ms")
    external_overhead_ms: float | None = column("mean calibrated cost of the evaluator's path per call", None, unit="ms")
    timing_tampered: bool | None = column("the sandbox's clock fell short of the evaluator's: the external bound "
                                          "is the runtime", None)
    timing_detail: str | None = column("what the external check found", None)


@dataclass(frozen=True)
class SampleRow:
    """One row per (submission, split, image, repeat); quality only on repeat 0."""

    run_id: str = column("the run")
    submission_id: str = column("the submission")
    split: str = column("the split")
    image: str = column("image name")
    repeat: int = column("timed pass, from 0", unit="index (from 0)")
    latency_ms: float = column("the call's latency (CUDA events, or the CPU clock)", unit="ms")
    wall_ms: float = column("host clock around the synchronised call", unit="ms")
    lr_height: int = column("LR input height", unit="px")
    lr_width: int = column("LR input width", unit="px")
    external_ms: float | None = column("the evaluator's clock: request sent to output delivered", None, unit="ms")
    overhead_ms: float | None = column("calibrated cost of that path for this image", None, unit="ms")
    psnr_db: float | None = column("PSNR (RGB); repeat 0 only", None, unit="dB")
    ssim: float | None = column("SSIM (RGB); repeat 0 only, when asked for", None, unit="unitless (<= 1)")
    psnr_y_db: float | None = column("PSNR on the Y channel; repeat 0 only", None, unit="dB")
    ssim_y: float | None = column("SSIM on the Y channel; repeat 0 only, when asked for", None, unit="unitless (<= 1)")


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


# --- rankings, run.json, ledger.json: specified column by column (key by key) -----------------------

_PLACEHOLDER = re.compile(r"<[a-z]+>")
NO_UNIT = "–"


@dataclass(frozen=True)
class Column:
    """A column (or JSON key) specified by name: ``<metric>`` / ``<track>`` in a name stand for each
    of a protocol's metric / track names; ``type`` is the Parquet (or JSON) type; ``unit`` as for
    :func:`column` (None for text, booleans and JSON structures)."""

    name: str
    type: str
    nullable: bool
    meaning: str
    unit: str | None = None

    def matches(self, name: str) -> bool:
        pattern = ".+".join(re.escape(part) for part in _PLACEHOLDER.split(self.name))
        return re.fullmatch(pattern, name) is not None

    @property
    def fixed_chars(self) -> int:
        """Characters outside placeholders: the most specific of several matching columns has the most."""
        return len(_PLACEHOLDER.sub("", self.name))


RANKINGS = "rankings"
RANKINGS_PART_NAME = "part-00000.parquet"
RANKINGS_DOC = ("One row per submission of the run, none dropped, ranked under one protocol's rules "
                "(`esr_eval.ranking`); ranked rows first by the main track's rank, then baseline, references "
                "and other unranked rows. `<metric>` stands for each metric of the protocol (e.g. `runtime_ms`, "
                "`params`, `flops`), `<track>` for each track (e.g. `main`). Ranks are min-style (ties share "
                "the smallest); lower score is better. Interval columns are null without samples.")
RANKINGS_COLUMNS: tuple[Column, ...] = (
    Column("protocol", "string", False, "name of the rules (protocol) ranked under"),
    Column("rules_version", "string", True, "version of those rules (absent in rankings written before it)"),
    Column("run_id", "string", True, "the run"),
    Column("submission_id", "string", False, "the submission"),
    Column("team_id", "string", False, "team number"),
    Column("name", "string", False, "method name"),
    Column("status", "string", False, "the submission's status in the run"),
    Column("role", "string", False, "`entry`, `baseline` or `reference`"),
    Column("baseline_submission_id", "string", True, "the submission taken as baseline (same on every row; null "
                                                     "when the run holds none)"),
    Column("baseline_selection", "string", False, "how: `identity`, `explicit`, `explicit-unverified` or `absent`"),
    Column("baseline_check", "string", False, "what was compared against the published figures"),
    Column("gate_pass", "bool", False, "passes every PSNR gate"),
    Column("gate_reason", "string", False, "each gate's comparison, dB"),
    Column("val_psnr_db", "double", True, "PSNR on the split of the valid role", "dB"),
    Column("test_psnr_db", "double", True, "PSNR on the split of the test role", "dB"),
    Column("<metric>", "double", True, "the metric's value (a `splits` metric combines the valid and test roles "
                                       "as the protocol says)", "the source column's (`_ms`: ms, `_mb`: MiB)"),
    Column("params", "int64", True, "the `params` metric: `submissions.params`", "count"),
    Column("flops", "int64", True, "the `flops` metric: `submissions.flops_fvcore` (ntire2022 rules: "
                                   "`flops_hook_2022`), the challenge's \"FLOPs\"", "MACs"),
    Column("activations", "int64", True, "the `activations` metric: `submissions.activations`", "count"),
    Column("num_conv", "int64", True, "the `num_conv` metric: `submissions.num_conv`", "count"),
    Column("val_<metric>", "double", True, "a `splits` metric on the split of the valid role", "as `<metric>`"),
    Column("test_<metric>", "double", True, "a `splits` metric on the split of the test role", "as `<metric>`"),
    Column("metric_rank_<metric>", "int64", True, "the row's rank on that metric among rows ranked", "rank"),
    Column("metric_score_<metric>", "double", True, "exp-ratio score of the metric, exp(factor * m / m_baseline)",
           "unitless"),
    Column("score_<track>", "double", True, "the track's score (rank sum or weighted exp-ratio sum)", "unitless"),
    Column("rank_<track>", "int64", True, "the track's rank; null when not ranked in it", "rank"),
    Column("<metric>_ci_low", "double", True, "bootstrap interval of a runtime metric, lower end", "as `<metric>`"),
    Column("<metric>_ci_high", "double", True, "its upper end", "as `<metric>`"),
    Column("score_<track>_ci_low", "double", True, "bootstrap interval of the track's score, lower end", "unitless"),
    Column("score_<track>_ci_high", "double", True, "its upper end", "unitless"),
    Column("rank_<track>_ci_low", "int64", True, "bootstrap interval of the track's rank, best end", "rank"),
    Column("rank_<track>_ci_high", "int64", True, "its worst end", "rank"),
    Column("tied_with_<track>", "string", True, "comma-separated submission_ids whose rank intervals overlap "
                                                "(empty: none; null: not ranked or no samples)"),
    Column("excluded_reason", "string", True, "why the row is not ranked in some track; null when ranked in all"),
    Column("run_integrity", "string", True, "`verified`, `unverified`, `tampered`, `split-changed` or "
                                            "`tampered+split-changed` (same on every row)"),
    Column("run_integrity_findings", "string", True, "the run's integrity findings; null when none"),
    Column("integrity", "string", True, "which of the row's part files were not read, and why"),
)
RANKINGS_METADATA: tuple[Column, ...] = (
    Column("esr_eval.protocol", "string", False, "name of the rules"),
    Column("esr_eval.protocol_source", "string", False, "the rules' file"),
    Column("esr_eval.rules_sha256", "string", False, "sha256 of the rules as applied (every field but the "
                                                     "file's path, after --baseline, --resamples, split overrides)"),
    Column("esr_eval.run_sha256", "string", False, "`run_sha256` of the run folder when ranked"),
    Column("esr_eval.integrity", "string", False, "JSON: the run's integrity summary when ranked"),
)

RUN_JSON_NAME = "run.json"
RUN_JSON_DOC = ("Provenance of a run, written by the driver at its start and rewritten at its end "
                "(`esr_eval.provenance.run_metadata` and the callers that add to it). A run folder written by hand or "
                "by the tests' synthetic-run writer may hold other keys.")
RUN_JSON_KEYS: tuple[Column, ...] = (
    Column("run_id", "string", False, "the run"),
    Column("created_unix_s", "number", False, "when the driver started the run", "s (Unix time, UTC)"),
    Column("driver", "string", False, "`in-process` (`esr-eval evaluate`) or `ray`"),
    Column("driver_host", "string", False, "host of the driver"),
    Column("device", "string", False, "device the submissions ran on: `cpu`, `cuda`, `cuda:N`"),
    Column("timing_protocol", "object", False, "the timing protocol: `id` and every setting"),
    Column("splits", "array", False, "per split: `name`, `scale`, `num_images`, `sha256` at the start"),
    Column("submissions", "array", False, "submission_ids asked for"),
    Column("environment", "object", False, "library versions and the esr-eval git sha (`esr_eval.provenance`), "
                                           "keys below"),
    Column("environment.esr_eval_version", "string", True, "esr-eval's package version"),
    Column("environment.esr_eval_git_sha", "string", True, "esr-eval's git commit"),
    Column("environment.esr_eval_git_dirty", "boolean", True, "esr-eval's source differs from that commit"),
    Column("environment.python", "string", False, "Python version"),
    Column("environment.torch", "string", False, "torch version"),
    Column("environment.cuda", "string", True, "CUDA version torch was built with; null for a CPU build"),
    Column("environment.cudnn", "number", True, "cuDNN version as torch reports it", "version (90100 = 9.1.0)"),
    Column("environment.nvidia_driver", "string", True, "NVIDIA driver version; null without a GPU"),
    Column("environment.ray", "string", True, "Ray version; null when not installed"),
    Column("environment.numpy", "string", True, "numpy version"),
    Column("environment.fvcore", "string", True, "fvcore version"),
    Column("environment.platform", "string", False, "operating system and machine (`platform.platform()`)"),
    Column("ledger", "string", False, "`ledger.json`: the run keeps a ledger (so a deleted one reads as tampering)"),
    Column("ray_address", "string", True, "Ray cluster connected to (ray driver)"),
    Column("ray_address_source", "string", True, "why that address"),
    Column("device_requested", "string", True, "`--device` as given"),
    Column("gpus_required", "number", True, "GPUs the run waited for", "count"),
    Column("device_kinds_measured", "array", True, "device kinds of the submission rows, at the end"),
    Column("scheduling", "string", True, "`gpu` or `cpu` actors"),
    Column("slots", "number", True, "actors run at once, at the end", "count"),
    Column("gpu_models", "array", True, "GPU models of the cluster"),
    Column("allow_mixed_gpus", "boolean", True, "`--allow-mixed-gpus`"),
    Column("gpu_model_pinned", "string", True, "`--gpu-model`"),
    Column("makespan_s", "number", True, "wall time of the measuring", "s"),
    Column("skipped_as_complete", "array", True, "submission_ids kept from an earlier attempt of the run"),
    Column("splits_verified_at_end", "object", True, "the split files re-hashed at the end: `checked_at_unix_s`, "
                                                     "`ok`, `changed` (name, sha256_start, sha256_end, error)"),
)

LEDGER_NAME = "ledger.json"
LEDGER_FORMAT = "esr-eval-ledger-v1"
LEDGER_DOC = "What the driver wrote (module doc of `esr_eval.records`, \"Integrity\"); rewritten after every write."
LEDGER_KEYS: tuple[Column, ...] = (
    Column("format", "string", False, f"`{LEDGER_FORMAT}`"),
    Column("run_id", "string", False, "the run"),
    Column("files", "object", False, "relative path → `sha256` and `size` (bytes) of what was written, "
                                     "`written_at_unix_s`, and `adopted` for files of a run older than the ledger"),
)


def rankings_column(name: str) -> Column:
    """The specification of one rankings column (the most specific that matches); ValueError if none does."""
    matching = [c for c in RANKINGS_COLUMNS if c.matches(name)]
    if not matching:
        raise ValueError(f"rankings column {name!r} is not specified in esr_eval.records.RANKINGS_COLUMNS")
    return max(matching, key=lambda c: c.fixed_chars)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]], left: Iterable[int] = ()) -> str:
    """A Markdown (pipe) table of text cells through pandas/tabulate; columns in ``left`` are
    left-aligned, the rest right-aligned. ``|`` is escaped and line breaks become spaces."""
    import pandas as pd

    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    left = set(left)
    frame = pd.DataFrame([[cell(c) for c in row] for row in rows], columns=range(len(header)))
    return frame.to_markdown(index=False, headers=[cell(h) for h in header], disable_numparse=True,
                             colalign=["left" if i in left else "right" for i in range(len(header))])


def _spec_section(title: str, doc: str, spec: Sequence[Column], what: str = "column") -> list[str]:
    rows = [(f"`{c.name}`", c.type, c.unit or NO_UNIT, "yes" if c.nullable else "no", c.meaning) for c in spec]
    header = (what, "type", "unit", "nullable", "meaning")
    return [f"## {title}", "", doc, "", markdown_table(header, rows, range(len(header))), ""]


def table_columns(table: str) -> tuple[Column, ...]:
    """The columns of one of the driver's :data:`TABLES`, from its row dataclass (name, Parquet type, unit, meaning)."""
    row_type = TABLES[table]
    return tuple(Column(f.name, str(f.type), f.nullable, field_.metadata["meaning"], field_.metadata["unit"])
                 for f, field_ in zip(arrow_schema(row_type), fields(row_type)))


def schema_markdown() -> str:
    """The reference of everything a run folder holds (docs/SCHEMA.md), generated from the definitions above."""
    lines = ["# Run folder schema", "",
             "Generated by `esr_eval.records.schema_markdown()` from `esr_eval/records.py`, the single definition.",
             "",
             "Units: `ms` milliseconds; `s` seconds; `dB` decibels; `px` pixels; `MiB (2^20 B)` mebibytes of "
             "1,048,576 bytes (columns named `_mb` hold MiB, as the challenge's \"Mem [MB]\" does); `MACs` "
             "multiply-accumulate operations, one multiply-add counted once (what the challenges call FLOPs); "
             f"`count` a number of things; `rank` 1 = best; `{NO_UNIT}` text, boolean or JSON, no unit.",
             ""]
    for table, row_type in TABLES.items():
        lines += _spec_section(f"`{table}`", row_type.__doc__.strip(), table_columns(table))
    lines += _spec_section(f"`{RANKINGS}`", RANKINGS_DOC, RANKINGS_COLUMNS)
    lines += _spec_section(f"`{RANKINGS}` Parquet metadata", "What the rankings were made from.",
                           RANKINGS_METADATA, "key")
    lines += _spec_section(f"`{RUN_JSON_NAME}`", RUN_JSON_DOC, RUN_JSON_KEYS, "key")
    lines += _spec_section(f"`{LEDGER_NAME}`", LEDGER_DOC, LEDGER_KEYS, "key")
    return "\n".join(lines)


# --- the one writer -------------------------------------------------------------------------------


def file_entry(data: bytes) -> dict:
    """The ledger's record of one file: sha256 and size of ``data`` (the bytes written), and when."""
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "written_at_unix_s": time.time()}


def atomic_write(path: Path, write: Callable[[Path], Any]) -> dict:
    """``write(temporary)`` then rename the temporary file (same folder) onto ``path``; returns the
    :func:`file_entry` of the bytes written, hashed before the rename (the file as this writer produced it).
    A failed write leaves nothing behind."""
    path = Path(path)
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
    return path, atomic_write(path, lambda tmp: pq.write_table(arrow_table, tmp))


def write_json(path: Path, payload: dict, indent: int | None = 2) -> dict:
    """Write ``payload`` as JSON atomically; returns the ledger entry of the bytes written.

    ``indent=None`` writes compact JSON with the C encoder (the ledger, rewritten after every
    submission, stays cheap as it grows)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(payload, indent=indent, sort_keys=True, default=str,
                      separators=None if indent else (",", ":"))
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def _typed_column(arrow: pa.Table, name: str) -> pa.ChunkedArray:
    """Column ``name`` of ``arrow`` cast to its type in :data:`RANKINGS_COLUMNS`."""
    spec = rankings_column(name)
    try:
        return arrow.column(name).cast(spec.type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise ValueError(f"rankings column {name!r} ({arrow.schema.field(name).type}) does not fit its "
                         f"specification `{spec.name}` ({spec.type}) in esr_eval.records.RANKINGS_COLUMNS") from exc


def write_rankings(run_dir: Path, rankings: pd.DataFrame, metadata: Mapping[str, str]) -> Path:
    """Write ``<run_dir>/rankings/part-00000.parquet`` atomically (a re-rank replaces it): each column
    typed as :data:`RANKINGS_COLUMNS` specifies, ``metadata`` (the keys of :data:`RANKINGS_METADATA`)
    in the Parquet metadata. A column or key not specified there is refused (ValueError)."""
    unknown = set(metadata) - {c.name for c in RANKINGS_METADATA}
    if unknown:
        raise ValueError(f"rankings metadata {sorted(unknown)} not specified in esr_eval.records.RANKINGS_METADATA")
    inferred = pa.Table.from_pandas(rankings, preserve_index=False)
    typed = pa.table([_typed_column(inferred, name) for name in inferred.column_names], names=inferred.column_names)
    extra = {key.encode(): value.encode() for key, value in metadata.items()}
    typed = typed.replace_schema_metadata({**(inferred.schema.metadata or {}), **extra})
    folder = Path(run_dir) / RANKINGS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / RANKINGS_PART_NAME
    atomic_write(path, lambda tmp: pq.write_table(typed, tmp))
    return path


# --- the one reader ---------------------------------------------------------------------------------


def _arrow(parts: list[bytes]) -> pa.Table:
    """One table from the bytes of its part files (the very bytes that were hashed, where they were)."""
    return pa.concat_tables([pq.read_table(pa.BufferReader(data)) for data in parts], promote_options="default")


def _empty_frame(table: str) -> pd.DataFrame:
    import pandas as pd

    return arrow_schema(TABLES[table]).empty_table().to_pandas() if table in TABLES else pd.DataFrame()


def _frame(table: str, parts: list[bytes]) -> pd.DataFrame:
    """``table`` as a DataFrame from the bytes of its part files; empty, with its columns, without any."""
    return _arrow(parts).to_pandas() if parts else _empty_frame(table)


def _part_files(run_dir: Path, table: str) -> list[str]:
    """Relative paths of every file under ``<run_dir>/<table>`` that a reader could take for data
    (pandas reads every file not starting with ``.`` or ``_``, in sub-folders too)."""
    folder = Path(run_dir) / table
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(run_dir)
        if not any(part.startswith((".", "_")) for part in relative.parts) and not path.is_dir():
            found.append(relative.as_posix())
    return found


def read_table(run_dir: Path, table: str) -> pd.DataFrame:
    """The whole table, every part file unchecked (empty, with the right columns, if absent); for the
    driver's tables of a run with a ledger, :func:`read_verified` reads only what the driver wrote."""
    return _frame(table, [(Path(run_dir) / relpath).read_bytes() for relpath in _part_files(run_dir, table)])


@dataclass(frozen=True)
class StoredRankings:
    """``rankings/`` as written: the table and its Parquet metadata (keys of :data:`RANKINGS_METADATA`)."""

    table: pd.DataFrame
    metadata: Mapping[str, str]


def read_rankings(run_dir: Path) -> StoredRankings | None:
    """The run's ``rankings/``; None when there is none or it is not a Parquet file. Integer columns
    (ranks, counts) are read as pandas' nullable ``Int64``, whatever dtype the frame written had."""
    import pandas as pd

    path = Path(run_dir) / RANKINGS / RANKINGS_PART_NAME
    try:
        arrow = _arrow([path.read_bytes()])
    except (OSError, pa.ArrowException):
        return None
    keys = {c.name for c in RANKINGS_METADATA}
    metadata = {k.decode(): v.decode() for k, v in (arrow.schema.metadata or {}).items() if k.decode() in keys}
    return StoredRankings(arrow.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get), metadata)


def run_sha256(run_dir: Path) -> str:
    """sha256 over the path and sha256 of every file a ranking reads or checks (table parts,
    ``run.json``, ``ledger.json``): it changes whenever the run does."""
    run_dir = Path(run_dir)
    paths = table_files(run_dir) + [name for name in (RUN_JSON_NAME, LEDGER_NAME) if (run_dir / name).is_file()]
    lines = "".join(f"{relpath}\t{file_sha256(run_dir / relpath)}\n" for relpath in paths)
    return hashlib.sha256(lines.encode()).hexdigest()


# --- the ledger and verified reading (module doc, "Integrity") ----------------------------------

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
    """Relative paths of every file under the driver's table folders that a reader could take for data."""
    return [relpath for table in TABLES for relpath in _part_files(run_dir, table)]


def read_parts(run_dir: Path, table: str, files: Mapping[str, dict]) -> pd.DataFrame:
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
            return (f"UNVERIFIED RUN: {self.run_dir} holds no {LEDGER_NAME} (written by hand, by a synthetic-run writer "
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


@dataclass(frozen=True)
class RunTables:
    """The driver's tables of one run folder, from verified parts (``samples`` None when the run has
    none), its ``run.json`` and what :func:`verify_run` found."""

    submissions: pd.DataFrame
    splits: pd.DataFrame
    samples: pd.DataFrame | None = None
    run_info: Mapping[str, Any] = field(default_factory=dict)
    run_dir: Path | None = None
    integrity: RunIntegrity | None = None


def read_run(run_dir: str | Path) -> RunTables:
    """``submissions``, ``splits``, ``samples`` and ``run.json`` of a ``results/<run_id>`` folder, only
    from the files its ledger records and verifies (module doc, "Integrity")."""
    run_dir = Path(run_dir)
    if not (run_dir / "submissions").exists():
        raise FileNotFoundError(
            f"{run_dir / 'submissions'} not found: pass a run folder (results/<run_id>) written by esr-eval")
    integrity = verify_run(run_dir, read=tuple(TABLES))
    samples = integrity.tables["samples"]
    return RunTables(submissions=integrity.tables["submissions"], splits=integrity.tables["splits"],
                     samples=samples if len(samples) else None, run_info=dict(integrity.run_info),
                     run_dir=run_dir, integrity=integrity)
