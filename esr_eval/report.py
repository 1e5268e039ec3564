"""Publishable report of a ranked run: ``report.html`` (self-contained) and ``report.md`` + PNG plots.

Contract
- ``write_report(run_dir, protocol, out_dir=None) -> ReportPaths`` takes the run's rankings under the
  protocol from ``<run_dir>/rankings`` when they were made by the same rules from the run as it is
  now, and ranks again only otherwise (``esr_eval.ranking.rankings_for``; nothing written to the
  run), so the report never disagrees with ``rankings/``. It writes to ``out_dir``, by default
  ``report_dir(run_dir, protocol)``: ``<run_dir>/report``, or ``<run_dir>/report-<rules name>`` when
  ``rankings/`` holds a ranking by other rules (its metadata names them), so that a report by other
  rules never replaces the report of the run's own ranking:
  * ``report.html`` from the template ``esr_eval/templates/report.html`` (Jinja2, every value
    escaped): CSS inline, plots embedded as base64 PNG, no external resource;
  * ``report.md`` with the PNG files beside it (``psnr_vs_runtime.png``, ``scores_<track>.png``);
    its tables through ``esr_eval.records.markdown_table`` (pandas).
- Under the title, one line (``header_line``): the hardware (GPU model, or CPU model and threads,
  from the submission rows, else what ``run.json`` says), the esr-eval version and git commit of the
  run (``run.json`` ``environment``), the date the run started (UTC) and the rules (name, version).
- Sections: summary of the rules and of the baseline taken (which submission, identity match or
  explicit, what was verified); the challenge's results table (team, method, val/test PSNR,
  val/test/average runtime, params [M], FLOPs [G], activations [M], memory [MB], #conv, each
  ranked metric and track score with its rank in parentheses; when the valid and test roles are one
  split, one PSNR column named by that split and no per-role runtimes); one ranking per track with 95 %
  bootstrap intervals and statistically tied neighbours; entries not ranked with their reasons;
  provenance from ``run.json`` and the protocol.
- Plots (matplotlib figures with their own Agg canvas, never pyplot's figure state), saved at
  ``PLOT_DPI`` (200): PSNR vs average runtime, one panel per distinct split (one above the other),
  with the Pareto front of ranked entries and the gate line, every measured entry labelled (moved
  apart by adjustText in a fixed number of iterations, inside the axes, so no label overlaps another
  or leaves the figure; an entry off the axes is drawn clipped at the edge and labelled with its
  values); one bar chart of scores per track with interval whiskers. Legends sit outside the axes.
  matplotlib and adjustText are the optional extra ``esr-eval[report]``: without them the report
  has every table and says, where each plot would be, that plots need them (``PLOTS_MISSING``).
- Integrity (``esr_eval.records.verify_run``): only the part files the run's ledger records and
  verifies are read. A tampered run's report starts with the line ``TAMPERED RUN: <findings>``, a
  run whose split files changed mid-run with ``SPLIT CHANGED MID-RUN: ...``, a run without ledger
  with ``UNVERIFIED RUN: ...`` (Markdown: the first line; HTML: a comment before the doctype, the
  title, and a red banner above the heading); provenance lists ``run.integrity.*``.
- Imports neither torch nor Ray (directly or through other esr_eval modules).
Rounding happens only here; units as in the column headers (dB, ms, M = 1e6, G = 1e9, MB = 2^20 B).
Non-finite values (PSNR = +inf when a model returns the ground truth exactly): tables show "inf" /
"-inf"; plots never take them into the axis limits, draw them clipped at the edge of the axes
and say so in a note on the plot.
"""
from __future__ import annotations

import base64
import datetime
import functools
import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import jinja2
import numpy as np
import pandas as pd

from esr_eval.protocols import PSNR_COLUMN_BY_ROLE, RankingProtocol, load_protocol
from esr_eval.ranking import ROLE_PREFIX, baseline_summary, gate_thresholds, rankings_for, runtime_metric_names
from esr_eval.records import markdown_table, read_rankings, read_run

MISSING = "–"
# PSNR-vs-runtime axes: points further than this below the ranked entries / gate, or further off
# in runtime, are drawn clipped at the edge with their values written beside them.
FOCUS_MARGIN_DB = 0.4
FOCUS_RUNTIME_FACTOR = 3.0
MAX_NONFINITE_LINES = 3  # non-finite points listed under a PSNR-vs-runtime panel
PLOT_DPI = 200
PANEL_IN = (6.4, 5.4)  # one PSNR-vs-runtime panel, inches (width, height)
LEGEND_IN = 1.9  # room for the legend right of the panels, inches
SCORES_WIDTH_IN, SCORES_ROW_IN = 6.4, 0.22  # score bar charts: width, height per entry, inches
LABEL_FONT_PT = 7.5
MAX_MINOR_LABEL_DECADES = 3
LABEL_ITERATIONS = 400  # adjustText iterations: a fixed count, never a time limit, so plots are reproducible
POINT_LABEL_GID = "point-label"


