"""Ranking protocols: challenge rules as data (one YAML file per year), loaded into frozen records.

Contract
- ``load_protocol(name_or_path) -> RankingProtocol``: a built-in name (``builtin_protocol_names()``:
  ``ntire2022``, ``ntire2024``, ``ntire2025``, ``ntire2026``, ``demo``; the YAML files beside this
  module) or a path to a YAML file of the same shape. The file is validated by the pydantic models
  below (:class:`RulesDocument`, built on ``esr_eval.validation``); :class:`ProtocolError` names
  the file and every problem at once, each as ``<field path>: <problem>. Fix: <fix>``, an unknown
  key with a "did you mean", so a typo never silently changes a ranking.
- ``include: <base>`` in a rules file names a base: a built-in base (``bases/<name>.yaml`` here,
  e.g. ``ntire_esr``; not a protocol itself), a built-in protocol name, or a path relative to the
  including file. The file's keys override the base's: mappings merge recursively, anything else
  (lists, scalars) is replaced. A base may include another; a cycle is refused. The merged
  document is what is validated, so a base alone may lack required keys. ``name``, ``version``
  and ``description`` are never inherited: changed rules must say what they are (a copy of
  ``ntire2024`` with another gate cannot pass for the official 2024 rules).
- Cross-field rules are validators of the models (tracks use defined metrics, main_track is a
  track, published figures name ``submissions.*`` metrics, constants name metrics, ``source:
  constants`` has every exp_ratio-scored constant); each is checked whenever the fields it reads
  are valid, so one load reports the field problems and the cross-field problems together.
- ``version:`` (a quoted string such as ``"2026.1"``) names the revision of the rules; it is
  ``RankingProtocol.version`` and the ``rules_version`` column of the rankings.
- ``json_schema_text()`` is the JSON Schema of a rules file (``docs/rules.schema.json``) for
  editors: every key, its type and meaning; which keys are required is checked on load (a base or
  an including file gives only some keys).
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
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import InitErrorDetails

from esr_eval.validation import Problem, Strict, about, invalid, printable, problems, show

ROLES = ("valid", "test")
PSNR_COLUMN_BY_ROLE = {"valid": "val_psnr_db", "test": "test_psnr_db"}
RUN_TABLES = ("submissions", "splits")
MATCH_KEYS = ("submission_id", "team_id", "name_pattern")
FOLDER = Path(__file__).resolve().parent   # the built-in rules files; their bases under bases/
BASES = FOLDER / "bases"
RULES_SUFFIXES = (".yaml", ".yml")
_HELP = "see the built-in rules files in esr_eval/protocols/ and docs/rules.schema.json"


class ProtocolError(ValueError):
    """A rules file is malformed; the message names the file and each problem with its field and fix."""

    def __init__(self, message: str, found: tuple[Problem, ...] = ()):
        super().__init__(message)
        self.problems = found

    @classmethod
    def listing(cls, origin: str, found: list[Problem]) -> ProtocolError:
        """One error for every problem of a file: ``<origin>: <field>: <problem>. Fix: <fix>; ...``."""
        return cls(f"{origin}: " + "; ".join(f"{p.field}: {p.problem}. Fix: {p.fix}" for p in found), tuple(found))


# --- runtime records ------------------------------------------------------------------------------

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
    """An entry shown in reports but never ranked, and why."""

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
    """A ranked track: its formula and (metric, weight) pairs (weight 1.0 in a rank_sum track)."""

    name: str
    title: str
    formula: str
    weights: tuple[tuple[str, float], ...]

    @property
    def metric_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.weights)


@dataclass(frozen=True)
class ConfidenceSettings:
    """Bootstrap settings: resamples, seed and interval level (e.g. 0.95)."""

    resamples: int
    seed: int
    level: float


@dataclass(frozen=True)
class RankingProtocol:
    """One year's rules, validated; ``version`` is the rules file's revision, ``source_path`` the file."""

    name: str
    version: str
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


# --- the rules file, validated ----------------------------------------------------------------------

def _close(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest of ``choices``, else ''."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _compiles(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise invalid(f"is not a valid regex ({exc})", r"write a Python regular expression, e.g. '^RLFN\b'") from None
    return pattern


def _report(found: list[tuple[tuple, str, str]]) -> None:
    """Raise every (location under the validated field, problem, fix) of a cross-field rule at once."""
    if found:
        raise ValidationError.from_exception_data(
            "rules", [InitErrorDetails(type=invalid(problem, fix), loc=loc, input=None) for loc, problem, fix in found])


Text = Annotated[str, Field(min_length=1)]
Regex = Annotated[str, Field(min_length=1), AfterValidator(_compiles)]
_MATCH_FIX = "give exactly one of submission_id, team_id or name_pattern, e.g. {submission_id: team99_Bicubic}"
_TRACK_FIX = "write `metrics: [a, b]` for a rank_sum track or `weights: {a: 0.8, b: 0.2}` for an exp_ratio track"


class MatchEntry(Strict):
    """Selects submissions: exactly one of an exact submission id, an exact team id or a name regex."""

    submission_id: Text | None = about("the submission id (manifest file stem), exact", _MATCH_FIX, default=None)
    team_id: Text | None = about("the team id, exact", 'write it quoted, e.g. team_id: "00"', default=None)
    name_pattern: Regex | None = about("a regex searched in the submission's name", _MATCH_FIX, default=None)

    @model_validator(mode="after")
    def _exactly_one(self) -> MatchEntry:
        given = [key for key in MATCH_KEYS if getattr(self, key) is not None]
        if len(given) != 1:
            raise invalid(f"needs exactly one of {', '.join(MATCH_KEYS)}, got {', '.join(given) or 'none'}", _MATCH_FIX)
        return self

    def record(self) -> Match:
        return Match(self.submission_id, self.team_id, self.name_pattern)


class MetricEntry(Strict):
    """One measured quantity: the run column it reads, how valid and test combine, direction, display."""

    column: str = about("the run column read, <table>.<column> with table submissions or splits",
                         "write <table>.<column> with table submissions or splits, e.g. splits.runtime_ms",
                         pattern=rf"^({'|'.join(RUN_TABLES)})\..+$")
    better: Literal["lower", "higher"] = about("the direction", "write lower or higher")
    combine: Literal["mean", "max", "min"] | None = about(
        "how a splits.* column's valid and test values combine into one", "write mean, max or min", default=None)
    label: Text | None = about("column header in reports (default: the metric's name)", "write a short header",
                                default=None)
    display_scale: float = about("factor applied for display, e.g. 1.0e-6 for millions", "write a number",
                                  default=1.0)
    decimals: int = about("decimals shown in reports", "write a whole number >= 0", default=2, ge=0)

    @model_validator(mode="after")
    def _combine_with_splits(self) -> MetricEntry:
        per_split = self.column.startswith("splits.")
        if per_split and self.combine is None:
            raise invalid("a splits.* column needs combine (its valid and test values combine into one)",
                          "add `combine: mean | max | min`")
        if not per_split and self.combine is not None:
            raise invalid("combine applies only to a splits.* column", "remove combine")
        return self

    def record(self, name: str) -> MetricSpec:
        table, _, column = self.column.partition(".")
        return MetricSpec(name, table, column, self.better, self.combine, self.label or name, self.display_scale,
                          self.decimals)


class FigureEntry(Strict):
    value: float = about("the published figure", "write the published number, e.g. 317218")
    tolerance: float = about("allowed |measured - value|: 0 = exact; a rounded figure gets half a unit of its "
                              "last published digit", "write 0 for an exact figure, else a number > 0", ge=0)


class IdentityEntry(Strict):
    """What the baseline model is, by identity: never by team or submission id."""

    architecture: Text = about("the baseline's model class", "write the class name, e.g. RLFN_Prune")
    variant: str = about("its configuration, in words", "write one line, e.g. 46 feature channels", default="")
    name_pattern: Regex = about("regex its submission's name matches", r"write a regex such as '^RLFN\b'")
    published: dict[str, FigureEntry] = about(
        "its published complexity: submissions.* metric -> {value, tolerance}",
        "write e.g. `published: {params: {value: 317218, tolerance: 0}}`", min_length=1)

    def record(self) -> BaselineIdentity:
        return BaselineIdentity(self.architecture, self.variant, self.name_pattern,
                                tuple(PublishedFigure(m, f.value, f.tolerance) for m, f in self.published.items()))


class BaselineEntry(Strict):
    identity: IdentityEntry = about("what the baseline is", "write `identity: {architecture, name_pattern, published}`")
    source: Literal["run", "constants"] = about("where its figures come from: the same run or `constants`",
                                                 "write run or constants", default="run")
    ranked: bool = about("whether the baseline is ranked too", "write true or false", default=False)
    constants: dict[str, float] = about("its published figures: metric or val_psnr_db/test_psnr_db -> value",
                                         "write e.g. `constants: {runtime_ms: 13.54}`", default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _named_by_identity(cls, data: Any) -> Any:
        if isinstance(data, dict) and "match" in data:
            _report([(("match",), ("is not supported: a baseline is named by identity (baseline.identity: "
                                   "architecture, name_pattern, published figures), never by team or submission id"),
                      ("describe it under baseline.identity; to pin one submission of a run, rank with "
                       "--baseline SUBMISSION_ID"))])
        return data


class ReferenceEntry(Strict):
    match: MatchEntry = about("which submissions", _MATCH_FIX)
    reason: Text = about("why it is shown", "write one line, e.g. null model (bicubic upsampling)")


class GateEntry(Strict):
    """PSNR gate of one role: an absolute ``min_psnr_db``, or a ``reference`` submission's PSNR + ``margin_db``."""

    min_psnr_db: float | None = about("pass when PSNR >= this", "write a number of dB", default=None)
    reference: MatchEntry | None = about("pass when PSNR >= this submission's PSNR + margin_db", _MATCH_FIX,
                                          default=None)
    margin_db: float | None = about("margin over the reference's PSNR (default 0)", "write a number of dB",
                                     default=None)

    @model_validator(mode="after")
    def _one_threshold(self) -> GateEntry:
        absolute, relative = self.min_psnr_db is not None, self.reference is not None
        if absolute == relative or (absolute and self.margin_db is not None):
            raise invalid("needs exactly one of min_psnr_db or reference (+ margin_db)",
                          "write `{min_psnr_db: 26.9}` or `{reference: {submission_id: ...}, margin_db: 0.3}`")
        return self

    def record(self, role: str) -> Gate:
        reference = None if self.reference is None else self.reference.record()
        return Gate(role, self.min_psnr_db, reference, self.margin_db or 0.0)


