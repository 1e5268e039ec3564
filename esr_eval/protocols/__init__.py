"""Ranking protocols: challenge rules as data (one YAML file per year), loaded into frozen records.

Contract
- ``load_protocol(name_or_path) -> RankingProtocol``: a built-in name (``ntire2022``, ``ntire2024``,
  ``ntire2025``, ``ntire2026``, ``demo``; the YAML files beside this module) or a path to a YAML
  file of the same shape. Every field is validated on load; an unknown key fails with the file,
  the field path and a "did you mean" hint, so a typo never silently changes a ranking.
- A protocol names, for the ranking stage (``esr_eval.ranking``):
  * ``splits``: which run split stands for the ``valid`` and the ``test`` role
    (``RankingProtocol.with_splits`` remaps them, e.g. from a CLI flag);
  * ``metrics``: each quantity, the run column it reads (``<table>.<column>`` of the run folder),
    how the valid and test values of a ``splits.*`` column combine, and its direction;
  * ``baseline``: what the baseline is, by identity, never by team or submission id: its
    architecture (model class), the regex its submissions' ``name`` matches, and its published
    complexity (``published``: protocol metric -> value and tolerance, 0 = exact; a rounded
    figure gets half a unit of its last published digit); and whether its figures come from the
    same run (``source: run``) or from the published constants in the file (``source:
    constants``). ``RankingProtocol.with_baseline`` names the baseline submission explicitly
    (``--baseline``); the ranking still verifies it against the published figures;
  * ``references``: other entries shown in reports but never ranked;
  * ``gates``: PSNR thresholds per role, absolute (``min_psnr_db``) or relative to a reference
    submission's PSNR on the same split (``reference`` + ``margin_db``), compared exactly or after
    2-decimal rounding (``gate_rounding``);
  * ``tracks``: ``rank_sum`` (sum of min-style ranks of the listed metrics) or ``exp_ratio``
    (Score_m = exp(factor * m / m_baseline), track score = weighted sum), lower is better;
  * ``confidence``: bootstrap resamples, seed and interval level.
Units: PSNR in dB, runtimes in ms, memory in MB (2^20 bytes), params/FLOPs/activations as counts.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import yaml

ROLES = ("valid", "test")
PSNR_COLUMN_BY_ROLE = {"valid": "val_psnr_db", "test": "test_psnr_db"}
RUN_TABLES = ("submissions", "splits")
COMBINES = ("mean", "max", "min")
DIRECTIONS = ("lower", "higher")
FORMULAS = ("rank_sum", "exp_ratio")
GATE_ROUNDINGS = ("exact", "2dp")
BASELINE_SOURCES = ("run", "constants")


class ProtocolError(ValueError):
    """A protocol file is malformed; the message names the file, the field and the fix."""


@dataclass(frozen=True)
class Match:
    """Selects submissions by exact ``submission_id``, exact ``team_id`` or a regex searched in ``name``."""

    submission_id: str | None = None
    team_id: str | None = None
    name_pattern: str | None = None

    def describe(self) -> str:
        if self.submission_id is not None:
            return f"submission_id == {self.submission_id!r}"
        if self.team_id is not None:
            return f"team_id == {self.team_id!r}"
        return f"name matches /{self.name_pattern}/"

    def mask(self, table: Any) -> Any:
        """Boolean pandas Series over ``table`` rows (needs columns submission_id, team_id, name)."""
        if self.submission_id is not None:
            return table["submission_id"].astype(str) == self.submission_id
        if self.team_id is not None:
            return table["team_id"].astype(str) == self.team_id
        return table["name"].astype(str).str.contains(self.name_pattern, regex=True, na=False)


@dataclass(frozen=True)
class MetricSpec:
    """One measured quantity: where it is read, how valid/test combine, its direction and display."""

    name: str
    table: str
    column: str
    better: str
    combine: str | None
    label: str
    display_scale: float
    decimals: int

    @property
    def source(self) -> str:
        return f"{self.table}.{self.column}"


def _count(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,g}"


@dataclass(frozen=True)
class PublishedFigure:
    """A published complexity figure of the baseline: protocol metric ``metric`` (a
    ``submissions.*`` count) equals ``value`` within ``tolerance`` (0 = exact)."""

    metric: str
    value: float
    tolerance: float

    @property
    def published_as(self) -> str:
        return f"{_count(self.value)} " + ("exact" if self.tolerance == 0 else f"± {_count(self.tolerance)}")

    def describe(self) -> str:
        return f"{self.metric} {self.published_as}"

    def check(self, measured: Any) -> tuple[bool, str]:
        """(whether ``measured`` reproduces the figure, a text saying what was compared)."""
        if measured is None or math.isnan(float(measured)):
            return False, f"{self.metric} not measured (published {self.published_as})"
        ok = abs(float(measured) - self.value) <= self.tolerance
        verdict = "matches" if ok else "differs from"
        return ok, f"{self.metric} {_count(float(measured))} {verdict} published {self.published_as}"


@dataclass(frozen=True)
class BaselineIdentity:
    """What the baseline model is: its class (``architecture``) and configuration (``variant``),
    the regex its submission's ``name`` matches, and its published complexity."""

    architecture: str
    variant: str
    name_pattern: str
    published: tuple[PublishedFigure, ...]

    def describe(self) -> str:
        variant = f"{self.variant}; " if self.variant else ""
        figures = ", ".join(f.describe() for f in self.published)
        return f"{self.architecture} ({variant}name /{self.name_pattern}/; {figures})"

    def name_mask(self, table: Any) -> Any:
        """Boolean pandas Series over ``table`` rows whose ``name`` matches ``name_pattern``."""
        return table["name"].astype(str).str.contains(self.name_pattern, regex=True, na=False)

    def verify(self, row: Mapping[str, Any]) -> tuple[bool, str]:
        """(whether ``row`` reproduces every published figure, the comparisons as one text);
        ``row`` maps each figure's metric name to its measured value."""
        checks = [figure.check(row[figure.metric]) for figure in self.published]
        return all(ok for ok, _ in checks), "; ".join(text for _, text in checks)