@dataclass(frozen=True)
class ReportPaths:
    html: Path
    markdown: Path
    plots: tuple[Path, ...]


@dataclass(frozen=True)
class _Table:
    """A table to render: header, cell texts, per-row CSS class, which columns hold text."""

    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    row_classes: tuple[str, ...]
    text_columns: frozenset[int]


@dataclass(frozen=True)
class _Section:
    title: str
    note: str = ""
    table: _Table | None = None
    image: Path | None = None


def _fmt(value: Any, decimals: int, scale: float = 1.0) -> str:
    if value is None or pd.isna(value):
        return MISSING
    value = float(value) * scale
    if not np.isfinite(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{decimals}f}"


def _with_rank(text: str, rank_value: Any) -> str:
    return text if rank_value is None or pd.isna(rank_value) or text == MISSING else f"{text} ({int(rank_value)})"


def _row_class(row: pd.Series, main_rank_column: str) -> str:
    if row["role"] in ("baseline", "reference"):
        return str(row["role"])
    return "" if pd.notna(row[main_rank_column]) else "unranked"


def _score_decimals(protocol: RankingProtocol, track_name: str) -> int:
    return 0 if protocol.track(track_name).formula == "rank_sum" else 4


def _results_table(rankings: pd.DataFrame, protocol: RankingProtocol) -> _Table:
    """One row per submission. When the valid and test roles are one split, one PSNR column names
    that split and the per-role runtimes are left out (the runtime metric's column is that split's)."""
    psnr_decimals = 2 if protocol.gate_rounding == "2dp" else 4
    main = f"rank_{protocol.main_track}"
    one_split = protocol.split_for("valid") == protocol.split_for("test")
    roles = ("valid",) if one_split else ("valid", "test")
    runtime_metrics = [] if one_split else [m for m in protocol.metrics if m.name in runtime_metric_names(protocol)]
    header = ["Rank", "Team", "Method"]
    header += [f"PSNR [dB] ({protocol.split_for('valid')})"] if one_split else ["Val PSNR [dB]", "Test PSNR [dB]"]
    header += [f"{label} Runtime [ms]" for m in runtime_metrics for label in ("Val", "Test")]
    header += [m.label for m in protocol.metrics]
    header += [f"Score {t.name} ({t.formula})" for t in protocol.tracks]
    rows, classes = [], []
    for _, row in rankings.iterrows():
        cells = [_fmt(row[main], 0), str(row["team_id"]), str(row["name"])]
        cells += [_fmt(row.get(PSNR_COLUMN_BY_ROLE[role]), psnr_decimals) for role in roles]
        cells += [
            _fmt(row.get(f"{ROLE_PREFIX[r]}_{m.name}"), m.decimals) for m in runtime_metrics for r in ("valid", "test")
        ]
        for metric in protocol.metrics:
            text = _fmt(row.get(metric.name), metric.decimals, metric.display_scale)
            cells.append(_with_rank(text, row.get(f"metric_rank_{metric.name}")))
        for track in protocol.tracks:
            text = _fmt(row[f"score_{track.name}"], _score_decimals(protocol, track.name))
            cells.append(_with_rank(text, row[f"rank_{track.name}"]))
        rows.append(tuple(cells))
        classes.append(_row_class(row, main))
    return _Table(tuple(header), tuple(rows), tuple(classes), frozenset({1, 2}))


def _track_is_sampled(protocol: RankingProtocol, track_name: str) -> bool:
    """Whether the track's score moves with the resampled runtimes (its own or the baseline's)."""
    return bool(set(protocol.track(track_name).metric_names) & set(runtime_metric_names(protocol)))


def _track_table(rankings: pd.DataFrame, protocol: RankingProtocol, track_name: str) -> _Table:
    ranked = rankings[rankings[f"rank_{track_name}"].notna()].sort_values(f"rank_{track_name}", kind="stable")
    decimals = _score_decimals(protocol, track_name)
    level = f"{protocol.confidence.level:.0%}"
    if not _track_is_sampled(protocol, track_name):
        rows = tuple(
            (_fmt(r[f"rank_{track_name}"], 0), str(r["team_id"]), str(r["name"]),
             _fmt(r[f"score_{track_name}"], decimals))
            for _, r in ranked.iterrows()
        )
        return _Table(("Rank", "Team", "Method", "Score"), rows, ("",) * len(rows), frozenset({1, 2}))
    header = ("Rank", "Team", "Method", "Score", f"Score {level} CI", f"Rank {level} CI", "Statistically tied with")
    rows = []
    for _, row in ranked.iterrows():
        low, high = row[f"score_{track_name}_ci_low"], row[f"score_{track_name}_ci_high"]
        rank_low, rank_high = row[f"rank_{track_name}_ci_low"], row[f"rank_{track_name}_ci_high"]
        tied = row[f"tied_with_{track_name}"]
        rows.append((
            _fmt(row[f"rank_{track_name}"], 0), str(row["team_id"]), str(row["name"]),
            _fmt(row[f"score_{track_name}"], decimals),
            MISSING if pd.isna(low) else f"{_fmt(low, decimals)} – {_fmt(high, decimals)}",
            MISSING if pd.isna(rank_low) else f"{int(rank_low)} – {int(rank_high)}",
            MISSING if tied is None or pd.isna(tied) else (tied or "none"),
        ))
    return _Table(header, tuple(rows), ("",) * len(rows), frozenset({1, 2, 6}))


