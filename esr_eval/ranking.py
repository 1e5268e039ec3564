"""Ranking: a run folder plus a protocol (``esr_eval.protocols``) -> the ``rankings`` table. Pure pandas/numpy.

Contract
- ``metrics_table(run_dir | RunTables, protocol)``: one row per submission of the run with its
  ids, ``status``, ``val_psnr_db`` / ``test_psnr_db`` (the splits the protocol maps to the valid
  and test roles), one column per protocol metric (``splits.*`` metrics combined over the two
  roles, plus ``val_<metric>`` / ``test_<metric>``), and ``timing_protocol`` when recorded.
- ``find_baseline(metrics, protocol) -> BaselineChoice``: the baseline row, by the protocol's
  identity (the one row whose ``name`` matches ``identity.name_pattern`` and whose measured
  figures reproduce every published one) or, after ``protocol.with_baseline(id)``, the named row,
  verified against the published figures. Raises ``BaselineError`` (naming the fix:
  ``--baseline SUBMISSION_ID``, or evaluating the baseline model in the run) when the identity
  matches no row while the scores need the baseline's run figures, matches several rows, or the
  named row fails verification without ``accept_mismatch``; a ranking never scores against
  another model than the rules name.
- ``rank(metrics, protocol, samples=None)``: the ``rankings`` table, one row per input row, none
  dropped. Per row: ``role`` (entry | baseline | reference), ``gate_pass`` / ``gate_reason``, each
  metric value, ``metric_rank_<m>`` for every ranked metric, ``metric_score_<m>`` (exp-ratio
  score) for metrics of exp_ratio tracks, and per track ``score_<track>`` and ``rank_<track>``
  (nullable Int64). ``excluded_reason`` says why a row is not ranked in some track (failed
  status, baseline/reference role, PSNR gate, missing metric or baseline value); null when the
  row is ranked in every track. On every row, the same: ``baseline_submission_id`` (null when
  the run holds none), ``baseline_selection`` (``identity`` | ``explicit`` |
  ``explicit-unverified`` | ``absent``) and ``baseline_check`` (what was compared);
  ``baseline_summary(rankings)`` says it in one line.
- Ranks are min-style (ties share the smallest rank: 1, 2, 2, 4), as the published 2022 rank
  sums use, over the rows ranked in that track; lower score is better in every track.
  ``rank_sum`` tracks sum the metric ranks; ``exp_ratio`` tracks sum
  ``weight * exp(factor * m / m_baseline)`` (``exp(factor * m_baseline / m)`` for a
  higher-is-better metric).
- Confidence: with ``samples`` (per image and repeat ``latency_ms``) a fixed-seed bootstrap
  resamples images, then repeats within each image, recomputes each split's runtime with the
  submission's timing-protocol statistic, and re-scores and re-ranks every replicate. It adds
  ``<runtime metric>_ci_low/high``, ``score_<track>_ci_low/high``, ``rank_<track>_ci_low/high``
  and ``tied_with_<track>`` (comma-separated submission_ids of ranked rows whose rank intervals
  overlap; "" when none). Without samples these columns are null.
- ``rank_run(run_dir, protocol)`` writes ``<run_dir>/rankings/part-00000.parquet`` through
  ``esr_eval.records.write_rankings`` (the table's definition, ``records.RANKINGS_COLUMNS``, and its
  one atomic writer; a re-rank replaces it, the ``protocol`` column names the rules used). Its
  Parquet metadata records the rules' name, ``rules_sha256(protocol)`` and the run's
  ``records.run_sha256`` (``records.RANKINGS_METADATA``).
- ``rankings_for(tables, protocol)``: ``rankings/`` as stored when ``stored_rankings`` finds it made
  by the same rules (name, ``rules_sha256`` and, when the table has it, ``rules_version``) from the
  run as it is now; else the run ranked again (nothing written). The report uses it, so the
  bootstrap runs once per run and a report never disagrees with ``rankings/``.
- ``fitting_rules(split_names, submissions) -> RulesChoice`` (``--rules auto``): the rules that fit a run
  measured on ``split_names``: ``demo`` for the embedded split alone (or none); else the latest built-in
  challenge rules (by name) whose valid and test splits are both in the run; else ``demo`` on the run's
  own splits (``with_splits``: the first split as valid, the second, or the first again, as test), with a
  one-line ``note`` naming the challenge whose PSNR gates need other splits. Where ``demo`` is chosen and
  its gate's reference submission has no ``ok`` row in ``submissions``, the gate is dropped (ranked
  ungated, said in the description and the note), so such a run never ranks nobody without a word.
- Integrity: ``esr_eval.records.read_run`` reads only the part files the run's ledger records, from
  the bytes it verified (``esr_eval.records.verify_run``); ``RunTables.integrity`` says what it found.
  ``with_integrity(rankings, integrity)`` (``rank_tables`` applies it) adds, on every
  row, ``run_integrity`` (verified | unverified | tampered | split-changed | tampered+split-changed)
  and ``run_integrity_findings``, and per row ``integrity`` (which of its parts were not read, and
  why; null when all were), also prefixed to ``excluded_reason`` where the row is not ranked;
  ``rank_run`` records the summary in the Parquet metadata ``esr_eval.integrity``.
- Imports neither torch nor Ray (directly or through other esr_eval modules): the timing protocols'
  statistics come from the torch-free ``esr_eval.settings``.
Units: PSNR dB, runtime ms, memory MB, params/FLOPs/activations counts (raw, unrounded).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from esr_eval.protocols import (
    PSNR_COLUMN_BY_ROLE,
    ROLES,
    BaselineIdentity,
    Gate,
    RankingProtocol,
    builtin_protocol_names,
    load_protocol,
)
from esr_eval.records import RunIntegrity, RunTables, read_rankings, read_run, run_sha256, write_rankings
from esr_eval.settings import PROTOCOLS as TIMING_PROTOCOLS

__all__ = [
    "BaselineChoice",
    "BaselineError",
    "GateThreshold",
    "RulesChoice",
    "RunTables",
    "baseline_summary",
    "find_baseline",
    "fitting_rules",
    "gate_thresholds",
    "load_protocol",
    "metrics_table",
    "rank",
    "rank_run",
    "rank_tables",
    "rankings_for",
    "rules_sha256",
    "runtime_metric_names",
    "stored_rankings",
    "with_integrity",
]

ROLE_PREFIX = {"valid": "val", "test": "test"}
ID_COLUMNS = ("submission_id", "team_id", "name")
# Unranked rows follow the ranked ones in this order, then by submission_id.
ROLE_ORDER = {"baseline": 0, "reference": 1, "entry": 2}
# How a timing protocol turns one split's samples into its headline runtime_ms, for runs that do
# not record it in submissions.runtime_statistic: the timing protocols of esr_eval.settings, and the
# retired esr-default-v1 (v2 in file order), which settings no longer defines.
RUNTIME_STATISTIC_BY_TIMING_PROTOCOL = {
    "esr-default-v1": "mean_of_image_medians",
    **{timing.protocol_id: timing.headline for timing in TIMING_PROTOCOLS.values()},
}


def with_integrity(rankings: pd.DataFrame, integrity: RunIntegrity | None) -> pd.DataFrame:
    """``rankings`` with the run's integrity on every row (module doc, "Integrity")."""
    out = rankings.copy()
    if integrity is None:
        return out
    out["run_integrity"] = integrity.status
    out["run_integrity_findings"] = "; ".join(integrity.findings() + list(integrity.split_changes)) or None
    affected = integrity.affected()
    notes = [("integrity: " + ", ".join(affected[sid])) if sid in affected else None
             for sid in out["submission_id"].astype(str)]
    out["integrity"] = pd.Series(notes, index=out.index, dtype="object")
    reasons = out["excluded_reason"]
    out["excluded_reason"] = pd.Series(
        [f"{note}; {reason}" if note and isinstance(reason, str) else reason for note, reason in zip(notes, reasons)],
        index=out.index, dtype="object")
    return out