class GatesEntry(Strict):
    valid: GateEntry | None = about("gate on the valid role", "write `valid: {min_psnr_db: 26.9}`", default=None)
    test: GateEntry | None = about("gate on the test role", "write `test: {min_psnr_db: 26.99}`", default=None)


class SplitsEntry(Strict):
    valid: Text = about("the run split standing for the valid role", "write a split name, e.g. DIV2K_LSDIR_valid")
    test: Text = about("the run split standing for the test role", "write a split name, e.g. DIV2K_LSDIR_test")


class TrackEntry(Strict):
    title: Text | None = about("title in reports (default: the track's name)", "write a short title", default=None)
    formula: Literal["rank_sum", "exp_ratio"] = about("sum of metric ranks, or weighted exp-ratio scores",
                                                       "write rank_sum or exp_ratio")
    metrics: list[str] | None = about("a rank_sum track's metrics", "write e.g. `metrics: [params, flops]`",
                                       default=None)
    weights: dict[str, Annotated[float, Field(gt=0)]] | None = about(
        "an exp_ratio track's metric -> positive weight", "write positive weights, e.g. `weights: {runtime_ms: 0.8, "
        "flops: 0.2}`", default=None)

    @model_validator(mode="after")
    def _metrics_or_weights(self) -> TrackEntry:
        given, other = (self.metrics, self.weights) if self.formula == "rank_sum" else (self.weights, self.metrics)
        if not given or other is not None:
            raise invalid("a rank_sum track lists its metrics and no weights; an exp_ratio track gives weights and "
                          "no metrics", _TRACK_FIX)
        if len(set(self.metric_names)) != len(self.metric_names):
            raise invalid("lists a metric twice", "list each metric once")
        return self

    @property
    def metric_names(self) -> tuple[str, ...]:
        return tuple(self.metrics or self.weights or ())

    def record(self, name: str) -> Track:
        weights = {m: 1.0 for m in self.metrics} if self.formula == "rank_sum" else self.weights
        return Track(name, self.title or name, self.formula, tuple(weights.items()))