def _excluded_table(rankings: pd.DataFrame) -> _Table:
    excluded = rankings[rankings["excluded_reason"].notna()]
    rows = tuple(
        (str(r["team_id"]), str(r["name"]), str(r["status"]), str(r["role"]), str(r["excluded_reason"]))
        for _, r in excluded.iterrows()
    )
    classes = tuple(str(r["role"]) if r["role"] != "entry" else "" for _, r in excluded.iterrows())
    return _Table(("Team", "Method", "Status", "Role", "Reason"), rows, classes, frozenset({0, 1, 2, 3, 4}))


def _value(row: pd.Series, column: str) -> Any:
    """The cell, or None when the column is absent or null."""
    return row[column] if column in row and pd.notna(row[column]) else None


def _tampered_timing(splits: pd.DataFrame | None) -> dict[str, list[str]]:
    """submission_id → what the external clock found, per split whose timing it overruled."""
    if splits is None or "timing_tampered" not in splits:
        return {}
    found: dict[str, list[str]] = {}
    for _, row in splits[splits["timing_tampered"].fillna(False).astype(bool)].iterrows():
        found.setdefault(str(row["submission_id"]), []).append(
            f"timing tampered on {row['split']}: the submission's process reported {row['runtime_sandbox_ms']:.3f} ms, "
            f"the evaluator's clock bounds it at {row['runtime_external_ms']:.3f} ms (that figure stands); "
            f"{row['timing_detail']}")
    return found


def _flags_table(submissions: pd.DataFrame, splits: pd.DataFrame | None = None) -> _Table:
    """Submissions an organiser should look at: hygiene findings, timing overruled by the external
    clock, FLOP-audit and counter flags, declared exceptions, a timing taken below normal priority."""
    rows = []
    timing = _tampered_timing(splits)
    for _, sub in submissions.sort_values("submission_id").iterrows():
        get = functools.partial(_value, sub)
        findings = [flag for flag in (get("hygiene_flags") or "").split(",") if flag]
        findings += timing.get(str(sub["submission_id"]), [])
        if get("flops_audit_flag"):
            findings.append(f"FLOP audit: independent count / fvcore = {get('flops_audit_ratio') or float('nan'):.3f}")
        flags = set((get("complexity_flags") or "").split(","))
        if "flops_input_dependent" in flags:
            findings.append(f"FLOPs per output pixel: {get('flops_audit_per_px_probe') or 0:,.0f} on the complexity "
                            f"probe vs {get('flops_audit_per_px_real') or 0:,.0f} on a real image "
                            "(computes differently for the probe)")
        if "params_in_buffers" in flags:
            findings.append(f"{get('float_buffer_elements') or 0:,} floating-point buffer elements and "
                            f"{get('params_clean') or 0:,} floating elements in the traced graph beside "
                            f"{get('params') or 0:,} params (weights kept out of the parameter count)")
        if "params_not_in_checkpoint" in flags:
            findings.append(f"the traced graph holds {get('params_clean') or 0:,} floating elements, the checkpoint "
                            f"{get('checkpoint_float_elements') or 0:,} (weights that do not come from the checkpoint)")
        if "trace_unverified" in flags:
            findings.append(f"complexity unverified: {get('trace_detail') or 'the traced graph could not be checked'}")
        if get("strict") is False:
            findings.append("loaded with strict=False (declared)")
        if get("trusted_pickle"):
            findings.append("checkpoint fully unpickled (trusted_pickle declared)")
        if get("hygiene_cache_detail"):
            findings.append(str(get("hygiene_cache_detail")))
        niceness = get("process_niceness")
        if niceness is not None and niceness > 0:
            findings.append(f"timed at niceness {int(niceness)}, below normal priority: any other "
                            "process on its node could take its core (start Ray with RAY_worker_niceness=0, as "
                            "esr-eval's templates do, and measure it again)")
        if findings:
            rows.append((str(sub["submission_id"]), "; ".join(findings)))
    return _Table(("Submission", "Findings"), tuple(rows), ("",) * len(rows), frozenset({0, 1}))


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(value, dict):
        return [item for key, inner in value.items() for item in _flatten(inner, f"{prefix}{key}.")]
    if isinstance(value, list):
        return [(prefix.rstrip("."), json.dumps(value))]
    return [(prefix.rstrip("."), str(value))]