@dataclass(frozen=True)
class Baseline:
    """The baseline's identity and figures source; ``submission_id`` set = named explicitly
    (``RankingProtocol.with_baseline``), ``accept_mismatch`` = taken even if it fails verification."""

    identity: BaselineIdentity
    source: str
    ranked: bool
    constants: tuple[tuple[str, float], ...]
    submission_id: str | None = None
    accept_mismatch: bool = False

    def constant(self, key: str) -> float | None:
        return dict(self.constants).get(key)


@dataclass(frozen=True)
class Reference:
    match: Match
    reason: str


@dataclass(frozen=True)
class Gate:
    """PSNR gate on one role: ``psnr >= min_psnr_db`` or ``psnr >= psnr(reference) + margin_db``."""

    role: str
    min_psnr_db: float | None
    reference: Match | None
    margin_db: float


@dataclass(frozen=True)
class Track:
    name: str
    title: str
    formula: str
    weights: tuple[tuple[str, float], ...]

    @property
    def metric_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.weights)


@dataclass(frozen=True)
class ConfidenceSettings:
    resamples: int
    seed: int
    level: float


@dataclass(frozen=True)
class RankingProtocol:
    name: str
    description: str
    source_path: str
    splits: tuple[tuple[str, str], ...]
    metrics: tuple[MetricSpec, ...]
    baseline: Baseline
    references: tuple[Reference, ...]
    gate_rounding: str
    gates: tuple[Gate, ...]
    tracks: tuple[Track, ...]
    main_track: str
    exp_ratio_factor: float
    confidence: ConfidenceSettings

    def split_for(self, role: str) -> str:
        return dict(self.splits)[role]

    def metric(self, name: str) -> MetricSpec:
        return {m.name: m for m in self.metrics}[name]

    def track(self, name: str) -> Track:
        return {t.name: t for t in self.tracks}[name]

    @property
    def needs_run_baseline(self) -> bool:
        """Whether scoring reads the baseline's figures from the run (``source: run`` and an
        exp_ratio track); only then is a run without the baseline refused."""
        return self.baseline.source == "run" and any(t.formula == "exp_ratio" for t in self.tracks)

    @property
    def ranked_metric_names(self) -> tuple[str, ...]:
        """Metrics any track ranks, in the order ``metrics`` lists them."""
        used = {name for track in self.tracks for name in track.metric_names}
        return tuple(m.name for m in self.metrics if m.name in used)

    def with_splits(self, valid: str | None = None, test: str | None = None) -> RankingProtocol:
        """The same rules reading other run splits (e.g. ``DIV2K_valid`` for a 2022-style run)."""
        current = dict(self.splits)
        return dataclasses.replace(
            self, splits=(("valid", valid or current["valid"]), ("test", test or current["test"]))
        )

    def with_baseline(self, submission_id: str, accept_mismatch: bool = False) -> RankingProtocol:
        """The same rules with ``submission_id`` as the baseline instead of the identity search;
        the ranking still verifies it against ``baseline.identity.published`` and refuses a
        mismatch unless ``accept_mismatch``."""
        if not submission_id:
            raise ProtocolError(f"{self.name}: with_baseline needs a submission id, got {submission_id!r}")
        return dataclasses.replace(
            self,
            baseline=dataclasses.replace(self.baseline, submission_id=submission_id, accept_mismatch=accept_mismatch),
        )

    def with_resamples(self, resamples: int) -> RankingProtocol:
        if resamples < 1:
            raise ProtocolError(f"{self.name}: confidence.resamples must be >= 1, got {resamples}")
        return dataclasses.replace(
            self, confidence=dataclasses.replace(self.confidence, resamples=resamples)
        )


