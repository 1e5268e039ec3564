"""Tests of the rules files themselves (esr_eval.protocols): every problem of a file reported at
once, ``include:`` (override, nested merge, path relative to the including file, cycles refused),
``version:`` recorded in the rankings, and the committed JSON Schema."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from esr_eval.protocols import ProtocolError, builtin_protocol_names, json_schema_text, load_protocol
from esr_eval.ranking import rank_run
from tests.support.synthetic import write_synthetic_run

REPO = Path(__file__).resolve().parents[1]


def test_every_problem_of_a_file_is_reported_at_once(tmp_path: Path) -> None:
    """Field problems and cross-field problems together (a cross-field rule is checked whenever the
    fields it reads are valid)."""
    path = tmp_path / "p.yaml"
    path.write_text(
        "include: ntire2026\n"
        "name: mine\n"
        "version: 2026.2\n"                                     # unquoted: a number
        "gate_roundng: 2dp\n"
        "gates: {valid: {margin_db: 0.3}}\n"                    # with the base's min_psnr_db
        "tracks: {sub_runtime: {weights: {runtime: 1.0}}}\n"
        "baseline: {constants: {runtme_ms: 1.0}}\n"
        "references: [{match: {name_pattern: '(x'}, reason: ''}]\n"
        "confidence: {level: 1.5}\n"
    )
    with pytest.raises(ProtocolError) as info:
        load_protocol(path)
    fields = [p.field for p in info.value.problems]
    assert sorted(fields) == sorted([
        "version", "gate_roundng", "gates.valid", "tracks.sub_runtime", "baseline.constants.runtme_ms",
        "references[0].match.name_pattern", "references[0].reason", "confidence.level"])
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert 'version: must be a text, got 2026.2. Fix: write it quoted, e.g. version: "2026.1"' in message
    assert "baseline.constants.runtme_ms: is neither a metric nor a PSNR column (did you mean 'runtime_ms'?)" in message
    assert message.count(". Fix: ") == len(fields)


def test_main_track_must_name_a_track(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("include: ntire2024\nname: mine\nversion: '1'\nmain_track: mian\n")
    with pytest.raises(ProtocolError, match=r"main_track: 'mian' is not a track \(did you mean 'main'\?\)"):
        load_protocol(path)


def test_an_include_overrides_keys_and_merges_mappings(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "include: ntire2024\n"
        "name: custom\n"
        "version: custom.1\n"
        "gates: {test: {min_psnr_db: 27.5}}\n"                  # nested mapping: valid gate kept
        "tracks: {sub2: {formula: rank_sum, metrics: [params, flops]}}\n"
        "baseline: {identity: {published: {params: {tolerance: 2}}}}\n"
    )
    base, custom = load_protocol("ntire2024"), load_protocol(path)
    assert (custom.name, custom.version, custom.description) == ("custom", "custom.1", "")
    assert [(g.role, g.min_psnr_db) for g in custom.gates] == [("valid", 26.90), ("test", 27.5)]
    assert [t.name for t in custom.tracks] == [t.name for t in base.tracks] + ["sub2"]
    assert custom.track("main") == base.track("main")
    published = {f.metric: (f.value, f.tolerance) for f in custom.baseline.identity.published}
    assert published == {"params": (317218.0, 2.0), "flops": (19674859520.0, 0.0)}
    assert custom.baseline.constants == base.baseline.constants


def test_an_include_replaces_lists_and_scalars(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("include: ntire2022\nname: mine\nversion: '1'\ntracks: {sub2: {metrics: [flops]}}\n"
                    "gate_rounding: exact\n"
                    "references: []\n")
    custom = load_protocol(path)
    assert custom.track("sub2").metric_names == ("flops",)
    assert custom.gate_rounding == "exact" and custom.references == ()


def test_an_include_path_is_relative_to_the_including_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "common").mkdir()
    (tmp_path / "common" / "base.yaml").write_text("include: ntire2026\nbaseline: {ranked: true}\n")
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "mine.yaml").write_text("include: ../common/base.yaml\nname: mine\nversion: mine.1\n")
    monkeypatch.chdir(REPO)  # not the files' folder: the path is resolved from the including file
    mine = load_protocol(tmp_path / "rules" / "mine.yaml")
    assert (mine.name, mine.version, mine.source_path) == ("mine", "mine.1", str(tmp_path / "rules" / "mine.yaml"))
    assert mine.baseline.identity.architecture == "SPAN" and mine.baseline.ranked


def test_what_rules_are_called_is_never_inherited(tmp_path: Path) -> None:
    """A copy of the 2024 rules with another gate cannot pass for the official 2024 rules."""
    path = tmp_path / "p.yaml"
    path.write_text("include: ntire2024\ngates: {test: {min_psnr_db: 20.0}}\n")
    with pytest.raises(ProtocolError) as info:
        load_protocol(path)
    assert sorted(p.field for p in info.value.problems) == ["name", "version"]


def test_an_include_cycle_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("include: b.yaml\nname: a\n")
    (tmp_path / "b.yaml").write_text("include: a.yaml\nversion: '1'\n")
    with pytest.raises(ProtocolError, match=r"include: a cycle \(.*a\.yaml -> .*b\.yaml -> .*a\.yaml\)"):
        load_protocol(tmp_path / "a.yaml")
    (tmp_path / "self.yaml").write_text("include: self.yaml\n")
    with pytest.raises(ProtocolError, match=r"include: a cycle"):
        load_protocol(tmp_path / "self.yaml")


def test_an_unknown_include_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("include: ntire_esx\n")
    with pytest.raises(ProtocolError, match=r"include: unknown base 'ntire_esx' \(did you mean 'ntire_esr'\?\)"):
        load_protocol(path)
    path.write_text("include: missing.yaml\n")
    with pytest.raises(ProtocolError, match=r"include: .*missing\.yaml does not exist"):
        load_protocol(path)


def test_bases_are_not_protocols() -> None:
    assert not {"ntire_esr", "ntire_esr_exp_ratio"} & set(builtin_protocol_names())
    with pytest.raises(ProtocolError, match="unknown protocol 'ntire_esr'"):
        load_protocol("ntire_esr")


def test_every_builtin_carries_a_version() -> None:
    versions = {name: load_protocol(name).version for name in builtin_protocol_names()}
    assert versions == {"demo": "1", "ntire2022": "2022.1", "ntire2024": "2024.1", "ntire2025": "2025.1",
                        "ntire2026": "2026.1"}


def test_the_rules_version_is_recorded_in_the_rankings(tmp_path: Path) -> None:
    run = write_synthetic_run(tmp_path / "synthetic")
    rankings = rank_run(run, load_protocol("ntire2024").with_resamples(10))
    assert set(rankings["protocol"]) == {"ntire2024"} and set(rankings["rules_version"]) == {"2024.1"}


def test_json_schema_in_docs_is_current() -> None:
    committed = REPO / "docs" / "rules.schema.json"
    assert committed.read_text() == json_schema_text(), (
        "regenerate: python -c 'from esr_eval.protocols import json_schema_text; "
        "print(json_schema_text(), end=\"\")' > docs/rules.schema.json")


def test_every_builtin_file_and_base_passes_the_schema() -> None:
    """What an editor checks with docs/rules.schema.json: the shipped files, bases included, pass."""
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(json.loads(json_schema_text()))
    files = sorted((REPO / "esr_eval" / "protocols").rglob("*.yaml"))
    assert len(files) == 7
    for path in files:
        assert [e.message for e in validator.iter_errors(yaml.safe_load(path.read_text()))] == [], path
    typo = {"tracks": {"main": {"formula": "exp_ratio", "wieghts": {}}}}
    assert ["Additional properties are not allowed ('wieghts' was unexpected)"] == [
        e.message for e in validator.iter_errors(typo)]