def _hardware(submissions: pd.DataFrame, run_info: Mapping[str, Any]) -> str:
    """What the submissions ran on: each GPU model (with the number of GPUs where several) or CPU
    model (with the thread count) of the submission rows; else what run.json says."""
    columns = ["device_kind", "device_name", "gpu_uuid", "torch_num_threads"]
    rows = submissions.reindex(columns=columns)
    rows = rows[rows["device_name"].notna()]
    parts = []
    for (kind, name), group in rows.groupby(["device_kind", "device_name"], dropna=False, sort=True):
        if kind == "cuda":
            gpus = group["gpu_uuid"].dropna().nunique()
            parts.append(f"GPU {name}" + (f" (x{gpus})" if gpus > 1 else ""))
        elif kind == "cpu":
            counts = sorted(int(n) for n in group["torch_num_threads"].dropna().unique())
            threads = "/".join(map(str, counts)) + (" torch thread" if counts == [1] else " torch threads")
            parts.append(f"CPU {name}" + (f", {threads}" if counts else ""))
        else:
            parts.append(str(name))
    if parts:
        return "; ".join(parts)
    if run_info.get("gpu_models"):
        return "GPU " + ", ".join(str(model) for model in run_info["gpu_models"])
    device = run_info.get("device")
    return f"{device} (model not recorded)" if isinstance(device, str) and device else "not recorded"


