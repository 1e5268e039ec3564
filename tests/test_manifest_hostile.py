"""Hostile manifests: each one becomes that submission's error, never an abort or an unbounded output.

Every case writes the hostile file beside a good submission (``team10_Tiny``) and checks that
:func:`discover_all` returns the good one and exactly one short, printable ``SubmissionError``
for the hostile one, naming the problem and the fix; that its error row can be stored in a run
folder (Parquet refuses surrogates); and ``esr-eval ls`` prints a bounded amount of text.
"""

from __future__ import annotations

import os
import time

import pytest

from esr_eval.cli import main
from esr_eval.evaluate import manifest_failure
from esr_eval.manifest import (
    MAX_MANIFEST_BYTES,
    MAX_NAME_CHARS,
    SubmissionError,
    discover,
    discover_all,
    parse_manifest,
)
from esr_eval.records import read_table, write_rows

GOOD = "team10_Tiny"
MODEL = "model: {file: models/team10_Tiny.py, class: TinySR}\ncheckpoint: {path: model_zoo/team10_Tiny.pth}\n"
MAX_MESSAGE_CHARS = 1000


def _manifest(team: str = "11", body: str = "name: Fine\n") -> str:
    return f'team_id: "{team}"\n{MODEL}data_range: 1.0\nscale: 4\n{body}'


def alias_bomb(levels: int = 9, width: int = 9, key: str = "name") -> str:
    """A 'billion laughs' under a real key: ``width ** levels`` strings from well under 1 KiB."""
    lines = [f"{key}:", "  - &l0 [" + ", ".join(["lol"] * width) + "]"]
    lines += [f"  - &l{k} [" + ", ".join([f"*l{k - 1}"] * width) + "]" for k in range(1, levels)]
    return _manifest(body="\n".join(lines) + "\n")


@pytest.fixture
def folder(factory):
    """A manifests folder holding one good submission; hostile files are added beside it."""
    factory.make(GOOD, team_id="10")
    return factory


def _only_error(folder, sid: str) -> SubmissionError:
    subs, errors = discover_all(folder.manifests, folder.root)
    assert [s.submission_id for s in subs] == [GOOD], "the good submission must still run"
    assert [e.submission_id for e in errors] == [sid], errors
    error = errors[0]
    _assert_storable(error, folder.root.parent / "run")
    return error


def _assert_storable(error: SubmissionError, run_dir) -> None:
    """Short and printable, in the house style, and its error row is written and read back."""
    text = str(error)
    assert len(text) <= MAX_MESSAGE_CHARS and text.isprintable(), text
    assert text.startswith(f"[{error.submission_id}] {error.field_name}: ") and ". Fix: " in text
    write_rows(run_dir, "submissions", [manifest_failure(error, "r").submission], error.submission_id)
    rows = read_table(run_dir, "submissions").set_index("submission_id")
    assert rows.loc[error.submission_id, "error"] == text


def test_alias_bomb_is_refused_quickly(folder):
    text = alias_bomb()
    assert len(text.encode()) < 1024
    (folder.manifests / "team11_Bomb.yaml").write_text(text)
    started = time.perf_counter()
    error = _only_error(folder, "team11_Bomb")
    assert time.perf_counter() - started < 5
    first_alias_line = next(i for i, line in enumerate(text.splitlines(), 1) if "*l0" in line)
    assert error.field_name == "(file)" and f"alias *l0 at line {first_alias_line}" in error.problem
    assert "without anchors (&name) and aliases (*name)" in error.fix


def test_merge_key_alias_is_refused(folder):
    (folder.manifests / "team11_Merge.yaml").write_text(_manifest(body="adapter: &x {pad_to_multiple: 8}\n"
                                                                       "weights: {<<: *x}\n"))
    assert "alias *x" in _only_error(folder, "team11_Merge").problem