class ConfidenceEntry(Strict):
    resamples: int = about("bootstrap resamples", "write a whole number >= 1", default=1000, ge=1)
    seed: int = about("bootstrap seed (fixed: reproducible intervals)", "write a whole number >= 0", default=0, ge=0)
    level: float = about("interval level", "write a number between 0 and 1, e.g. 0.95", default=0.95, gt=0, lt=1)


class RulesDocument(Strict):
    """A rules file with its includes merged; the JSON Schema of a file is ``docs/rules.schema.json``."""

    name: Text = about("the protocol's name", "write e.g. `name: ntire2026`")
    version: Text = about("the rules' revision, recorded in the rankings", 'write it quoted, e.g. version: "2026.1"')
    description: str = about("the rules in a few lines", "write a text", default="")
    splits: SplitsEntry = about("run split per role", "write `splits: {valid: ..., test: ...}`")
    metrics: dict[str, MetricEntry] = about("every quantity the rules or the report read", _HELP)
    tracks: dict[str, TrackEntry] = about("the ranked tracks", _HELP)
    main_track: Text = about("the track that orders the rankings", "name one of the tracks")
    baseline: BaselineEntry = about("the baseline, by identity", _HELP)
    references: list[ReferenceEntry] = about("entries shown but never ranked", "write a list of {match, reason}",
                                              default_factory=list)
    gate_rounding: Literal["exact", "2dp"] = about("compare PSNRs exactly or after 2-decimal rounding",
                                                    "write exact or 2dp", default="exact")
    gates: GatesEntry = about("PSNR gate per role", "write `gates: {valid: {min_psnr_db: 26.9}}`")
    exp_ratio_factor: float = about("Score_m = exp(factor * m / m_baseline)", "write a number, e.g. 2.0", default=2.0)
    confidence: ConfidenceEntry = about("bootstrap settings", "write `confidence: {resamples: 1000, seed: 0, "
                                         "level: 0.95}`", default=ConfidenceEntry())

    @field_validator("tracks")
    @classmethod
    def _defined_metrics(cls, tracks: dict[str, TrackEntry], info: ValidationInfo) -> dict[str, TrackEntry]:
        if "metrics" in info.data:
            defined = info.data["metrics"]
            _report([((name,), f"uses unknown metric {show(metric)}{_close(metric, defined)}",
                      f"use a metric defined under metrics: {', '.join(defined)}")
                     for name, track in tracks.items() for metric in track.metric_names if metric not in defined])
        return tracks

    @field_validator("main_track")
    @classmethod
    def _a_track(cls, main: str, info: ValidationInfo) -> str:
        tracks = info.data.get("tracks")
        if tracks is not None and main not in tracks:
            raise invalid(f"{show(main)} is not a track{_close(main, tracks)}", f"name one of {', '.join(tracks)}")
        return main

    @field_validator("baseline")
    @classmethod
    def _figures_known(cls, baseline: BaselineEntry, info: ValidationInfo) -> BaselineEntry:
        metrics, tracks, found = info.data.get("metrics"), info.data.get("tracks"), []
        if metrics is not None:
            counts = [name for name, m in metrics.items() if m.column.startswith("submissions.")]
            found += [(("identity", "published", name), ("a published figure names a submissions.* metric (a count "
                       f"measured once per submission){_close(name, counts)}"), f"choose one of {', '.join(counts)}")
                      for name in baseline.identity.published if name not in counts]
            known = [*metrics, *PSNR_COLUMN_BY_ROLE.values()]
            found += [(("constants", key), f"is neither a metric nor a PSNR column{_close(key, known)}",
                       f"use one of {', '.join(known)}") for key in baseline.constants if key not in known]
        if tracks is not None and baseline.source == "constants":
            scored = {m for track in tracks.values() if track.formula == "exp_ratio" for m in track.metric_names}
            if missing := sorted(scored - set(baseline.constants)):
                found.append((("source",), f"is constants but baseline.constants lacks {', '.join(missing)}",
                              "add them to baseline.constants or use source: run"))
        _report(found)
        return baseline

    def record(self, source_path: str) -> RankingProtocol:
        """The runtime record of these rules, read from ``source_path``."""
        return RankingProtocol(
            name=self.name,
            version=self.version,
            description=self.description,
            source_path=source_path,
            splits=(("valid", self.splits.valid), ("test", self.splits.test)),
            metrics=tuple(entry.record(name) for name, entry in self.metrics.items()),
            baseline=Baseline(self.baseline.identity.record(), self.baseline.source, self.baseline.ranked,
                              tuple(self.baseline.constants.items())),
            references=tuple(Reference(entry.match.record(), entry.reason) for entry in self.references),
            gate_rounding=self.gate_rounding,
            gates=tuple(gate.record(role) for role in ROLES if (gate := getattr(self.gates, role)) is not None),
            tracks=tuple(entry.record(name) for name, entry in self.tracks.items()),
            main_track=self.main_track,
            exp_ratio_factor=self.exp_ratio_factor,
            confidence=ConfidenceSettings(self.confidence.resamples, self.confidence.seed, self.confidence.level),
        )