def _run_date(submissions: pd.DataFrame, run_info: Mapping[str, Any]) -> str:
    started = run_info.get("created_unix_s")
    if not isinstance(started, (int, float)) and "started_at_unix_s" in submissions:
        started = submissions["started_at_unix_s"].min()
    if not isinstance(started, (int, float)) or pd.isna(started):
        return "date not recorded"
    return datetime.datetime.fromtimestamp(float(started), datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _esr_eval_version(run_info: Mapping[str, Any]) -> str:
    environment = run_info.get("environment")
    environment = environment if isinstance(environment, dict) else {}
    version = environment.get("esr_eval_version") or "(version not recorded)"
    sha = environment.get("esr_eval_git_sha")
    git = f"git {sha[:10]}" + (", uncommitted changes" if environment.get("esr_eval_git_dirty") else "") if sha else ""
    return f"esr-eval {version}" + (f" ({git})" if git else "")


def header_line(submissions: pd.DataFrame, run_info: Mapping[str, Any], protocol: RankingProtocol) -> str:
    """The line under the report's title: hardware, esr-eval version, date of the run and rules."""
    return (f"Hardware: {_hardware(submissions, run_info)} · {_esr_eval_version(run_info)} · "
            f"run of {_run_date(submissions, run_info)} · rules {protocol.name}, version {protocol.version}")


def report_dir(run_dir: str | Path, protocol: RankingProtocol) -> Path:
    """Where a run's report goes by default: ``<run>/report``, or ``<run>/report-<rules>`` when the
    run's ``rankings/`` holds a ranking by other rules (its metadata names them), so that such a
    report never replaces the report of the run's own ranking."""
    run_dir = Path(run_dir)
    stored = read_rankings(run_dir)
    stored_rules = stored.metadata.get("esr_eval.protocol") if stored is not None else None
    if stored_rules in (None, protocol.name):
        return run_dir / "report"
    return run_dir / f"report-{re.sub(r'[^A-Za-z0-9._-]+', '-', protocol.name).strip('-.') or 'rules'}"


def _provenance_table(run_info: dict, protocol: RankingProtocol, rankings: pd.DataFrame) -> _Table:
    confidence = protocol.confidence
    rules = [
        ("protocol.name", protocol.name),
        ("protocol.source", protocol.source_path),
        ("protocol.splits", ", ".join(f"{role} = {split}" for role, split in protocol.splits)),
        ("protocol.gate_rounding", protocol.gate_rounding),
        ("protocol.baseline", f"{protocol.baseline.identity.describe()}, figures from {protocol.baseline.source}"),
        ("rankings.baseline", baseline_summary(rankings)),
        ("protocol.bootstrap", f"{confidence.resamples} resamples, seed {confidence.seed}, level {confidence.level:g}"),
    ]
    rows = tuple(rules + _flatten(run_info, "run."))
    return _Table(("Field", "Value"), rows, ("",) * len(rows), frozenset({0, 1}))


def pareto_front(runtime_ms: np.ndarray, psnr_db: np.ndarray) -> np.ndarray:
    """Indices of points no other point beats on both lower runtime and higher PSNR, by runtime."""
    order = np.lexsort((-psnr_db, runtime_ms))
    front, best = [], -np.inf
    for i in order:
        if psnr_db[i] > best:
            front.append(i)
            best = psnr_db[i]
    return np.array(front, dtype=int)


def _focus_limits(
    runtime_ms: np.ndarray, psnr_db: np.ndarray, core: np.ndarray, present: np.ndarray, gate_db: float
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Axis limits (log x) around the ``core`` points (ranked + baseline) and the gate line, widened
    to every point within FOCUS_MARGIN_DB below that and a factor FOCUS_RUNTIME_FACTOR in runtime."""
    core_db = np.append(psnr_db[core], gate_db)
    floor_db = np.nanmin(core_db) - FOCUS_MARGIN_DB
    x_core = runtime_ms[core]
    near = present & (psnr_db >= floor_db) & (runtime_ms >= x_core.min() / FOCUS_RUNTIME_FACTOR) & (
        runtime_ms <= x_core.max() * FOCUS_RUNTIME_FACTOR)
    x, y = runtime_ms[near | core], np.append(psnr_db[near | core], gate_db)
    low_db, high_db = np.nanmin(y), np.nanmax(y)
    pad_db = max(0.02, 0.06 * (high_db - low_db))
    return (x.min() / 1.15, x.max() * 1.15), (low_db - pad_db, high_db + pad_db)


PLOT_PACKAGES = ("matplotlib", "adjustText")
PLOTS_MISSING = "Plot omitted: matplotlib or adjustText is not installed (pip install 'esr-eval[report]')."


def _plain_log_ticks(axis: Any) -> None:
    """Log-axis tick labels as plain numbers: every decade, and minor ticks at 2x and 5x only while
    the axis spans at most MAX_MINOR_LABEL_DECADES decades (beyond, they would run into each other)."""
    from matplotlib.ticker import FuncFormatter

    def minor(value: float, _: int) -> str:
        low, high = sorted(axis.get_view_interval())
        if low <= 0 or np.log10(high / low) > MAX_MINOR_LABEL_DECADES:
            return ""
        mantissa = round(value / 10 ** np.floor(np.log10(value))) if value > 0 else 0
        return f"{value:g}" if mantissa in (2, 5) else ""

    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(FuncFormatter(minor))


def _new_figure(size_in: tuple[float, float]) -> Any:
    """A constrained-layout figure with its own Agg canvas (no pyplot state), at PLOT_DPI."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size_in, dpi=PLOT_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _label_points(axes: Any, labels: list[tuple[float, float, str]], x_points: np.ndarray,
                  y_points: np.ndarray) -> None:
    """Write each (x, y, text) beside its point (gid POINT_LABEL_GID), then move the labels apart
    with adjustText (a fixed number of iterations, so the same input gives the same plot), off the
    points, inside the axes and joined to their point by a thin line where moved."""
    from adjustText import adjust_text

    texts = []
    for x, y, text in labels:
        label = axes.text(x, y, text, fontsize=LABEL_FONT_PT, color="#1a202c", gid=POINT_LABEL_GID, zorder=5)
        label.set_in_layout(False)  # inside the axes by construction: the layout need not make room
        texts.append(label)
    if texts:
        adjust_text(texts, x=x_points, y=y_points, ax=axes, iter_lim=LABEL_ITERATIONS, ensure_inside_axes=True,
                    expand=(1.15, 1.35), arrowprops=dict(arrowstyle="-", color="#718096", lw=0.5))


def _legend_outside(figure: Any, axes_list: list[Any], where: str) -> None:
    """One legend for the figure, outside every axes (``where``: a constrained-layout "outside ..."
    location), each label once."""
    entries: dict[str, Any] = {}
    for axes in axes_list:
        for handle, label in zip(*axes.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    if entries:
        figure.legend(list(entries.values()), list(entries), loc=where, fontsize=8, frameon=False)


def psnr_runtime_figure(rankings: pd.DataFrame, protocol: RankingProtocol) -> Any:
    """The PSNR-vs-runtime figure (one panel per distinct split of the valid and test roles, one above
    the other, so that each has the page's width): every
    measured entry labelled with its name (those drawn clipped at the edge also with their values),
    the Pareto front of ranked entries, the gate line, the legend outside the axes."""
    runtime_metric = next(m for m in protocol.metrics if m.name in runtime_metric_names(protocol))
    roles = ("valid",) if protocol.split_for("valid") == protocol.split_for("test") else ("valid", "test")
    thresholds = {g.role: g for g in gate_thresholds(rankings, protocol)}
    figure = _new_figure((PANEL_IN[0] + LEGEND_IN, PANEL_IN[1] * len(roles)))
    role_of = rankings["role"].to_numpy()
    ranked = rankings[f"rank_{protocol.main_track}"].notna().to_numpy()
    runtime_ms = rankings[runtime_metric.name].to_numpy(dtype="float64", na_value=np.nan)
    names = rankings["name"].astype(str).to_numpy()
    panels, to_label = [], []
    for k, role in enumerate(roles):
        axes = figure.add_subplot(len(roles), 1, k + 1)
        panels.append(axes)
        psnr_db = rankings[PSNR_COLUMN_BY_ROLE[role]].to_numpy(dtype="float64", na_value=np.nan)
        measured = ~np.isnan(psnr_db) & ~np.isnan(runtime_ms) & (runtime_ms > 0)
        present = measured & np.isfinite(psnr_db) & np.isfinite(runtime_ms)  # what sets the axis limits
        nonfinite = np.flatnonzero(measured & ~present)
        gate = thresholds.get(role)
        gate_db = gate.threshold_db if gate is not None and gate.threshold_db is not None else np.nan
        notes = [f"{names[i]}: {_fmt(psnr_db[i], 2)} dB, {_fmt(runtime_ms[i], 2)} ms" for i in nonfinite]
        if not np.isnan(gate_db) and not np.isfinite(gate_db):
            notes.append(f"gate {_fmt(gate_db, 2)} dB")
            gate_db = np.nan
        note = ""
        if notes:
            more = f"\n… and {len(notes) - MAX_NONFINITE_LINES} more" if len(notes) > MAX_NONFINITE_LINES else ""
            note = "\nnon-finite, drawn clipped at the edge: " + "\n".join(notes[:MAX_NONFINITE_LINES]) + more
        core = present & (ranked | (role_of == "baseline"))
        core = core if core.any() else present
        if not core.any():
            axes.text(0.5, 0.5, "no measured entry with finite values" + note, ha="center", va="center",
                      fontsize=8, transform=axes.transAxes)
            continue
        (x_lo, x_hi), (y_lo, y_hi) = _focus_limits(runtime_ms, psnr_db, core, present, gate_db)
        inside = present & (runtime_ms >= x_lo) & (runtime_ms <= x_hi) & (psnr_db >= y_lo) & (psnr_db <= y_hi)
        groups = (
            ("ranked", ranked & (role_of == "entry"), dict(marker="o", color="#2b6cb0", s=26)),
            ("baseline", role_of == "baseline", dict(marker="*", color="#d69e2e", s=150, zorder=4)),
            ("reference", role_of == "reference", dict(marker="D", color="#2f855a", s=34)),
            ("not ranked", ~ranked & (role_of == "entry"), dict(marker="x", color="#a0aec0", s=30)),
        )
        for label, mask, style in groups:
            if (mask & inside).any():
                axes.scatter(runtime_ms[mask & inside], psnr_db[mask & inside], label=label, **style)
        x_edges, y_edges = (x_lo * 1.04, x_hi / 1.04), (y_lo + 0.01 * (y_hi - y_lo), y_hi - 0.01 * (y_hi - y_lo))
        outside = np.flatnonzero(measured & ~inside)  # off the focus, or non-finite
        x_drawn, y_drawn = runtime_ms.copy(), psnr_db.copy()
        x_drawn[outside] = np.clip(runtime_ms[outside], *x_edges)
        y_drawn[outside] = np.clip(psnr_db[outside], *y_edges)
        if len(outside):
            axes.scatter(x_drawn[outside], y_drawn[outside], marker="v", facecolors="none", edgecolors="#718096",
                         s=36, label="off axes (clipped)")
        labels = [(x_drawn[i], y_drawn[i], names[i]) for i in np.flatnonzero(inside)]
        labels += [(x_drawn[i], y_drawn[i], f"{names[i]} ({_fmt(runtime_ms[i], 2)} ms, {_fmt(psnr_db[i], 2)} dB)")
                   for i in outside]
        candidates = np.flatnonzero(ranked & measured)
        if len(candidates):
            front = candidates[pareto_front(runtime_ms[candidates], psnr_db[candidates])]
            axes.step(x_drawn[front], y_drawn[front], where="post", color="#c53030", lw=1.2, label="Pareto front")
        if not np.isnan(gate_db):
            axes.axhline(gate_db, color="#718096", ls="--", lw=1,
                         label=f"{role} gate {gate_db:.2f} dB ({protocol.gate_rounding})")
        axes.set_xscale("log")
        _plain_log_ticks(axes.xaxis)
        axes.set_xlim(x_lo, x_hi)
        axes.set_ylim(y_lo, y_hi)
        axes.set_xlabel(f"{runtime_metric.label} (log scale){note}")
        axes.set_ylabel(f"{role + ' ' if len(roles) > 1 else ''}PSNR [dB] ({protocol.split_for(role)})")
        axes.set_title(f"{role.capitalize()} PSNR vs runtime" if len(roles) > 1 else "PSNR vs runtime")
        axes.grid(True, which="both", alpha=0.25)
        shown = np.flatnonzero(measured)
        to_label.append((axes, labels, x_drawn[shown], y_drawn[shown]))
    _legend_outside(figure, panels, "outside right upper")
    figure.draw_without_rendering()  # the layout, legend included, is final before the labels are placed
    for axes, labels, x_points, y_points in to_label:
        _label_points(axes, labels, x_points, y_points)
    return figure


def scores_figure(rankings: pd.DataFrame, protocol: RankingProtocol, track_name: str) -> Any:
    """One track's scores as horizontal bars (best on top) with interval whiskers and the baseline's
    score as a dashed line; the legend below the axes, off the bars."""
    track = protocol.track(track_name)
    ranked = rankings[rankings[f"rank_{track_name}"].notna()].sort_values(f"rank_{track_name}", kind="stable")
    figure = _new_figure((SCORES_WIDTH_IN, 1.6 + SCORES_ROW_IN * max(len(ranked), 1)))
    axes = figure.add_subplot(1, 1, 1)
    score = ranked[f"score_{track_name}"].to_numpy(dtype="float64", na_value=np.nan)
    low = ranked[f"score_{track_name}_ci_low"].to_numpy(dtype="float64", na_value=np.nan)
    high = ranked[f"score_{track_name}_ci_high"].to_numpy(dtype="float64", na_value=np.nan)
    y = np.arange(len(ranked))
    finite = np.isfinite(score)  # a non-finite score gets no bar, its value written at the axis instead
    axes.barh(y[finite], score[finite], color="#4c78a8", height=0.7)
    whiskers = finite & np.isfinite(low) & np.isfinite(high)
    if whiskers.any():
        s, lo, hi = score[whiskers], low[whiskers], high[whiskers]
        axes.errorbar(s, y[whiskers], xerr=[s - lo, hi - s], fmt="none", ecolor="#1a202c", lw=0.9, capsize=2,
                      label=f"{protocol.confidence.level:.0%} interval")
    for i in np.flatnonzero(~finite & ~np.isnan(score)):
        axes.text(0.01, y[i], f"score {_fmt(score[i], 4)} (non-finite, no bar)", transform=axes.get_yaxis_transform(),
                  va="center", fontsize=7, color="#c53030")
    labels = [f"{int(r)}. {n}" for r, n in zip(ranked[f"rank_{track_name}"], ranked["name"])]
    axes.set_yticks(y, labels, fontsize=8)
    axes.invert_yaxis()
    baseline = rankings[rankings["role"] == "baseline"][f"score_{track_name}"].dropna()
    baseline = baseline[np.isfinite(baseline.to_numpy(dtype="float64"))]
    if len(baseline):
        axes.axvline(baseline.iloc[0], color="#d69e2e", ls="--", lw=1.2, label=f"baseline {baseline.iloc[0]:.4g}")
    log_scale = track.formula == "exp_ratio" and bool((finite & (score > 0)).any())
    if log_scale:
        axes.set_xscale("log")
        _plain_log_ticks(axes.xaxis)
    if not len(ranked):
        axes.text(0.5, 0.5, "no ranked entry", ha="center", va="center", transform=axes.transAxes)
    scale = ", log scale" if log_scale else ""
    axes.set_xlabel(f"score ({track.formula}, lower is better{scale})")
    axes.set_title(track.title)
    axes.grid(True, axis="x", which="both", alpha=0.25)
    _legend_outside(figure, [axes], "outside lower center")
    return figure


def _save(figure: Any, path: Path) -> Path:
    figure.savefig(path, dpi=PLOT_DPI, metadata={"Software": None})
    return path


def _rules_note(rankings: pd.DataFrame, protocol: RankingProtocol) -> str:
    n_ranked = int(rankings[f"rank_{protocol.main_track}"].notna().sum())
    gates = "; ".join(
        f"{g.role} PSNR >= {g.threshold_db:.2f} dB" + (f" ({g.explanation})" if g.explanation else "")
        if g.problem is None else f"{g.role}: {g.problem}"
        for g in gate_thresholds(rankings, protocol)
    ) or "none"
    return (
        f"{protocol.description} — {len(rankings)} submissions, {n_ranked} ranked in the main track. "
        f"PSNR gate: {gates}, compared {'after 2-decimal rounding' if protocol.gate_rounding == '2dp' else 'exactly'}. "
        f"Baseline: {baseline_summary(rankings)}; figures from {protocol.baseline.source}. "
        "Ranks are min-style (ties share the smallest rank); lower score is better; the number in "
        "parentheses is the rank."
    )


def _sections(
    rankings: pd.DataFrame, run_info: dict, protocol: RankingProtocol, plots: dict[str, Path],
    submissions: pd.DataFrame, splits: pd.DataFrame | None = None,
) -> list[_Section]:
    level = f"{protocol.confidence.level:.0%}"
    sections = [
        _Section("Results", _rules_note(rankings, protocol), _results_table(rankings, protocol)),
        _Section("PSNR vs runtime", "Pareto front of ranked entries (red) and the PSNR gate (dashed)."
                 if "psnr_vs_runtime" in plots else PLOTS_MISSING, image=plots.get("psnr_vs_runtime")),
    ]
    for track in protocol.tracks:
        note = (
            f"{level} intervals from a paired bootstrap over images and repeats of the per-call latencies; "
            "entries whose rank intervals overlap are statistically tied."
            if _track_is_sampled(protocol, track.name)
            else "Scores from deterministic counts (no sampling noise), so no intervals."
        )
        table = _track_table(rankings, protocol, track.name)
        image = plots.get(f"scores_{track.name}")
        sections.append(_Section(track.title, note if image else f"{note} {PLOTS_MISSING}", table, image))
    sections.append(_Section("Not ranked", "Every submission of the run appears above; these are not ranked, and why.",
                             _excluded_table(rankings)))
    flags = _flags_table(submissions, splits)
    sections.append(_Section(
        "Flags for the organiser",
        "Hygiene findings, timing overruled by the evaluator's clock (its figure is the one ranked), complexity "
        "that does not match what runs, declared loading exceptions, and timings taken below normal priority; the "
        "other flags do not change the ranking."
        if flags.rows else "No hygiene finding, FLOP-audit flag, declared loading exception or low-priority timing.",
        flags if flags.rows else None))
    sections.append(_Section("Provenance", "", _provenance_table(dict(run_info), protocol, rankings)))
    return sections


@functools.cache
def _page_template() -> jinja2.Template:
    environment = jinja2.Environment(loader=jinja2.PackageLoader("esr_eval", "templates"), autoescape=True,
                                     trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                                     undefined=jinja2.StrictUndefined)
    return environment.get_template("report.html")


def _render_html(title: str, header: str, sections: list[_Section], banner: str | None) -> str:
    views = [{"title": s.title, "note": s.note, "table": s.table,
              "image_base64": base64.b64encode(s.image.read_bytes()).decode("ascii") if s.image else None}
             for s in sections]
    return _page_template().render(title=title, header=header, sections=views, banner=banner,
                                   banner_kind=banner.split(":")[0] if banner else None)


def _render_markdown(title: str, header: str, sections: list[_Section]) -> str:
    parts = [f"# {title}", header]
    for section in sections:
        parts.append(f"## {section.title}")
        if section.note:
            parts.append(section.note)
        if section.image is not None:
            parts.append(f"![{section.title}]({section.image.name})")
        if section.table is not None:
            parts.append(markdown_table(section.table.header, section.table.rows, section.table.text_columns))
    return "\n\n".join(parts) + "\n"


def _write_plots(rankings: pd.DataFrame, protocol: RankingProtocol, out_dir: Path) -> dict[str, Path]:
    plots = {"psnr_vs_runtime": _save(psnr_runtime_figure(rankings, protocol), out_dir / "psnr_vs_runtime.png")}
    for track in protocol.tracks:
        plots[f"scores_{track.name}"] = _save(scores_figure(rankings, protocol, track.name),
                                              out_dir / f"scores_{track.name}.png")
    return plots


def write_report(
    run_dir: str | Path, protocol: RankingProtocol | str | Path, out_dir: str | Path | None = None
) -> ReportPaths:
    """Write report.html, report.md and plots of ``run_dir``'s rankings under ``protocol`` (module doc)."""
    protocol = protocol if isinstance(protocol, RankingProtocol) else load_protocol(protocol)
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else report_dir(run_dir, protocol)
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = read_run(run_dir)
    rankings = rankings_for(tables, protocol)
    plots = _write_plots(rankings, protocol, out_dir) if all(map(importlib.util.find_spec, PLOT_PACKAGES)) else {}
    title = f"{protocol.name} results — run {tables.run_info.get('run_id', run_dir.name)}"
    integrity = tables.integrity
    run_info = {**tables.run_info, "integrity": integrity.summary()} if integrity is not None else tables.run_info
    sections = _sections(rankings, run_info, protocol, plots, tables.submissions, tables.splits)
    banner = integrity.banner() if integrity is not None else None  # tampered / split changed / unverified
    header = header_line(tables.submissions, tables.run_info, protocol)
    markdown = _render_markdown(title, header, sections)
    paths = ReportPaths(out_dir / "report.html", out_dir / "report.md", tuple(plots.values()))
    paths.html.write_text(_render_html(title, header, sections, banner), encoding="utf-8")
    paths.markdown.write_text(f"{banner}\n\n{markdown}" if banner else markdown, encoding="utf-8")
    return paths