def test_manifest_over_the_size_limit_is_refused(folder):
    padding = "# " + "x" * 78 + "\n"
    text = _manifest() + padding * (MAX_MANIFEST_BYTES // len(padding) + 1)
    (folder.manifests / "team11_Huge.yaml").write_text(text)
    error = _only_error(folder, "team11_Huge")
    assert f"{len(text)} bytes" in error.problem and "64 KiB" in error.problem


def test_non_utf8_byte_names_its_offset(folder):
    data = _manifest(body="name: Caf\xe9\n").encode("latin-1")
    (folder.manifests / "team11_Latin1.yaml").write_bytes(data)
    error = _only_error(folder, "team11_Latin1")
    assert error.problem == f"not UTF-8 at byte {data.index(0xE9)} (0xe9)"
    assert error.fix == "save the file as UTF-8"


def test_non_utf8_toml(folder):
    data = b'team_id = "11"\nname = "\xff"\n'
    (folder.manifests / "team11_Toml.toml").write_bytes(data)
    assert _only_error(folder, "team11_Toml").problem == f"not UTF-8 at byte {data.index(0xFF)} (0xff)"


def test_duplicate_stem_is_an_error_naming_both_files(folder):
    (folder.manifests / "2024").mkdir()
    (folder.manifests / "2025").mkdir()
    for year in ("2024", "2025"):
        (folder.manifests / year / "team11_Twice.yaml").write_text(_manifest())
    error = _only_error(folder, "team11_Twice")
    assert "two manifests share this id: 2024/team11_Twice.yaml, 2025/team11_Twice.yaml" in error.problem
    assert "rename all but one" in error.fix
    with pytest.raises(SubmissionError, match="two manifests share this id"):
        discover(folder.manifests, folder.root)


@pytest.mark.parametrize("body, field", [
    ('name: "Fast\\ud800SR"\n', "name"),
    ('weights: "trained \\udfff"\n', "weights"),
    ('requirements: ["einops\\ud800"]\n', "requirements[0]"),
    ("name: Fine\nadapter: {\"\\ud800\": 1}\n", "adapter"),
    ('name: "\\e[2J\\e[31mpwned"\n', "name"),
    ('name: "Evil\\u202eRS"\n', "name"),
    ('name: "two\\nlines"\n', "name"),
    ('name: "' + "N" * (MAX_NAME_CHARS + 1) + '"\n', "name"),
    ('weights: "' + "w" * 501 + '"\n', "weights"),
], ids=["name-surrogate", "weights-surrogate", "requirement-surrogate", "key-surrogate", "name-ansi-escape",
        "name-bidi-override", "name-newline", "name-too-long", "weights-too-long"])
def test_unstorable_or_unprintable_strings_are_refused(folder, body, field):
    (folder.manifests / "team11_Text.yaml").write_text(_manifest(body=body))
    assert _only_error(folder, "team11_Text").field_name == field


def test_nul_in_a_path_is_refused(folder):
    text = _manifest().replace("models/team10_Tiny.py", '"models/\\0x.py"')
    (folder.manifests / "team11_Nul.yaml").write_text(text)
    assert _only_error(folder, "team11_Nul").field_name == "model.file"


def test_longest_printable_name_is_kept(folder):
    name = "Ü" * MAX_NAME_CHARS
    (folder.manifests / "team11_Long.yaml").write_text(_manifest(body=f"name: {name}\n"))
    subs, errors = discover_all(folder.manifests, folder.root)
    assert not errors and {s.submission_id: s.name for s in subs}["team11_Long"] == name


@pytest.mark.parametrize("stem, expected_id, problem", [
    (os.fsdecode(b"team11_\xff\x1b"), "team11_\\udcff\\x1b", "unprintable"),
    ("_team11_Hidden", "invalid-_team11_Hidden", "starts with '.' or '_'"),
    ("team11_" + "L" * 80, "team11_" + "L" * 64 + "…", "the limit is 80 characters"),
], ids=["undecodable-bytes", "leading-underscore", "too-long"])
def test_bad_file_stems_get_a_safe_stand_in_id(folder, stem, expected_id, problem):
    (folder.manifests / f"{stem}.yaml").write_text(_manifest())
    error = _only_error(folder, expected_id)
    assert problem in error.problem and "rename the file" in error.fix


def test_duplicate_team_ids_are_errors_naming_the_others(folder):
    for sid in ("team11_A", "team11_B"):
        (folder.manifests / f"{sid}.yaml").write_text(_manifest(team="11"))
    (folder.manifests / "team12_C.yaml").write_text(_manifest(team="12"))
    subs, errors = discover_all(folder.manifests, folder.root)
    assert sorted(s.submission_id for s in subs) == [GOOD, "team12_C"]
    assert {e.submission_id: e.problem for e in errors} == {
        "team11_A": '"11" is also the team_id of team11_B; none of them is run',
        "team11_B": '"11" is also the team_id of team11_A; none of them is run',
    }
    assert all(e.field_name == "team_id" and "give each submission its own team_id" in e.fix for e in errors)
    assert len(discover_all(folder.manifests, folder.root, allow_shared_team_ids=True)[0]) == 4


def test_scale_is_validated_once_for_check_and_evaluate(folder):
    from esr_eval.check import FAIL, MANIFEST, check_submission

    path = folder.manifests / "team11_X16.yaml"
    path.write_text(_manifest().replace("scale: 4", "scale: 16"))
    error = _only_error(folder, "team11_X16")
    assert error.field_name == "scale" and error.problem == "must be one of 2, 3, 4, got 16"
    report = check_submission(path, folder.root)
    first = report.results[0]
    assert (first.name, first.status) == (MANIFEST, FAIL) and "must be one of 2, 3, 4, got 16" in first.message
    path.write_text(_manifest().replace("scale: 4", "scale: 2"))
    assert parse_manifest(path, folder.root).scale == 2


@pytest.mark.parametrize("name, content", [
    ("team11_Deep.yaml", _manifest(body="weights: " + "[" * 5000 + "]" * 5000 + "\n")),
    ("team11_Nested.yaml", _manifest(body="adapter: " + "[" * 20 + "]" * 20 + "\n")),
    ("team11_Deep.toml", 'team_id = "11"\nweights = ' + "[" * 5000 + "]" * 5000 + "\n"),
    ("team11_Nested.toml", 'team_id = "11"\nweights = ' + "[" * 20 + "]" * 20 + "\n"),
    ("team11_BigInt.yaml", _manifest(body="scale: " + "9" * 5000 + "\n")),
    ("team11_BigInt.toml", 'team_id = "11"\nscale = ' + "9" * 5000 + "\n"),
], ids=["yaml-5000-deep", "yaml-20-deep", "toml-5000-deep", "toml-20-deep", "yaml-5000-digits", "toml-5000-digits"])
def test_unparsable_documents_are_errors_not_crashes(folder, name, content):
    (folder.manifests / name).write_text(content)
    error = _only_error(folder, name.rsplit(".", 1)[0])
    assert error.field_name == "(file)"


@pytest.mark.parametrize("content", [
    _manifest(body="name: !!python/object/apply:os.system [echo hi]\n"),
    "- just\n- a list\n",
    "",
], ids=["python-tag", "not-a-mapping", "empty"])
def test_documents_refused_before_stay_refused(folder, content):
    """Regression guards (these were already errors): the safe loader stays safe."""
    (folder.manifests / "team11_Odd.yaml").write_text(content)
    assert _only_error(folder, "team11_Odd").field_name == "(file)"


def test_ls_output_stays_bounded(folder, capsys):
    """Every hostile file at once (a smaller bomb that the old code printed as megabytes): `ls` still
    lists the good submission, one short row and one short error per hostile file."""
    files = {
        "team11_Bomb.yaml": alias_bomb(levels=6).encode(),
        "team12_Latin1.yaml": _manifest(team="12", body="name: Caf\xe9\n").encode("latin-1"),
        "team13_Surrogate.yaml": _manifest(team="13", body='name: "\\ud800"\n').encode(),
        "team14_X16.yaml": _manifest(team="14").replace("scale: 4", "scale: 16").encode(),
        "team15_Deep.yaml": _manifest(team="15", body="weights: " + "[" * 3000 + "]" * 3000 + "\n").encode(),
        "team16_Twice.yaml": _manifest(team="16").encode(),
    }
    for name, data in files.items():
        (folder.manifests / name).write_bytes(data)
    (folder.manifests / "sub").mkdir()
    (folder.manifests / "sub" / "team16_Twice.yaml").write_bytes(files["team16_Twice.yaml"])
    long_class = "C" * 400  # valid, but its cell is clipped
    (folder.manifests / "team17_LongClass.yaml").write_text(_manifest(team="17").replace("TinySR", long_class))
    code = main(["ls", "--root", str(folder.root), "--manifests", str(folder.manifests)])
    out, err = capsys.readouterr()
    assert code == 1
    assert len(out) + len(err) < 1000 * (len(files) + 2), f"{len(out) + len(err)} characters printed"
    assert all(line.isprintable() for line in (out + err).splitlines())
    listed = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert set(listed) == {GOOD, "team17_LongClass", *(name.split(".")[0] for name in files)}
    assert "INVALID" not in listed[GOOD] and long_class not in out and "C" * 59 + "…" in listed["team17_LongClass"]
    assert all("INVALID" in listed[name.split(".")[0]] for name in files)
    assert err.count("\nerror: [") == len(files)