# --- loading: names, files, includes ------------------------------------------------------------------

def _names(folder: Path) -> tuple[str, ...]:
    return tuple(sorted(path.stem for path in folder.glob("*.yaml")))


def builtin_protocol_names() -> tuple[str, ...]:
    return _names(FOLDER)


def _shown(path: Path) -> str:
    """How a file is named in messages: relative to this folder for a built-in one."""
    return str(path.relative_to(FOLDER)) if path.is_relative_to(FOLDER) else str(path)


def load_protocol(name_or_path: str | Path) -> RankingProtocol:
    """Load and validate a built-in protocol by name, or a YAML file by path (includes merged)."""
    candidate = Path(name_or_path)
    if candidate.suffix in RULES_SUFFIXES or candidate.exists():
        if not candidate.is_file():
            raise ProtocolError(f"protocol file {candidate} does not exist")
        path, origin = candidate, str(candidate)
    else:
        names = builtin_protocol_names()
        if str(name_or_path) not in names:
            raise ProtocolError(
                f"unknown protocol {str(name_or_path)!r}{_close(str(name_or_path), names)}; built-in protocols: "
                f"{', '.join(names)}; or pass the path of a .yaml file")
        path = FOLDER / f"{name_or_path}.yaml"
        origin = _shown(path)
    document = _merged_document(path, origin, ())
    try:
        return RulesDocument.model_validate(document).record(origin)
    except ValidationError as exc:
        raise ProtocolError.listing(origin, problems(exc, RulesDocument, _HELP)) from None