def _require_columns(table: pd.DataFrame, columns: Any, what: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        present = ", ".join(map(str, table.columns))
        raise ValueError(f"{what} lacks column(s) {', '.join(missing)}; columns present: {present}")


def _unique_index(table: pd.DataFrame, what: str) -> pd.DataFrame:
    duplicated = table["submission_id"][table["submission_id"].duplicated()].unique()
    if len(duplicated):
        raise ValueError(
            f"{what}: submission_id(s) {', '.join(map(str, duplicated))} appear more than once; expected one row each"
        )
    return table.set_index("submission_id")


def metrics_table(run: str | Path | RunTables, protocol: RankingProtocol) -> pd.DataFrame:
    """One row per submission: ids, status, gate PSNRs and every protocol metric (see module doc)."""
    tables = run if isinstance(run, RunTables) else read_run(run)
    where = f"run {tables.run_dir}" if tables.run_dir else "run"
    subs = tables.submissions
    _require_columns(subs, ID_COLUMNS + ("status",), f"{where}: submissions")
    subs = _unique_index(subs, f"{where}: submissions")
    kept = [c for c in ("run_id", "team_id", "name", "status", "error", "timing_protocol", "runtime_statistic")
            if c in subs.columns]
    out = subs[kept].copy()
    splits = tables.splits
    _require_columns(splits, ("submission_id", "split"), f"{where}: splits")
    by_role = {
        role: _unique_index(
            splits[splits["split"] == protocol.split_for(role)], f"{where}: splits[{protocol.split_for(role)}]"
        )
        for role in ROLES
    }

    def split_column(role: str, column: str) -> pd.Series:
        rows = by_role[role]
        if column not in rows.columns:
            if len(splits):
                raise ValueError(f"{where}: splits lacks column {column!r} that protocol {protocol.name} reads")
            return pd.Series(np.nan, index=out.index)
        return rows[column].astype("float64").reindex(out.index)

    for role in ROLES:
        out[PSNR_COLUMN_BY_ROLE[role]] = split_column(role, "psnr_db")
    for metric in protocol.metrics:
        if metric.table == "submissions":
            if metric.column not in subs.columns:
                raise ValueError(
                    f"{where}: submissions lacks column {metric.column!r} "
                    f"(protocol {protocol.name}, metric {metric.name})"
                )
            out[metric.name] = subs[metric.column].astype("float64")
            continue
        per_role = pd.concat({role: split_column(role, metric.column) for role in ROLES}, axis=1)
        for role in ROLES:
            out[f"{ROLE_PREFIX[role]}_{metric.name}"] = per_role[role]
        out[metric.name] = getattr(per_role, metric.combine)(axis=1, skipna=False)
    return out.reset_index()


@dataclass(frozen=True)
class _Scores:
    """Scoring of B replicates of n rows (point estimate: B = 1). Arrays are (B, n); NaN = not defined."""

    metric_ranks: Mapping[str, np.ndarray]
    metric_scores: Mapping[str, np.ndarray]
    track_scores: Mapping[str, np.ndarray]
    track_ranks: Mapping[str, np.ndarray]


def _min_rank(values: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """Min-style ranks along axis 1 among ``eligible`` columns; NaN elsewhere."""
    masked = np.where(eligible[None, :], values, np.inf)
    ranks = rankdata(masked, method="min", axis=1).astype("float64")
    ranks[:, ~eligible] = np.nan
    return ranks


def _exp_score(values: np.ndarray, baseline: np.ndarray, better: str, factor: float) -> np.ndarray:
    ratio = values / baseline[:, None] if better == "lower" else baseline[:, None] / values
    return np.exp(factor * ratio)


def _score(
    values: Mapping[str, np.ndarray],
    baseline: Mapping[str, np.ndarray],
    rankable: np.ndarray,
    track_eligible: Mapping[str, np.ndarray],
    protocol: RankingProtocol,
) -> _Scores:
    metric_ranks = {}
    for name in protocol.ranked_metric_names:
        signed = values[name] if protocol.metric(name).better == "lower" else -values[name]
        metric_ranks[name] = _min_rank(signed, rankable & ~np.isnan(values[name][0]))
    exp_metrics = {m for t in protocol.tracks if t.formula == "exp_ratio" for m in t.metric_names}
    metric_scores = {
        name: _exp_score(values[name], baseline[name], protocol.metric(name).better, protocol.exp_ratio_factor)
        for name in protocol.ranked_metric_names
        if name in exp_metrics
    }
    track_scores, track_ranks = {}, {}
    for track in protocol.tracks:
        terms = metric_ranks if track.formula == "rank_sum" else metric_scores
        score = sum(weight * terms[name] for name, weight in track.weights)
        if track.formula == "rank_sum":
            score = np.where(track_eligible[track.name][None, :], score, np.nan)
        track_scores[track.name] = score
        track_ranks[track.name] = _min_rank(score, track_eligible[track.name])
    return _Scores(metric_ranks, metric_scores, track_scores, track_ranks)


class BaselineError(ValueError):
    """The run's baseline cannot be established; the message names the fix."""


@dataclass(frozen=True)
class BaselineChoice:
    """The baseline row of a metrics table (``index`` None when the run holds none), how it was
    chosen (``selection``: identity | explicit | explicit-unverified | absent) and what was compared."""

    index: int | None
    submission_id: str | None
    selection: str
    check: str


def _list_ids(table: pd.DataFrame, mask: np.ndarray) -> str:
    return ", ".join(map(str, table["submission_id"][mask])) or "none"


def _reproduces_figures(table: pd.DataFrame, identity: BaselineIdentity) -> np.ndarray:
    """Per row: whether its measured figures reproduce every published figure of ``identity``."""
    return np.array([identity.verify(row)[0] for _, row in table.iterrows()], dtype=bool)


def _explicit_baseline(table: pd.DataFrame, protocol: RankingProtocol) -> BaselineChoice:
    baseline = protocol.baseline
    identity = baseline.identity
    hit = np.flatnonzero((table["submission_id"].astype(str) == baseline.submission_id).to_numpy())
    if len(hit) == 0:
        raise BaselineError(
            f"--baseline {baseline.submission_id}: no such submission in this run; "
            f"submissions: {_list_ids(table, np.ones(len(table), dtype=bool))}"
        )
    verified, check = identity.verify(table.iloc[hit[0]])
    if verified:
        return BaselineChoice(int(hit[0]), baseline.submission_id, "explicit", check)
    if baseline.accept_mismatch:
        return BaselineChoice(int(hit[0]), baseline.submission_id, "explicit-unverified", check)
    raise BaselineError(
        f"protocol {protocol.name}: --baseline {baseline.submission_id} is not the rules' baseline "
        f"{identity.describe()}: {check}. Taking it would rank the run against another model than the "
        f"rules name. Name the submission that is {identity.architecture} (--baseline SUBMISSION_ID), or, "
        f"to score against {baseline.submission_id} anyway, add --accept-baseline-mismatch (the rankings record it)"
    )


def _absent_baseline_error(table: pd.DataFrame, protocol: RankingProtocol) -> BaselineError:
    """The refusal of a run holding no submission of the baseline's identity, naming near misses and the fix."""
    identity = protocol.baseline.identity
    named = identity.name_mask(table).to_numpy()
    same_figures = _reproduces_figures(table, identity)
    hints = "".join(
        f" {table['submission_id'].iloc[i]} is named like it, but {identity.verify(table.iloc[i])[1]}."
        for i in np.flatnonzero(named)
    )
    if same_figures.any():
        hints += f" Its published complexity under another name: {_list_ids(table, same_figures)}."
    return BaselineError(
        f"protocol {protocol.name}: its baseline {identity.describe()} is not in this run, and the scores "
        f"need its figures from the run.{hints} Fix: evaluate that model in this run (the official layout "
        f"ships it as team 00) and rank again, or name the submission that is {identity.architecture} "
        "with --baseline SUBMISSION_ID (verified against the published figures)"
    )


def find_baseline(table: pd.DataFrame, protocol: RankingProtocol) -> BaselineChoice:
    """The baseline row of ``table`` (a metrics table) under ``protocol`` (module doc); raises BaselineError."""
    if protocol.baseline.submission_id is not None:
        return _explicit_baseline(table, protocol)
    identity = protocol.baseline.identity
    matched = identity.name_mask(table).to_numpy() & _reproduces_figures(table, identity)
    hits = np.flatnonzero(matched)
    if len(hits) > 1:
        raise BaselineError(
            f"protocol {protocol.name}: {_list_ids(table, matched)} all match the baseline "
            f"{identity.describe()}; choose one with --baseline SUBMISSION_ID"
        )
    if len(hits) == 1:
        row = table.iloc[hits[0]]
        check = f"name {row['name']} matches /{identity.name_pattern}/; {identity.verify(row)[1]}"
        return BaselineChoice(int(hits[0]), str(row["submission_id"]), "identity", check)
    if protocol.needs_run_baseline:
        raise _absent_baseline_error(table, protocol)
    constants = protocol.baseline.source == "constants"
    why = "its figures come from the constants" if constants else "no track scores against it"
    return BaselineChoice(None, None, "absent", f"no {identity.describe()} in this run; {why}")


def baseline_summary(rankings: pd.DataFrame) -> str:
    """One line: which submission the rankings took as baseline, and how (from its baseline_* columns)."""
    if not len(rankings):
        return "no submissions"
    row = rankings.iloc[0]
    taken = row["baseline_submission_id"] if isinstance(row["baseline_submission_id"], str) else "none"
    return f"{taken} ({row['baseline_selection']}: {row['baseline_check']})"


def _roles(
    table: pd.DataFrame, protocol: RankingProtocol, choice: BaselineChoice
) -> tuple[np.ndarray, list[str | None]]:
    """(role, reason not ranked) per row; the baseline wins over a reference match."""
    role = np.full(len(table), "entry", dtype=object)
    reason: list[str | None] = [None] * len(table)
    for reference in protocol.references:
        for i in np.flatnonzero(reference.match.mask(table).to_numpy()):
            role[i], reason[i] = "reference", reference.reason
    if choice.index is not None:
        role[choice.index] = "baseline"
        reason[choice.index] = None if protocol.baseline.ranked else "baseline: scored for reference, not ranked"
    return role, reason


@dataclass(frozen=True)
class GateThreshold:
    """The PSNR a role must reach, in dB (NaN when undefined, ``problem`` then says why)."""

    role: str
    threshold_db: float
    explanation: str
    problem: str | None


def gate_thresholds(table: pd.DataFrame, protocol: RankingProtocol) -> tuple[GateThreshold, ...]:
    """Each gate's threshold on ``table`` (a metrics or rankings table): the constant, or the
    reference submission's PSNR (2-decimal rounded under ``gate_rounding: 2dp``) + margin."""
    rounded = protocol.gate_rounding == "2dp"
    thresholds = []
    for gate in protocol.gates:
        column = PSNR_COLUMN_BY_ROLE[gate.role]
        if gate.min_psnr_db is not None:
            thresholds.append(GateThreshold(gate.role, gate.min_psnr_db, "", None))
            continue
        hit = gate.reference.mask(table).to_numpy()
        if hit.sum() != 1:
            problem = f"gate reference ({gate.reference.describe()}) matches {hit.sum()} submissions, needs 1"
            thresholds.append(GateThreshold(gate.role, np.nan, "", problem))
            continue
        reference = table[hit].iloc[0]
        if reference["status"] != "ok" or pd.isna(reference[column]):
            problem = f"gate reference {reference['submission_id']} has no {gate.role} PSNR"
            thresholds.append(GateThreshold(gate.role, np.nan, "", problem))
            continue
        reference_db = round(float(reference[column]), 2) if rounded else float(reference[column])
        explanation = f"{reference['submission_id']} {reference_db:.{2 if rounded else 4}f} + {gate.margin_db:g}"
        thresholds.append(GateThreshold(gate.role, reference_db + gate.margin_db, explanation, None))
    return tuple(thresholds)


def _gates(table: pd.DataFrame, protocol: RankingProtocol) -> tuple[np.ndarray, list[str], list[str]]:
    """(gate_pass, gate_reason, failed parts of the reason) per row under the protocol's gates and rounding."""
    n = len(table)
    passed = np.ones(n, dtype=bool)
    parts: list[list[str]] = [[] for _ in range(n)]
    failed: list[list[str]] = [[] for _ in range(n)]
    rounded = protocol.gate_rounding == "2dp"
    for gate in gate_thresholds(table, protocol):
        column = PSNR_COLUMN_BY_ROLE[gate.role]
        psnr_db = table[column].to_numpy(dtype="float64")
        compared_db = np.round(psnr_db, 2) if rounded else psnr_db
        limit_db = round(gate.threshold_db, 2) if rounded else gate.threshold_db
        ok = compared_db >= limit_db
        passed &= ok
        limit = f"{limit_db:.2f}" if rounded else f"{limit_db:.4f}"
        if gate.explanation:
            limit = f"{limit} ({gate.explanation})"
        for i in range(n):
            if gate.problem is not None:
                text = f"{gate.role} gate undefined: {gate.problem}"
            elif np.isnan(psnr_db[i]):
                text = f"{gate.role} PSNR missing"
            else:
                shown = f"{compared_db[i]:.2f} (exact {psnr_db[i]:.4f})" if rounded else f"{psnr_db[i]:.4f}"
                text = f"{gate.role} {shown} {'>=' if ok[i] else '<'} {limit} dB"
            parts[i].append(text)
            if not ok[i]:
                failed[i].append(text)
    reasons = ["; ".join(p) if p else "no PSNR gate" for p in parts]
    return passed, reasons, ["; ".join(f) for f in failed]


def _baseline_values(
    table: pd.DataFrame, values: Mapping[str, np.ndarray], role: np.ndarray, protocol: RankingProtocol
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Baseline value per exp-ratio metric as a (B,) array, and a problem text per metric lacking one."""
    exp_metrics = [m for m in protocol.ranked_metric_names if any(
        t.formula == "exp_ratio" and m in t.metric_names for t in protocol.tracks)]
    replicates = next(iter(values.values())).shape[0] if values else 1
    baseline, problems = {}, {}
    index = np.flatnonzero(role == "baseline")
    for name in exp_metrics:
        if protocol.baseline.source == "constants":
            baseline[name] = np.full(replicates, protocol.baseline.constant(name))
            continue
        if table["status"].iloc[index[0]] != "ok":
            row = table.iloc[index[0]]
            problems[name] = f"baseline {row['submission_id']} has status {row['status']}"
        elif np.isnan(values[name][0, index[0]]):
            problems[name] = f"baseline {table['submission_id'].iloc[index[0]]} has no {name}"
        baseline[name] = np.full(replicates, np.nan) if name in problems else values[name][:, index[0]]
    return baseline, problems


def runtime_metric_names(protocol: RankingProtocol) -> tuple[str, ...]:
    """Metrics read from ``splits.runtime_ms``: the ones the bootstrap resamples from ``samples``."""
    return tuple(m.name for m in protocol.metrics if m.table == "splits" and m.column == "runtime_ms")


def _runtime_replicates(
    latency_ms: np.ndarray, image_idx: np.ndarray, statistic: str, rng: np.random.Generator
) -> np.ndarray:
    """(B,) bootstrap runtimes of one submission on one split.

    ``latency_ms`` is (images, repeats), NaN-padded where an image has fewer repeats; ``image_idx``
    (B, images) are the resampled images (shared by all submissions); repeats are resampled with
    replacement within each drawn image.
    """
    resamples = image_idx.shape[0]
    n_repeats = latency_ms.shape[1]
    counts = np.sum(~np.isnan(latency_ms), axis=1)
    drawn_counts = counts[image_idx][..., None]
    repeat_idx = np.floor(rng.random(image_idx.shape + (n_repeats,)) * drawn_counts).astype(np.int64)
    drawn = latency_ms[image_idx[..., None], np.minimum(repeat_idx, n_repeats - 1)]
    if np.all(counts == n_repeats):
        if statistic == "mean":
            return drawn.reshape(resamples, -1).mean(axis=1)
        return np.median(drawn, axis=2).mean(axis=1)
    drawn = np.where(np.arange(n_repeats)[None, None, :] < drawn_counts, drawn, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if statistic == "mean":
            return np.nanmean(drawn.reshape(resamples, -1), axis=1)
        return np.nanmean(np.nanmedian(drawn, axis=2), axis=1)


def _bootstrap_values(
    table: pd.DataFrame, samples: pd.DataFrame, values: Mapping[str, np.ndarray], protocol: RankingProtocol
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(B, n) replicates of every metric (runtimes resampled, the rest fixed) and, per runtime
    metric, which rows had samples on both roles.

    Paired bootstrap: all submissions ran the same images, so one draw of images per split and
    replicate is shared by every submission; repeats are drawn per submission.
    """
    settings = protocol.confidence
    _require_columns(samples, ("submission_id", "split", "image", "repeat", "latency_ms"), "samples")
    replicate_values = {name: np.repeat(v, settings.resamples, axis=0) for name, v in values.items()}
    runtime_metrics = [m for m in protocol.metrics if m.name in runtime_metric_names(protocol)]
    if not runtime_metrics:
        return replicate_values, {}
    if "timing_protocol" not in table.columns:
        raise ValueError("metrics table lacks column 'timing_protocol', needed to bootstrap runtimes from samples")
    rng = np.random.default_rng(settings.seed)
    ids = table["submission_id"].astype(str).to_numpy()
    split_names = list(dict.fromkeys(protocol.split_for(role) for role in ROLES))
    runtime_by_split: dict[str, dict[str, np.ndarray]] = {}
    for split in split_names:
        rows = samples[samples["split"] == split]
        cube = rows.pivot_table(
            index=["submission_id", "image"], columns="repeat", values="latency_ms", aggfunc="first"
        )
        images = sorted(rows["image"].unique())
        image_idx = rng.integers(0, len(images), size=(settings.resamples, len(images))) if images else None
        runtime_by_split[split] = {}
        for i in np.argsort(ids, kind="stable"):
            if image_idx is None or ids[i] not in cube.index.get_level_values(0):
                continue
            timing = table["timing_protocol"].iloc[i]
            recorded = table["runtime_statistic"].iloc[i] if "runtime_statistic" in table.columns else None
            statistic = recorded if isinstance(recorded, str) else RUNTIME_STATISTIC_BY_TIMING_PROTOCOL.get(timing)
            if statistic is None:
                raise ValueError(
                    f"submissions.timing_protocol of {ids[i]} is {timing!r}; ranking.py knows "
                    f"{', '.join(RUNTIME_STATISTIC_BY_TIMING_PROTOCOL)} (RUNTIME_STATISTIC_BY_TIMING_PROTOCOL, "
                    "from esr_eval.settings): define that protocol there"
                )
            latency_ms = cube.loc[ids[i]].reindex(images).to_numpy(dtype="float64")
            runtime_by_split[split][ids[i]] = _runtime_replicates(latency_ms, image_idx, statistic, rng)
    sampled = {}
    for metric in runtime_metrics:
        has_samples = np.zeros(len(table), dtype=bool)
        for i, sid in enumerate(ids):
            per_role = [runtime_by_split[protocol.split_for(role)].get(sid) for role in ROLES]
            if np.isnan(values[metric.name][0, i]) or any(r is None for r in per_role):
                continue
            stacked = pd.DataFrame(dict(zip(ROLES, per_role)))
            replicate_values[metric.name][:, i] = getattr(stacked, metric.combine)(axis=1).to_numpy()
            has_samples[i] = True
        sampled[metric.name] = has_samples
    return replicate_values, sampled


def _excluded_reasons(
    table: pd.DataFrame,
    role_reason: list[str | None],
    gate_failures: list[str],
    rankable: np.ndarray,
    track_problems: list[list[str]],
) -> list[str | None]:
    reasons: list[str | None] = []
    for i in range(len(table)):
        parts = []
        status = table["status"].iloc[i]
        if status != "ok":
            error = table["error"].iloc[i] if "error" in table.columns else None
            first_line = str(error).strip().splitlines()[0] if isinstance(error, str) and error.strip() else ""
            parts.append(f"status {status}" + (f": {first_line}" if first_line else ""))
        if role_reason[i] is not None:
            parts.append(role_reason[i])
        if status == "ok" and gate_failures[i]:
            parts.append(f"PSNR gate: {gate_failures[i]}")
        if rankable[i]:
            parts.extend(track_problems[i])
        reasons.append("; ".join(parts) if parts else None)
    return reasons


def _track_eligibility(
    table: pd.DataFrame,
    values: Mapping[str, np.ndarray],
    baseline_problems: Mapping[str, str],
    rankable: np.ndarray,
    protocol: RankingProtocol,
) -> tuple[dict[str, np.ndarray], list[list[str]]]:
    """Rows ranked per track, and per row the reasons it misses some tracks."""
    eligible = {}
    missing_by_reason: list[dict[str, list[str]]] = [{} for _ in range(len(table))]
    for track in protocol.tracks:
        ok = rankable.copy()
        for name in track.metric_names:
            absent = np.isnan(values[name][0])
            ok &= ~absent
            for i in np.flatnonzero(absent & rankable):
                missing_by_reason[i].setdefault(f"missing {name}", []).append(track.name)
            if track.formula == "exp_ratio" and name in baseline_problems:
                ok[:] = False
                for i in np.flatnonzero(rankable):
                    reason = f"no baseline {name} ({baseline_problems[name]})"
                    missing_by_reason[i].setdefault(reason, []).append(track.name)
        eligible[track.name] = ok
    problems = [
        [f"{reason} (not ranked in {', '.join(dict.fromkeys(tracks))})" for reason, tracks in row.items()]
        for row in missing_by_reason
    ]
    return eligible, problems


def _int_ranks(ranks: np.ndarray) -> pd.Series:
    return pd.Series(ranks).astype("Int64")


def _add_confidence(
    out: pd.DataFrame,
    point: _Scores,
    replicates: _Scores | None,
    replicate_values: Mapping[str, np.ndarray],
    sampled: Mapping[str, np.ndarray],
    protocol: RankingProtocol,
) -> None:
    alpha = 100.0 * (1.0 - protocol.confidence.level) / 2.0
    n = len(out)
    for name in runtime_metric_names(protocol):
        has_samples = sampled.get(name, np.zeros(n, dtype=bool))
        for suffix, q in (("ci_low", alpha), ("ci_high", 100.0 - alpha)):
            ci = np.percentile(replicate_values[name], q, axis=0) if replicates else np.full(n, np.nan)
            out[f"{name}_{suffix}"] = np.where(has_samples, ci, np.nan)
    for track in protocol.tracks:
        t = track.name
        ranked = ~np.isnan(point.track_ranks[t][0])
        if replicates is None:
            nan = np.full(n, np.nan)
            out[f"score_{t}_ci_low"], out[f"score_{t}_ci_high"] = nan, nan
            out[f"rank_{t}_ci_low"], out[f"rank_{t}_ci_high"] = _int_ranks(nan), _int_ranks(nan)
            out[f"tied_with_{t}"] = pd.Series([None] * n, dtype="object")
            continue
        scores = replicates.track_scores[t]
        out[f"score_{t}_ci_low"] = np.percentile(scores, alpha, axis=0)
        out[f"score_{t}_ci_high"] = np.percentile(scores, 100.0 - alpha, axis=0)
        replicate_ranks = np.nan_to_num(replicates.track_ranks[t])
        rank_low = np.where(ranked, np.percentile(replicate_ranks, alpha, axis=0, method="lower"), np.nan)
        rank_high = np.where(ranked, np.percentile(replicate_ranks, 100.0 - alpha, axis=0, method="higher"), np.nan)
        out[f"rank_{t}_ci_low"], out[f"rank_{t}_ci_high"] = _int_ranks(rank_low), _int_ranks(rank_high)
        order = np.argsort(point.track_ranks[t][0], kind="stable")
        ids = out["submission_id"].astype(str).to_numpy()
        tied = []
        for i in range(n):
            if not ranked[i]:
                tied.append(None)
                continue
            overlap = ranked & (rank_low <= rank_high[i]) & (rank_low[i] <= rank_high)
            overlap[i] = False
            tied.append(", ".join(ids[j] for j in order if overlap[j]))
        out[f"tied_with_{t}"] = pd.Series(tied, dtype="object")


def rank(metrics: pd.DataFrame, protocol: RankingProtocol, samples: pd.DataFrame | None = None) -> pd.DataFrame:
    """The ``rankings`` table for ``metrics`` (see ``metrics_table``) under ``protocol`` (module doc)."""
    table = metrics.reset_index(drop=True)
    _require_columns(table, ID_COLUMNS + ("status",), f"metrics table (protocol {protocol.name})")
    _require_columns(table, protocol.ranked_metric_names, f"metrics table (protocol {protocol.name} ranks these)")
    gated = tuple(PSNR_COLUMN_BY_ROLE[g.role] for g in protocol.gates)
    _require_columns(table, gated, f"metrics table (protocol {protocol.name} gates on these)")
    identified_by = tuple(f.metric for f in protocol.baseline.identity.published)
    _require_columns(table, identified_by, f"metrics table (protocol {protocol.name} identifies its baseline by these)")
    choice = find_baseline(table, protocol)
    role, role_reason = _roles(table, protocol, choice)
    gate_pass, gate_reason, gate_failures = _gates(table, protocol)
    status_ok = (table["status"] == "ok").to_numpy()
    rankable = status_ok & gate_pass & ((role == "entry") | ((role == "baseline") & protocol.baseline.ranked))
    values = {name: table[name].to_numpy(dtype="float64")[None, :] for name in protocol.ranked_metric_names}
    baseline, baseline_problems = _baseline_values(table, values, role, protocol)
    track_eligible, track_problems = _track_eligibility(table, values, baseline_problems, rankable, protocol)
    point = _score(values, baseline, rankable, track_eligible, protocol)

    replicates, replicate_values, sampled = None, values, {}
    if samples is not None and len(samples):
        replicate_values, sampled = _bootstrap_values(table, samples, values, protocol)
        if any(mask.any() for mask in sampled.values()):
            rep_baseline, _ = _baseline_values(table, replicate_values, role, protocol)
            replicates = _score(replicate_values, rep_baseline, rankable, track_eligible, protocol)

    out = pd.DataFrame({"protocol": protocol.name, "rules_version": protocol.version}, index=table.index)
    for column in ("run_id",) + ID_COLUMNS + ("status",):
        if column in table.columns:
            out[column] = table[column]
    out["role"] = role
    out["baseline_submission_id"] = pd.Series([choice.submission_id] * len(table), dtype="object")
    out["baseline_selection"] = choice.selection
    out["baseline_check"] = choice.check
    out["gate_pass"] = gate_pass
    out["gate_reason"] = gate_reason
    shown = [c for c in table.columns if c.endswith("_psnr_db") or c in {m.name for m in protocol.metrics}
             or any(c == f"{p}_{m.name}" for p in ROLE_PREFIX.values() for m in protocol.metrics)]
    for column in shown:
        out[column] = table[column].astype("float64")
    for name, ranks in point.metric_ranks.items():
        out[f"metric_rank_{name}"] = _int_ranks(ranks[0])
    for name, scores in point.metric_scores.items():
        out[f"metric_score_{name}"] = scores[0]
    for track in protocol.tracks:
        out[f"score_{track.name}"] = point.track_scores[track.name][0]
        out[f"rank_{track.name}"] = _int_ranks(point.track_ranks[track.name][0])
    _add_confidence(out, point, replicates, replicate_values, sampled, protocol)
    out["excluded_reason"] = pd.Series(
        _excluded_reasons(table, role_reason, gate_failures, rankable, track_problems), dtype="object"
    )
    main_rank = out[f"rank_{protocol.main_track}"].fillna(np.iinfo(np.int64).max).to_numpy()
    role_order = out["role"].map(ROLE_ORDER).to_numpy()
    order = np.lexsort((out["submission_id"].astype(str).to_numpy(), role_order, main_rank))
    return out.iloc[order].reset_index(drop=True)


def rules_sha256(protocol: RankingProtocol) -> str:
    """sha256 of the rules as applied: every field of ``protocol`` (overrides included) but its file's path."""
    rules = dataclasses.asdict(dataclasses.replace(protocol, source_path=""))
    return hashlib.sha256(json.dumps(rules, sort_keys=True, default=str).encode()).hexdigest()


def rank_tables(tables: RunTables, protocol: RankingProtocol) -> pd.DataFrame:
    """The rankings of a run's tables under ``protocol``, with the run's integrity on every row."""
    return with_integrity(rank(metrics_table(tables, protocol), protocol, samples=tables.samples), tables.integrity)


def _made_from(protocol: RankingProtocol, tables: RunTables) -> dict[str, str]:
    """The Parquet metadata that says what a ranking was made from (``records.RANKINGS_METADATA``)."""
    made_from = {"esr_eval.protocol": protocol.name, "esr_eval.protocol_source": protocol.source_path,
                 "esr_eval.rules_sha256": rules_sha256(protocol), "esr_eval.run_sha256": run_sha256(tables.run_dir)}
    if tables.integrity is not None:
        made_from["esr_eval.integrity"] = json.dumps(tables.integrity.summary())
    return made_from


def rank_run(run_dir: str | Path, protocol: RankingProtocol | str | Path) -> pd.DataFrame:
    """Rank a run folder and write ``<run_dir>/rankings/part-00000.parquet`` atomically; returns the table."""
    protocol = protocol if isinstance(protocol, RankingProtocol) else load_protocol(protocol)
    tables = read_run(run_dir)
    rankings = rank_tables(tables, protocol)
    write_rankings(Path(run_dir), rankings, _made_from(protocol, tables))
    return rankings


def stored_rankings(tables: RunTables, protocol: RankingProtocol) -> pd.DataFrame | None:
    """``rankings/`` of the run when it was made under ``protocol`` (same name and ``rules_sha256``, and
    ``rules_version`` where the table has that column) from the run as it is now (same
    ``records.run_sha256``); else None."""
    stored = read_rankings(tables.run_dir) if tables.run_dir is not None else None
    if stored is None:
        return None
    wanted = _made_from(protocol, tables)
    keys = ("esr_eval.protocol", "esr_eval.rules_sha256", "esr_eval.run_sha256")
    same_version = "rules_version" not in stored.table.columns or (
        stored.table["rules_version"].astype(str) == str(protocol.version)).all()
    return stored.table if same_version and all(stored.metadata.get(k) == wanted[k] for k in keys) else None


def rankings_for(tables: RunTables, protocol: RankingProtocol) -> pd.DataFrame:
    """``rankings/`` when it holds this run ranked under ``protocol`` (:func:`stored_rankings`), else
    the run ranked again now (:func:`rank_tables`; nothing written)."""
    stored = stored_rankings(tables, protocol)
    return stored if stored is not None else rank_tables(tables, protocol)


AUTO_FALLBACK_RULES = "demo"  # --rules auto where no challenge's splits are in the run


@dataclass(frozen=True)
class RulesChoice:
    """The rules ``--rules auto`` picked, and ``note``: one line saying what could not apply (None: nothing)."""

    protocol: RankingProtocol
    note: str | None


def _ungated_without_reference(protocol: RankingProtocol, submissions: pd.DataFrame) -> tuple[RankingProtocol, str]:
    """``protocol`` without the gates whose reference submission has no ``ok`` row in ``submissions``, and
    what that means in words ("" when every gate stands)."""
    ok = submissions[submissions["status"].astype(str) == "ok"] if len(submissions) else submissions
    absent = [gate for gate in protocol.gates if gate.reference is not None and gate.reference.mask(ok).sum() != 1]
    if not absent:
        return protocol, ""
    why = f"ungated (the gate's reference, {absent[0].reference.describe()}, has no ok row in this run)"
    kept = tuple(gate for gate in protocol.gates if gate not in absent)
    return dataclasses.replace(protocol, gates=kept, description=f"{protocol.description} Here: {why}."), why


def _gate_words(gate: Gate) -> str:
    threshold = (f"{gate.min_psnr_db:g} dB" if gate.min_psnr_db is not None
                 else f"the PSNR of {gate.reference.describe()} + {gate.margin_db:g} dB")
    return f"{gate.role} PSNR >= {threshold}"


def fitting_rules(split_names: Any, submissions: pd.DataFrame) -> RulesChoice:
    """``--rules auto``: the rules that fit a run measured on ``split_names`` (module doc); ``submissions``
    (columns submission_id, team_id, name, status) tells whether the demo gate's reference was measured."""
    present = [str(name) for name in dict.fromkeys(split_names)]
    demo = load_protocol(AUTO_FALLBACK_RULES)
    challenges = [load_protocol(name) for name in builtin_protocol_names() if name != AUTO_FALLBACK_RULES]
    fitting = [rules for rules in challenges if all(rules.split_for(role) in present for role in ROLES)]
    if fitting:
        return RulesChoice(max(fitting, key=lambda rules: rules.name), None)
    if set(present) <= {demo.split_for("valid")}:
        protocol, ungated = _ungated_without_reference(demo, submissions)
        return RulesChoice(protocol, f"demo rules for the embedded split, {ungated}" if ungated else None)
    nearest = max(challenges, key=lambda rules: (sum(rules.split_for(role) in present for role in ROLES), rules.name))
    valid, test = present[0], present[min(1, len(present) - 1)]
    protocol, ungated = _ungated_without_reference(demo.with_splits(valid=valid, test=test), submissions)
    on = valid if valid == test else f"{valid} (valid) and {test} (test)"
    gate = ungated or ("gated: " + "; ".join(map(_gate_words, protocol.gates)) if protocol.gates else "ungated")
    return RulesChoice(protocol, (
        f"the PSNR gates of {nearest.name} need splits {nearest.split_for('valid')} and {nearest.split_for('test')}; "
        f"this run has {', '.join(present)}: ranked with the {AUTO_FALLBACK_RULES} rules on {on}, {gate}"))