def builtin_protocol_names() -> tuple[str, ...]:
    folder = resources.files(__name__)
    return tuple(sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml")))


def load_protocol(name_or_path: str | Path) -> RankingProtocol:
    """Load and validate a built-in protocol by name, or a YAML file by path."""
    text, origin = _read_protocol_text(name_or_path)
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ProtocolError(f"{origin}: not valid YAML ({exc})") from exc
    return _parse_protocol(document, origin)


def _read_protocol_text(name_or_path: str | Path) -> tuple[str, str]:
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.exists():
        if not candidate.is_file():
            raise ProtocolError(f"protocol file {candidate} does not exist")
        return candidate.read_text(encoding="utf-8"), str(candidate)
    names = builtin_protocol_names()
    if str(name_or_path) not in names:
        hint = _did_you_mean(str(name_or_path), names)
        raise ProtocolError(
            f"unknown protocol {str(name_or_path)!r}{hint}; built-in protocols: {', '.join(names)}; "
            "or pass the path of a .yaml file"
        )
    resource = resources.files(__name__) / f"{name_or_path}.yaml"
    return resource.read_text(encoding="utf-8"), f"{name_or_path}.yaml"


def _did_you_mean(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _mapping(value: Any, where: str, origin: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ProtocolError(f"{origin}: {where} must be a mapping, got {type(value).__name__}")
    return value


def _check_keys(
    value: Mapping[str, Any], where: str, origin: str, required: tuple[str, ...], optional: tuple[str, ...] = ()
) -> None:
    allowed = required + optional
    for key in value:
        if key not in allowed:
            raise ProtocolError(
                f"{origin}: {where}: unknown key {key!r}{_did_you_mean(str(key), allowed)}; "
                f"allowed keys: {', '.join(allowed)}"
            )
    for key in required:
        if key not in value:
            raise ProtocolError(f"{origin}: {where}: missing required key {key!r}")


def _choice(value: Any, choices: tuple[str, ...], where: str, origin: str) -> str:
    if value not in choices:
        raise ProtocolError(
            f"{origin}: {where} is {value!r}{_did_you_mean(str(value), choices)}; "
            f"choose one of {', '.join(choices)}"
        )
    return value


def _number(value: Any, where: str, origin: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProtocolError(f"{origin}: {where} must be a number, got {value!r}")
    return float(value)


def _text(value: Any, where: str, origin: str) -> str:
    if not isinstance(value, str) or not value:
        raise ProtocolError(f"{origin}: {where} must be a non-empty string, got {value!r}")
    return value


def _parse_match(value: Any, where: str, origin: str) -> Match:
    value = _mapping(value, where, origin)
    keys = ("submission_id", "team_id", "name_pattern")
    _check_keys(value, where, origin, required=(), optional=keys)
    given = [k for k in keys if k in value]
    if len(given) != 1:
        raise ProtocolError(f"{origin}: {where} needs exactly one of {', '.join(keys)}, got {given or 'none'}")
    text = _text(str(value[given[0]]), f"{where}.{given[0]}", origin)
    if given[0] == "name_pattern":
        _regex(text, f"{where}.name_pattern", origin)
    return Match(**{given[0]: text})


def _regex(text: str, where: str, origin: str) -> str:
    try:
        re.compile(text)
    except re.error as exc:
        raise ProtocolError(f"{origin}: {where} is not a valid regex ({exc})") from exc
    return text


def _parse_metric(name: str, value: Any, origin: str) -> MetricSpec:
    where = f"metrics.{name}"
    value = _mapping(value, where, origin)
    _check_keys(value, where, origin, ("column", "better"), ("combine", "label", "display_scale", "decimals"))
    column = _text(value["column"], f"{where}.column", origin)
    table, _, column_name = column.partition(".")
    if table not in RUN_TABLES or not column_name:
        raise ProtocolError(
            f"{origin}: {where}.column is {column!r}; write <table>.<column> with table one of "
            f"{', '.join(RUN_TABLES)} (e.g. splits.runtime_ms)"
        )
    combine = value.get("combine")
    if table == "splits":
        combine = _choice(combine, COMBINES, f"{where}.combine (needed for a splits.* column)", origin)
    elif combine is not None:
        raise ProtocolError(f"{origin}: {where}.combine only applies to splits.* columns; remove it")
    decimals = value.get("decimals", 2)
    if isinstance(decimals, bool) or not isinstance(decimals, int) or decimals < 0:
        raise ProtocolError(f"{origin}: {where}.decimals must be a non-negative integer, got {decimals!r}")
    return MetricSpec(
        name=name,
        table=table,
        column=column_name,
        better=_choice(value["better"], DIRECTIONS, f"{where}.better", origin),
        combine=combine,
        label=_text(value.get("label", name), f"{where}.label", origin),
        display_scale=_number(value.get("display_scale", 1.0), f"{where}.display_scale", origin),
        decimals=decimals,
    )


def _parse_figure(metric: str, value: Any, metrics: tuple[MetricSpec, ...], origin: str) -> PublishedFigure:
    where = f"baseline.identity.published.{metric}"
    counts = tuple(m.name for m in metrics if m.table == "submissions")
    if metric not in counts:
        raise ProtocolError(
            f"{origin}: {where}: a published figure names a submissions.* metric (a count measured once "
            f"per submission){_did_you_mean(metric, counts)}; choose one of {', '.join(counts)}"
        )
    value = _mapping(value, where, origin)
    _check_keys(value, where, origin, ("value", "tolerance"))
    tolerance = _number(value["tolerance"], f"{where}.tolerance", origin)
    if tolerance < 0:
        raise ProtocolError(f"{origin}: {where}.tolerance must be >= 0 (0 = exact), got {tolerance:g}")
    return PublishedFigure(metric, _number(value["value"], f"{where}.value", origin), tolerance)


def _parse_identity(value: Any, metrics: tuple[MetricSpec, ...], origin: str) -> BaselineIdentity:
    where = "baseline.identity"
    value = _mapping(value, where, origin)
    _check_keys(value, where, origin, ("architecture", "name_pattern", "published"), ("variant",))
    published = _mapping(value["published"], f"{where}.published", origin)
    if not published:
        raise ProtocolError(f"{origin}: {where}.published is empty; give at least the published params")
    pattern = _text(value["name_pattern"], f"{where}.name_pattern", origin)
    return BaselineIdentity(
        architecture=_text(value["architecture"], f"{where}.architecture", origin),
        variant=str(value.get("variant") or ""),
        name_pattern=_regex(pattern, f"{where}.name_pattern", origin),
        published=tuple(_parse_figure(str(k), v, metrics, origin) for k, v in published.items()),
    )


def _parse_baseline(value: Any, metrics: tuple[MetricSpec, ...], origin: str) -> Baseline:
    value = _mapping(value, "baseline", origin)
    if "match" in value:
        raise ProtocolError(
            f"{origin}: baseline.match is not supported: a baseline is named by identity "
            "(baseline.identity: architecture, name_pattern, published figures), never by team or "
            "submission id; to pin one submission of a run, rank with --baseline SUBMISSION_ID"
        )
    _check_keys(value, "baseline", origin, ("identity",), ("source", "ranked", "constants"))
    metric_names = tuple(m.name for m in metrics)
    constants = _mapping(value.get("constants") or {}, "baseline.constants", origin)
    allowed = metric_names + tuple(PSNR_COLUMN_BY_ROLE.values())
    _check_keys(constants, "baseline.constants", origin, required=(), optional=allowed)
    ranked = value.get("ranked", False)
    if not isinstance(ranked, bool):
        raise ProtocolError(f"{origin}: baseline.ranked must be true or false, got {ranked!r}")
    return Baseline(
        identity=_parse_identity(value["identity"], metrics, origin),
        source=_choice(value.get("source", "run"), BASELINE_SOURCES, "baseline.source", origin),
        ranked=ranked,
        constants=tuple((k, _number(v, f"baseline.constants.{k}", origin)) for k, v in constants.items()),
    )


def _parse_gate(role: str, value: Any, origin: str) -> Gate:
    where = f"gates.{role}"
    value = _mapping(value, where, origin)
    _check_keys(value, where, origin, required=(), optional=("min_psnr_db", "reference", "margin_db"))
    if ("min_psnr_db" in value) == ("reference" in value):
        raise ProtocolError(f"{origin}: {where} needs exactly one of min_psnr_db or reference (+ margin_db)")
    if "min_psnr_db" in value:
        if "margin_db" in value:
            raise ProtocolError(f"{origin}: {where}.margin_db only applies with a reference; remove it")
        return Gate(role, _number(value["min_psnr_db"], f"{where}.min_psnr_db", origin), None, 0.0)
    return Gate(
        role,
        None,
        _parse_match(value["reference"], f"{where}.reference", origin),
        _number(value.get("margin_db", 0.0), f"{where}.margin_db", origin),
    )


def _parse_track(name: str, value: Any, metric_names: tuple[str, ...], origin: str) -> Track:
    where = f"tracks.{name}"
    value = _mapping(value, where, origin)
    _check_keys(value, where, origin, ("formula",), ("title", "metrics", "weights"))
    formula = _choice(value["formula"], FORMULAS, f"{where}.formula", origin)
    if formula == "rank_sum":
        if "weights" in value or not isinstance(value.get("metrics"), list) or not value["metrics"]:
            raise ProtocolError(f"{origin}: {where}: a rank_sum track lists its metrics (metrics: [a, b]), no weights")
        weights = [(str(m), 1.0) for m in value["metrics"]]
    else:
        if "metrics" in value:
            raise ProtocolError(f"{origin}: {where}: an exp_ratio track gives weights: {{metric: weight}}, not metrics")
        given = _mapping(value.get("weights"), f"{where}.weights", origin)
        if not given:
            raise ProtocolError(f"{origin}: {where}.weights is empty")
        weights = [(str(m), _number(w, f"{where}.weights.{m}", origin)) for m, w in given.items()]
        if any(w <= 0 for _, w in weights):
            raise ProtocolError(f"{origin}: {where}.weights must all be positive")
    for metric, _ in weights:
        if metric not in metric_names:
            raise ProtocolError(
                f"{origin}: {where} uses unknown metric {metric!r}{_did_you_mean(metric, metric_names)}; "
                f"metrics defined: {', '.join(metric_names)}"
            )
    if len({m for m, _ in weights}) != len(weights):
        raise ProtocolError(f"{origin}: {where} lists a metric twice")
    return Track(name, _text(value.get("title", name), f"{where}.title", origin), formula, tuple(weights))


def _parse_confidence(value: Any, origin: str) -> ConfidenceSettings:
    value = _mapping(value or {}, "confidence", origin)
    _check_keys(value, "confidence", origin, required=(), optional=("resamples", "seed", "level"))
    resamples, seed = value.get("resamples", 1000), value.get("seed", 0)
    level = _number(value.get("level", 0.95), "confidence.level", origin)
    for key, number in (("resamples", resamples), ("seed", seed)):
        if isinstance(number, bool) or not isinstance(number, int) or number < (1 if key == "resamples" else 0):
            kind = "positive" if key == "resamples" else "non-negative"
            raise ProtocolError(f"{origin}: confidence.{key} must be a {kind} integer, got {number!r}")
    if not 0.0 < level < 1.0:
        raise ProtocolError(f"{origin}: confidence.level must lie in (0, 1), got {level}")
    return ConfidenceSettings(resamples, seed, level)


def _parse_protocol(document: Any, origin: str) -> RankingProtocol:
    document = _mapping(document, "the top level", origin)
    _check_keys(
        document,
        "top level",
        origin,
        ("name", "splits", "metrics", "baseline", "gates", "tracks", "main_track"),
        ("description", "references", "gate_rounding", "exp_ratio_factor", "confidence"),
    )
    splits = _mapping(document["splits"], "splits", origin)
    _check_keys(splits, "splits", origin, ROLES)
    metrics_doc = _mapping(document["metrics"], "metrics", origin)
    metrics = tuple(_parse_metric(str(k), v, origin) for k, v in metrics_doc.items())
    metric_names = tuple(m.name for m in metrics)
    gates_doc = _mapping(document["gates"], "gates", origin)
    _check_keys(gates_doc, "gates", origin, required=(), optional=ROLES)
    tracks_doc = _mapping(document["tracks"], "tracks", origin)
    tracks = tuple(_parse_track(str(k), v, metric_names, origin) for k, v in tracks_doc.items())
    track_names = tuple(t.name for t in tracks)
    main_track = _text(document["main_track"], "main_track", origin)
    if main_track not in track_names:
        raise ProtocolError(
            f"{origin}: main_track {main_track!r} is not a track{_did_you_mean(main_track, track_names)}; "
            f"tracks: {', '.join(track_names)}"
        )
    references_doc = document.get("references") or []
    if not isinstance(references_doc, list):
        raise ProtocolError(f"{origin}: references must be a list of {{match: ..., reason: ...}}")
    references = []
    for i, item in enumerate(references_doc):
        item = _mapping(item, f"references[{i}]", origin)
        _check_keys(item, f"references[{i}]", origin, ("match", "reason"))
        references.append(
            Reference(
                _parse_match(item["match"], f"references[{i}].match", origin),
                _text(item["reason"], f"references[{i}].reason", origin),
            )
        )
    baseline = _parse_baseline(document["baseline"], metrics, origin)
    if baseline.source == "constants":
        exp_metrics = {m for t in tracks if t.formula == "exp_ratio" for m in t.metric_names}
        missing = sorted(exp_metrics - {k for k, _ in baseline.constants})
        if missing:
            raise ProtocolError(
                f"{origin}: baseline.source is constants but baseline.constants lacks {', '.join(missing)}; "
                "add them or use source: run"
            )
    return RankingProtocol(
        name=_text(document["name"], "name", origin),
        description=str(document.get("description", "")),
        source_path=origin,
        splits=tuple((role, _text(splits[role], f"splits.{role}", origin)) for role in ROLES),
        metrics=metrics,
        baseline=baseline,
        references=tuple(references),
        gate_rounding=_choice(document.get("gate_rounding", "exact"), GATE_ROUNDINGS, "gate_rounding", origin),
        gates=tuple(_parse_gate(role, gates_doc[role], origin) for role in ROLES if role in gates_doc),
        tracks=tracks,
        main_track=main_track,
        exp_ratio_factor=_number(document.get("exp_ratio_factor", 2.0), "exp_ratio_factor", origin),
        confidence=_parse_confidence(document.get("confidence"), origin),
    )
