"""Manifest parsing: every field, helpful errors, discovery under a submissions root."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from esr_eval.manifest import SubmissionError, discover, parse_manifest, select


def _rewrite(path, **changes):
    data = yaml.safe_load(path.read_text())
    data.update(changes)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_full_manifest_round_trip(factory):
    path = factory.make(key="params_ema|params", checkpoint_extra={"strict": False},
                        manifest_extra={"adapter": {"pad_to_multiple": 16, "tile": {"size": 64, "overlap": 8}},
                                        "requirements": ["einops"], "data_range": 255.0},
                        model_source={"extra_args": ", depth=2"})
    _rewrite(path, model={"file": "models/team10_Tiny.py", "class": "TinySR", "args": [8],
                          "kwargs": {"upscale": 4, "depth": 2}})
    sub = parse_manifest(path, factory.root)
    assert sub.submission_id == "team10_Tiny" and sub.team_id == "10"
    assert sub.model.args == (8,) and sub.model.kwargs == {"upscale": 4, "depth": 2}
    assert sub.checkpoint.key_alternatives() == (("params_ema",), ("params",))
    assert sub.strict is False and sub.trusted_pickle is False
    assert sub.data_range == 255.0 and sub.scale == 4
    assert sub.adapter.pad_to_multiple == 16 and sub.adapter.tile_size == 64 and sub.adapter.tile_overlap == 8
    assert sub.requirements == ("einops",)
    assert len(sub.manifest_sha256) == 64


def test_nested_key_path(factory):
    sub = parse_manifest(factory.make(key="state.model"), factory.root)
    assert sub.checkpoint.key_alternatives() == (("state", "model"),)


def test_defaults_strict_true_and_root_key(factory):
    sub = parse_manifest(factory.make(), factory.root)
    assert sub.strict is True and sub.checkpoint.key is None
    assert sub.checkpoint.key_alternatives() == ((),)


def test_misspelt_key_gets_did_you_mean(factory):
    path = factory.make()
    data = yaml.safe_load(path.read_text())
    data["data_rnage"] = data.pop("data_range")
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SubmissionError, match=r"\[team10_Tiny\] data_rnage: unknown key.*did you mean 'data_range'"):
        parse_manifest(path, factory.root)


def test_misspelt_nested_key(factory):
    path = factory.make(checkpoint_extra={"strcit": False})
    with pytest.raises(SubmissionError, match=r"checkpoint\.strcit.*did you mean 'strict'"):
        parse_manifest(path, factory.root)


@pytest.mark.parametrize("change, field, fix", [
    ({"team_id": 7}, "team_id", "quoted"),
    ({"team_id": "7"}, "team_id", "quoted"),
    ({"team_id": "1000"}, "team_id", "quoted"),
    ({"after_load": "repa"}, "after_load", "after_load: [repa]"),
    ({"after_load": [{"method": "__init__"}]}, "after_load[0].method", "a method of the model"),
    ({"after_load": [{"method": "load_weights", "path": "model_zoo/absent.pth"}]}, "after_load[0].path",
     "put the file there"),
    ({"after_load": [{"method": "load_weights", "path": "../w.pth"}]}, "after_load[0].path", "without '..'"),
    ({"after_load": [{"methd": "repa"}]}, "after_load[0].method", "add `method:`"),
    ({"data_range": 2.0}, "data_range", "1.0 or 255.0"),
    ({"scale": 0}, "scale", "whole number"),
    ({"requirements": "einops"}, "requirements", "requirements: ["),
    ({"adapter": {"tile": {"size": 32, "overlap": 32}}}, "adapter.tile.overlap", "smaller"),
])
def test_bad_values_name_field_and_fix(factory, change, field, fix):
    path = _rewrite(factory.make(), **change)
    with pytest.raises(SubmissionError) as info:
        parse_manifest(path, factory.root)
    assert info.value.field_name == field and fix in info.value.fix
    assert "team10_Tiny" in str(info.value)


def test_missing_model_file_and_checkpoint(factory):
    path = factory.make()
    (factory.root / "models" / "team10_Tiny.py").unlink()
    with pytest.raises(SubmissionError, match="model.file: models/team10_Tiny.py not found"):
        parse_manifest(path, factory.root)
    path = factory.make("team11_Tiny", team_id="11")
    (factory.root / "model_zoo" / "team11_Tiny.pth").unlink()
    with pytest.raises(SubmissionError, match="checkpoint.path"):
        parse_manifest(path, factory.root)


def test_strict_must_be_boolean(factory):
    path = factory.make(checkpoint_extra={"strict": "no"})
    with pytest.raises(SubmissionError, match="checkpoint.strict: must be true or false"):
        parse_manifest(path, factory.root)


def test_toml_manifest(factory):
    factory.make()
    toml = factory.manifests / "team12_Toml.toml"
    toml.write_text('team_id = "12"\nname = "Toml"\n[model]\nfile = "models/team10_Tiny.py"\nclass = "TinySR"\n'
                    '[checkpoint]\npath = "model_zoo/team10_Tiny.pth"\n')
    sub = parse_manifest(toml, factory.root)
    assert sub.team_id == "12" and sub.checkpoint.path == "model_zoo/team10_Tiny.pth"


def test_discover_is_recursive_and_select_by_id_team_or_name(factory):
    factory.make()
    nested = factory.manifests / "2024"
    nested.mkdir()
    factory.make("team11_Other", team_id="11").rename(nested / "team11_Other.yaml")
    subs = discover(factory.manifests, factory.root)
    assert [s.submission_id for s in subs] == ["team11_Other", "team10_Tiny"]  # sorted by path
    assert [s.submission_id for s in select(subs, ["11"])] == ["team11_Other"]
    assert [s.submission_id for s in select(subs, ["tiny"])] == ["team10_Tiny"]
    with pytest.raises(SubmissionError, match=r"no submission matches 'team10_Tyni'. Fix: did you mean team10_Tiny \(Tiny\)\?"):
        select(subs, ["team10_Tyni"])


def test_manifests_outside_the_checkout(factory, tmp_path):
    """An NTIRE checkout stays untouched; manifests live in a separate folder."""
    factory.make()
    elsewhere = tmp_path / "my_manifests"
    elsewhere.mkdir()
    (factory.manifests / "team10_Tiny.yaml").rename(elsewhere / "team10_Tiny.yaml")
    (sub,) = discover(elsewhere, factory.root)
    assert sub.model_path == (factory.root / "models" / "team10_Tiny.py").resolve()


def test_duplicate_ids_refused(factory, tmp_path):
    factory.make()
    (factory.manifests / "sub").mkdir()
    (factory.manifests / "sub" / "team10_Tiny.yaml").write_text((factory.manifests / "team10_Tiny.yaml").read_text())
    with pytest.raises(SubmissionError, match="two manifests share this id"):
        discover(factory.manifests, factory.root)


@pytest.mark.parametrize("field, value", [
    ("model", {"file": "../outside.py", "class": "TinySR"}),
    ("model", {"file": "/etc/passwd", "class": "TinySR"}),
    ("checkpoint", {"path": "model_zoo/../../secret.pth"}),
])
def test_paths_must_stay_under_the_root(factory, field, value):
    path = _rewrite(factory.make(), **{field: value})
    with pytest.raises(SubmissionError, match="points outside the submissions root"):
        parse_manifest(path, factory.root)


def test_json_schema_in_docs_is_current():
    from esr_eval.manifest import json_schema_text

    committed = Path(__file__).resolve().parents[1] / "docs" / "manifest.schema.json"
    assert committed.read_text() == json_schema_text(), (
        "regenerate: python -c 'from esr_eval.manifest import json_schema_text; "
        "print(json_schema_text(), end=\"\")' > docs/manifest.schema.json")


def test_every_problem_is_reported_at_once(factory):
    path = _rewrite(factory.make(checkpoint_extra={"strcit": False}), team_id=7, scale=16, data_rnage=1.0)
    with pytest.raises(SubmissionError) as info:
        parse_manifest(path, factory.root)
    fields = [p.field for p in info.value.problems]
    assert sorted(fields) == ["checkpoint.strcit", "data_rnage", "scale", "team_id"]
    assert info.value.field_name == fields[0] and str(info.value).count(". Fix: ") == 4
    assert "did you mean 'strict'" in str(info.value) and "did you mean 'data_range'" in str(info.value)


def test_needs_are_validated(factory):
    path = _rewrite(factory.make(), needs={"cuda": True, "min_gpu_memory_gb": 24, "python": ">=3.10,<3.14"})
    needs = parse_manifest(path, factory.root).needs
    assert (needs.cuda, needs.min_gpu_memory_gb, needs.python) == (True, 24.0, ">=3.10,<3.14")
    assert parse_manifest(_rewrite(path, needs=None), factory.root).needs.cuda is False
    _rewrite(path, needs={"cuda": "yes", "python": "three", "gpu": 1})
    with pytest.raises(SubmissionError) as info:
        parse_manifest(path, factory.root)
    assert sorted(p.field for p in info.value.problems) == ["needs.cuda", "needs.gpu", "needs.python"]
    assert "is not a version range, got 'three'" in str(info.value)


def test_three_digit_team_ids_and_after_load_calls(factory):
    path = _rewrite(factory.make(), team_id="361", after_load=[
        "repa", {"method": "load_weights", "path": "model_zoo/team10_Tiny.pth", "args": [True],
                 "kwargs": {"strict": False}}, {"method": "switch_deploy", "each_module": True}])
    sub = parse_manifest(path, factory.root)
    assert sub.team_id == "361"
    assert [call.describe() for call in sub.after_load] == [
        "repa()", "load_weights('model_zoo/team10_Tiny.pth', True, strict=False)",
        "switch_deploy() on every module that has it"]
    assert parse_manifest(_rewrite(path, after_load=None), factory.root).after_load == ()