def _merged_document(path: Path, origin: str, chain: tuple[Path, ...]) -> Any:
    """The YAML document of ``path`` over its ``include:`` base, recursively; ``chain``: the including files."""
    if path.resolve() in chain:
        cycle = " -> ".join(_shown(p) for p in (*chain, path.resolve()))
        raise ProtocolError(f"{origin}: include: a cycle ({cycle}). Fix: remove one of these includes")
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ProtocolError(f"{origin}: (file): not valid YAML ({printable(str(exc), 300)}). Fix: correct the "
                            "YAML syntax") from exc
    if not isinstance(document, dict) or "include" not in document:
        return document
    base_path = _include(document.pop("include"), path, origin)
    base = _merged_document(base_path, _shown(base_path), (*chain, path.resolve()))
    if not isinstance(base, dict):
        raise ProtocolError(f"{_shown(base_path)}: (file): must be a mapping, got {show(base)}. Fix: {_HELP}")
    inherited = {key: value for key, value in base.items() if key not in OWN_KEYS}
    return _merge(inherited, document)


OWN_KEYS = ("name", "version", "description")  # what rules are called is never inherited from a base


def _include(reference: Any, including: Path, origin: str) -> Path:
    """The file ``include: reference`` in ``including`` names: a path relative to it, or a built-in name."""
    bases, protocols = _names(BASES), builtin_protocol_names()
    fix = (f"name a built-in base ({', '.join(bases)}) or protocol ({', '.join(protocols)}), or give a path "
           "relative to the including file")
    if not isinstance(reference, str) or not reference:
        raise ProtocolError(f"{origin}: include: must be a name or a path, got {show(reference)}. Fix: {fix}")
    if reference.endswith(RULES_SUFFIXES) or "/" in reference:
        path = including.parent / reference
        if not path.is_file():
            raise ProtocolError(f"{origin}: include: {_shown(path)} does not exist. Fix: {fix}")
        return path
    if reference in bases or reference in protocols:
        return (BASES if reference in bases else FOLDER) / f"{reference}.yaml"
    raise ProtocolError(f"{origin}: include: unknown base {show(reference)}{_close(reference, bases + protocols)}. "
                        f"Fix: {fix}")


def _merge(base: dict, override: dict) -> dict:
    """``override`` over ``base``: mappings merge recursively, anything else (lists, scalars) is replaced."""
    merged = dict(base)
    for key, value in override.items():
        both = isinstance(merged.get(key), dict) and isinstance(value, dict)
        merged[key] = _merge(merged[key], value) if both else value
    return merged


def json_schema_text() -> str:
    """The JSON Schema of a rules file (``docs/rules.schema.json``), for editors' completion and checks.
    A base or an including file gives only some keys, so the schema requires none: every required
    key is checked on load, on the merged document."""
    schema = RulesDocument.model_json_schema(by_alias=True)
    for part in (schema, *schema["$defs"].values()):
        part.pop("required", None)
    schema["properties"]["include"] = {
        "type": "string", "description": "the base these rules override: a built-in base or protocol name, or a "
        "path relative to this file; mappings merge recursively, anything else is replaced"}
    schema["title"] = "esr-eval ranking rules"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"
