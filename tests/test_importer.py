"""Tests of esr_eval.importer: the fixture NTIRE repository (tests/fixtures/ntire_repo) and small
inline test_demo.py sources for the patterns the fixture does not hold."""

import hashlib
import importlib.util
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from esr_eval.importer import ImportReport, NtireImportError, import_ntire, translate_test_demo
from esr_eval.loading import load_submission
from esr_eval.manifest import parse_manifest

FIXTURE = Path(__file__).parent / "fixtures" / "ntire_repo"
FIXTURE_SOURCE = (FIXTURE / "test_demo.py").read_text(encoding="utf-8").splitlines()

# What each branch of the fixture's select_model says, written out by hand from test_demo.py.
EXPECTED = {
    "team00_RLFN_baseline": dict(
        model_id=0, name="RLFN_baseline", file="models/team00_RLFN.py", cls="RLFN_Prune",
        args=[], kwargs={}, path="model_zoo/team00_rlfn.pth", key=None, strict=True,
        data_range=1.0, pad=None),
    "team01_IMDN": dict(
        model_id=1, name="IMDN", file="models/team01_IMDN.py", cls="IMDN", args=[3, 3, 6, 4],
        kwargs={}, path="model_zoo/team01_imdn.pt", key="params", strict=False, data_range=1.0,
        pad=None),
    "team02_DAT_light": dict(
        model_id=2, name="DAT_light", file="models/team02_DAT.py", cls="DAT", args=[],
        kwargs={"upscale": 4, "depth": [2, 2], "dim": 6, "mlp_ratio": 2.0,
                "block_cfg": {"kernel_sizes": [3, 1], "act": {"type": "lrelu", "slope": 0.1}}},
        path="model_zoo/team02_dat.pkl", key="params_ema|params", strict=True, data_range=1.0,
        pad=None),
    "team03_SPAN": dict(
        model_id=3, name="SPAN", file="models/team03_SPAN.py", cls="SPAN", args=[3, 3],
        kwargs={"feature_channels": 4, "upscale": 4}, path="model_zoo/team03_span.pth",
        key="params_ema|params", strict=True, data_range=255.0, pad=None),
    "team04_EFDN": dict(
        model_id=4, name="EFDN", file="models/team04_EFDN.py", cls="EFDN", args=[],
        kwargs={"feature_channels": 5}, path="model_zoo/team04_efdn.pt", key=None, strict=True,
        data_range=1.0, pad=None),
    "team08_OmniSR": dict(
        model_id=8, name="OmniSR", file="models/team08_OmniSR.py", cls="OmniSR", args=[],
        kwargs={}, path="model_zoo/team08_omnisr.pth", key=None, strict=True, data_range=1.0,
        pad=8),
    "team23_DSCF": dict(
        model_id=23, name="DSCF", file="models/team23_DSCF.py", cls="DSCF", args=[3, 3],
        kwargs={"feature_channels": 4, "upscale": 4}, path="model_zoo/team23_dscf.pth",
        key=None, strict=True, data_range=1.0, pad=16),
    "team34_craft": dict(  # picks its key through a variable: `loadnet[keyname]`
        model_id=34, name="craft", file="models/team34_CRAFT.py", cls="CRAFT", args=[],
        kwargs={"upscale": 4, "embed_dim": 4}, path="model_zoo/team34_craft.pth",
        key="params_ema|params", strict=True, data_range=255.0, pad=None),
    "team12_MergeNet": dict(  # its own load_state_dict merges its layers before loading
        model_id=12, name="MergeNet", file="models/team12_MergeNet.py", cls="MergeNet", args=[],
        kwargs={"channels": 4}, path="model_zoo/team12_mergenet.pth", key=None, strict=True,
        data_range=1.0, pad=None),
    "team44_RepSPAN": dict(
        model_id=44, name="RepSPAN", file="models/team44_RepSPAN.py", cls="RepSPAN", args=[],
        kwargs={"feature_channels": 4}, path="model_zoo/team44_repspan.pth", key="params",
        strict=True, data_range=1.0, pad=None, after_load=[{"method": "repa"}]),
    "team17_FSANet": dict(
        model_id=17, name="FSANet", file="models/team17_FSANet.py", cls="FSANet", args=[],
        kwargs={"fea_ch": 4}, path="model_zoo/team17_fsanet.pth", key="params", strict=True,
        data_range=1.0, pad=None, after_load=[{"method": "switch_deploy", "each_module": True}]),
    "team40_MambaLight": dict(
        model_id=40, name="MambaLight", file="models/team40_MambaLight.py", cls="MambaLight",
        args=[], kwargs={}, path=None, key=None, strict=None, data_range=1.0, pad=None,
        after_load=[{"method": "load_weights", "path": "model_zoo/team40_mambalight.pth"}]),
    "team101_IMDN_fast": dict(
        model_id=101, name="IMDN_fast", file="models/team01_IMDN.py", cls="IMDN",
        args=[3, 3, 6, 4], kwargs={}, path="model_zoo/team01_imdn.pt", key="params",
        strict=False, data_range=1.0, pad=None),
}


def fixture_line(text: str) -> int:
    """1-based line of the only fixture line containing ``text``."""
    hits = [number for number, line in enumerate(FIXTURE_SOURCE, start=1) if text in line]
    assert len(hits) == 1, f"{text!r} occurs {len(hits)} times in the fixture test_demo.py"
    return hits[0]


def copy_fixture(destination: Path) -> Path:
    checkout = destination / "ntire_repo"
    shutil.copytree(FIXTURE, checkout, ignore=shutil.ignore_patterns("__pycache__"))
    return checkout


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    checkout = copy_fixture(tmp_path_factory.mktemp("checkout"))
    out_dir = tmp_path_factory.mktemp("manifests")
    modules_before = set(sys.modules)
    report = import_ntire(checkout, out_dir)
    return checkout, out_dir, report, set(sys.modules) - modules_before


def read_manifest(out_dir: Path, submission_id: str) -> dict:
    return yaml.safe_load((out_dir / f"{submission_id}.yaml").read_text(encoding="utf-8"))


def test_the_fixture_guard_fires_when_test_demo_py_is_run(tmp_path):
    checkout = copy_fixture(tmp_path)
    run = subprocess.run([sys.executable, "test_demo.py"], cwd=checkout, capture_output=True,
                         text=True, timeout=30)
    assert run.returncode != 0 and "must never be executed" in run.stderr
    assert (checkout / "EXECUTED").exists()


def test_importing_neither_runs_test_demo_nor_imports_model_files(imported):
    checkout, _, _, new_modules = imported
    assert not (checkout / "EXECUTED").exists()
    assert not [m for m in new_modules if m.startswith("models") or "test_demo" in m]


def test_exactly_the_translatable_branches_are_written(imported):
    _, out_dir, report, _ = imported
    assert sorted(p.stem for p in out_dir.glob("*.yaml")) == sorted(EXPECTED)
    assert sorted(p.name for p in report.written) == sorted(f"{s}.yaml" for s in EXPECTED)
    for branch in report.translated:
        assert branch.line == fixture_line(f"if model_id == {branch.model_id}:")


@pytest.mark.parametrize("submission_id", sorted(EXPECTED))
def test_manifest_fields_read_back(imported, submission_id):
    _, out_dir, _, _ = imported
    expected = EXPECTED[submission_id]
    manifest = read_manifest(out_dir, submission_id)
    assert manifest["team_id"] == f"{expected['model_id']:02d}"
    assert manifest["name"] == expected["name"]
    assert manifest["model"] == {"file": expected["file"], "class": expected["cls"],
                                 "args": expected["args"], "kwargs": expected["kwargs"]}
    checkpoint = manifest.get("checkpoint")
    if expected["path"] is None:
        assert checkpoint is None
    else:
        assert checkpoint["path"] == expected["path"]
        assert checkpoint["key"] == expected["key"]
        assert checkpoint["strict"] is expected["strict"]
        assert checkpoint["trusted_pickle"] is False and "sha256" not in checkpoint
    assert manifest.get("after_load") == expected.get("after_load")
    assert manifest["data_range"] == expected["data_range"]
    assert isinstance(manifest["data_range"], float)
    assert manifest["scale"] == 4
    assert manifest.get("adapter", {}).get("pad_to_multiple") == expected["pad"]
    assert manifest["requirements"] == (["einops"] if submission_id == "team08_OmniSR" else [])
    assert f"model_id {expected['model_id']}" in manifest["weights"]


@pytest.mark.parametrize("checksum", [False, True])
def test_every_written_manifest_parses_with_the_manifest_parser(tmp_path, checksum):
    checkout = copy_fixture(tmp_path)
    report = import_ntire(checkout, tmp_path / "out", checksum=checksum)
    assert report.written
    for branch, path in zip(report.translated, report.written):
        submission = parse_manifest(path, checkout)
        assert submission.submission_id == branch.submission_id
        assert submission.model == branch.document.model
        assert submission.checkpoint == branch.checkpoint
        assert (submission.data_range, submission.adapter.pad_to_multiple) == (
            branch.data_range, branch.pad_to_multiple)


def test_untranslatable_branches_are_reported_with_line_and_reason(imported):
    _, _, report, _ = imported
    by_id = {branch.model_ids: branch for branch in report.untranslated}
    assert sorted(by_id) == [(6,), (7,)]
    factory, runtime = by_id[(6,)], by_id[(7,)]
    assert factory.line == fixture_line("elif model_id == 6:")
    assert "helper function `build_model()`" in factory.reason
    assert f"line {fixture_line('model = build_model(')}" in factory.reason
    assert runtime.line == fixture_line("elif model_id == 7:")
    assert "checkpoint path is computed at run time from `args.model_zoo`" in runtime.reason
    summary = report.summary_text()
    assert f"line {factory.line} (model_id 6)" in summary
    assert all(path.name in summary for path in report.written)


def load_module(path: Path):
    spec = importlib.util.spec_from_file_location(f"importer_test_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def state_dict_under(checkpoint, key):
    """The manifest key rule: None = root, "a.b" = nested, "x|y" = x if present else y."""
    if key is None:
        return checkpoint
    if "|" in key:
        return next(checkpoint[k] for k in key.split("|") if k in checkpoint)
    for part in key.split("."):
        checkpoint = checkpoint[part]
    return checkpoint


@pytest.mark.parametrize("submission_id", sorted(s for s, e in EXPECTED.items() if e["path"]))
def test_fixture_checkpoints_load_with_the_parsed_settings(imported, submission_id):
    checkout, out_dir, _, _ = imported
    manifest = read_manifest(out_dir, submission_id)
    cls = getattr(load_module(checkout / manifest["model"]["file"]), manifest["model"]["class"])
    model = cls(*manifest["model"]["args"], **manifest["model"]["kwargs"])
    checkpoint = torch.load(checkout / manifest["checkpoint"]["path"], weights_only=True)
    state = state_dict_under(checkpoint, manifest["checkpoint"]["key"])
    model.load_state_dict(state, strict=manifest["checkpoint"]["strict"])
    if not manifest["checkpoint"]["strict"]:
        with pytest.raises(RuntimeError, match="Unexpected key"):
            model.load_state_dict(state, strict=True)
    with torch.no_grad():
        output = model(torch.rand(1, 3, 32, 32) * manifest["data_range"])
    assert output.shape == (1, 3, 128, 128)


def test_checksum_option_records_the_checkpoint_sha256(tmp_path):
    checkout = copy_fixture(tmp_path)
    import_ntire(checkout, tmp_path / "out", checksum=True)
    manifest = read_manifest(tmp_path / "out", "team02_DAT_light")
    expected = hashlib.sha256((checkout / "model_zoo/team02_dat.pkl").read_bytes()).hexdigest()
    assert manifest["checkpoint"]["sha256"] == expected


def write_demo(checkout: Path, chain: str, extra: str = "") -> None:
    """A minimal test_demo.py whose select_model holds ``chain`` (an if/elif chain)."""
    (checkout / "models").mkdir(parents=True, exist_ok=True)
    (checkout / "models" / "team00_Net.py").write_text("class Net:\n    pass\n")
    body = textwrap.indent(textwrap.dedent(chain).strip("\n"), "    ")
    (checkout / "test_demo.py").write_text(
        "import os\nimport torch\n\n"
        f"{textwrap.dedent(extra)}\n"
        "def select_model(args, device):\n"
        "    model_id = args.model_id\n"
        f"{body}\n"
        "    else:\n"
        "        raise NotImplementedError(model_id)\n"
        "    return model, name, data_range, None\n")


def only_branch(checkout: Path):
    translated, untranslated = translate_test_demo(checkout)
    assert len(translated) + len(untranslated) == 1
    return (translated or untranslated)[0]


BRANCH_HEAD = """\
if model_id == 0:
    from models.team00_Net import Net
    name, data_range = f"{model_id:02}_Net", 1.0
"""


@pytest.mark.parametrize("lines, key", [
    ("sd = torch.load('model_zoo/a.pth')\nprint(model)\nlogger.info(sd)\n"
     "model.load_state_dict(sd.get('params_ema', sd['params']))", "params_ema|params"),
    ("model.load_state_dict(torch.load('model_zoo/a.pth')['state']['params'])", "state.params"),
    ("sd = torch.load('./model_zoo/../model_zoo/a.pth')\n"
     "if 'params_ema' in sd.keys():\n    sd = sd['params_ema']\n"
     "elif 'params' in sd:\n    sd = sd['params']\nelse:\n    sd = sd['state_dict']\n"
     "model.load_state_dict(sd, False)", "params_ema|params|state_dict"),
    ("loadnet = torch.load('model_zoo/a.pth')\n"
     "keyname = 'params_ema' if 'params_ema' in loadnet else 'params'\n"
     "model.load_state_dict(loadnet[keyname], strict=True)", "params_ema|params"),
    ("loadnet = torch.load('model_zoo/a.pth')\nkeyname = 'params'\n"
     "if 'params_ema' in loadnet:\n    keyname = 'params_ema'\n"
     "model.load_state_dict(loadnet[keyname])", "params_ema|params"),
    ("loadnet = torch.load('model_zoo/a.pth')\n"
     "if 'params_ema' in loadnet.keys():\n    keyname = 'params_ema'\n"
     "elif 'params' in loadnet:\n    keyname = 'params'\nelse:\n    keyname = 'state_dict'\n"
     "model.load_state_dict(loadnet[keyname], strict=False)", "params_ema|params|state_dict"),
    ("loadnet = torch.load('model_zoo/a.pth')\nstate = loadnet['params']\n"
     "if 'params_ema' in loadnet:\n    state = loadnet['params_ema']\n"
     "model.load_state_dict(state)", "params_ema|params"),
])
def test_checkpoint_key_patterns(tmp_path, lines, key):
    write_demo(tmp_path, BRANCH_HEAD + "    model = Net()\n" + textwrap.indent(lines, "    "))
    branch = only_branch(tmp_path)
    assert branch.checkpoint.key == key
    assert branch.checkpoint.path == "model_zoo/a.pth"
    assert branch.checkpoint.strict is ("False" not in lines)


@pytest.mark.parametrize("lines, reason", [
    ("sd = torch.load('a.pth')\nif 'params' in sd:\n    sd = sd['params']\n"
     "model = Net()\nmodel.load_state_dict(sd)", "otherwise the root state dict"),
    ("sd = torch.load('a.pth')\nmodel = Net()\nmodel.load_state_dict(sd.get('params', sd))",
     "otherwise the root state dict"),
    ("sd = torch.load('a.pth')\nmodel = Net()\n"
     "model.load_state_dict(sd['params'] if 'params' in sd else sd)", "otherwise the root state"),
    ("model = Net(dim=DIM)", "constructor argument `dim` of `Net` (line 10) refers to `DIM`"),
    ("model = Net(scale=args.scale)", "computed at run time from `args.scale`"),
    ("sd = torch.load('a.pth')\nfor k in list(sd):\n    sd[k[7:]] = sd.pop(k)\n"
     "model = Net()\nmodel.load_state_dict(sd)", "`for` loop at line 11 inside the branch"),
    ("model = Net()\nmodel = model.half()", "model is the result of `.half()` (line 11)"),
    ("model = Net()\nconvert_weights(model)", "passed to `convert_weights()` at line 11"),
    ("model = Net()\ndata_range = 2.0", "manifests accept 1.0 or 255.0"),
    ("from basicsr.archs.rrdb import RRDB\nmodel = RRDB()", "not a file of the checkout"),
    ("model = Net()\nmodel.load_state_dict(torch.load('a.pth'))\n"
     "model.load_state_dict(torch.load('b.pth'))", "lines 11, 12"),
])
def test_untranslatable_patterns_name_the_reason(tmp_path, lines, reason):
    write_demo(tmp_path, BRANCH_HEAD + textwrap.indent(lines, "    "))
    branch = only_branch(tmp_path)
    assert branch.line == 7 and branch.model_ids == (0,)
    assert reason in branch.reason


@pytest.mark.parametrize("lines, reason", [
    ("m = importlib.import_module('models.team00_Net')\nmodel = getattr(m, 'Net-2')()",
     "model.class must be a Python class name"),
    ("model = Net()\nname = 'N' * 81", "name is 81 characters long"),
    ("model = Net()\nname = 'N' * 75", "the file stem (the submission id) is 82 characters"),
])
def test_values_the_manifest_model_refuses_are_not_written(tmp_path, lines, reason):
    write_demo(tmp_path, BRANCH_HEAD + textwrap.indent(lines, "    "))
    branch = only_branch(tmp_path)
    assert branch.model_ids == (0,)
    assert "the manifest would not validate" in branch.reason and reason in branch.reason


def test_shared_branch_duplicate_ids_and_padding_modes(tmp_path):
    write_demo(tmp_path, """\
        if model_id in (1, 2):
            from models.team00_Net import Net
            name, data_range = "Shared", 255
            model = Net(*[3, 4], **dict(width=(2, 2)))
        elif model_id == 1:
            from models.team00_Net import Net
            name, data_range = "Again", 1.0
            model = Net()
        """, extra="""\
        def run(img, args):
            if args.model_id == 2:
                img = F.pad(img, (0, 1, 0, 1), mode='replicate')
        """)
    translated, untranslated = translate_test_demo(tmp_path)
    assert [b.submission_id for b in translated] == ["team01_Shared"]
    assert translated[0].args == (3, 4) and translated[0].kwargs == {"width": [2, 2]}
    assert translated[0].data_range == 255.0 and translated[0].checkpoint is None
    assert any("tuple" in note for note in translated[0].notes)
    reasons = {b.model_ids: b.reason for b in untranslated}
    assert "only reflect-pads" in reasons[(2,)]
    shared_line = (tmp_path / "test_demo.py").read_text().splitlines().index(
        "    if model_id in (1, 2):") + 1
    assert f"already handled by the branch at line {shared_line}" in reasons[(1,)]


@pytest.mark.parametrize("source, message", [
    (None, "not found"),
    ("def select_model(args, device):\n    if model_id = 0:\n        pass\n", "test_demo.py:2"),
    ("def pick(args):\n    return None\n", "no top-level `def select_model"),
    ("def select_model(args, device):\n    return None\n", "no `if model_id == N:` chain"),
])
def test_unreadable_files_raise_a_clear_error(tmp_path, source, message):
    if source is not None:
        (tmp_path / "test_demo.py").write_text(source)
    with pytest.raises(NtireImportError, match=message.replace("(", r"\(")):
        import_ntire(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("lines, reason, names_forms", [
    ("loadnet = torch.load('a.pth')\nif 'params_ema' in loadnet:\n    keyname = 'params_ema'\n"
     "else:\n    keyname = None\nmodel.load_state_dict(loadnet[keyname])",
     "leaves `keyname` without a key name when 'params_ema' is absent", True),
    ("loadnet = torch.load('a.pth')\nif 'params_ema' in loadnet:\n    keyname = 'params'\n"
     "else:\n    keyname = 'params'\nmodel.load_state_dict(loadnet[keyname])",
     "`if` statement at line 12 inside the branch: not a recognised pattern", True),
    ("loadnet = torch.load('a.pth')\nother = torch.load('b.pth')\n"
     "keyname = 'params_ema' if 'params_ema' in other else 'params'\n"
     "model.load_state_dict(loadnet[keyname])", "key is chosen by testing another checkpoint", False),
])
def test_refused_key_choices_say_which_forms_are_read(tmp_path, lines, reason, names_forms):
    write_demo(tmp_path, BRANCH_HEAD + "    model = Net()\n" + textwrap.indent(lines, "    "))
    branch = only_branch(tmp_path)
    assert reason in branch.reason
    if names_forms:
        assert "`keyname = 'k' if 'k' in sd else 'j'` then `sd[keyname]`" in branch.reason
        assert "as `checkpoint.key: k|j` (the first key present)" in branch.reason


@pytest.mark.parametrize("lines, after_load", [
    ("model.repa()", [{"method": "repa"}]),
    ("model.fuse(True, mode='deploy')\nmodel.eval()",
     [{"method": "fuse", "args": [True], "kwargs": {"mode": "deploy"}}]),
    ("model.load_weights(os.path.join('model_zoo', 'w.pth'), strict=True)",
     [{"method": "load_weights", "path": "model_zoo/w.pth", "kwargs": {"strict": True}}]),
    ("for _, m in model.named_modules():\n    if hasattr(m, 'fuse'):\n        m.fuse(2)",
     [{"method": "fuse", "args": [2], "each_module": True}]),
    ("for name, p in model.named_parameters():\n    p.requires_grad = False", None),
])
def test_calls_after_the_load_become_after_load(tmp_path, lines, after_load):
    write_demo(tmp_path, BRANCH_HEAD + "    model = Net()\n"
               "    model.load_state_dict(torch.load('model_zoo/a.pth'))\n" + textwrap.indent(lines, "    "))
    branch = only_branch(tmp_path)
    document = branch.document.model_dump(by_alias=True, exclude_unset=True, mode="json")
    assert document.get("after_load") == after_load
    if after_load is None:
        assert any("freezes the parameters" in note for note in branch.notes)


@pytest.mark.parametrize("lines, reason", [
    ("model = Net()\nmodel.repa()\nmodel.load_state_dict(torch.load('a.pth'))",
     "`.repa()` at line 11 is called before load_state_dict (line 12)"),
    ("model = Net()\nmodel.load_from(3, 'model_zoo/w.pth')", "takes a file as argument 2"),
    ("model = Net()\nmodel.fuse(args.deploy)", "an argument of `.fuse()` (line 11) is computed at run time"),
    ("model = Net()\nmodel.body.fuse()", "`model.body.fuse()` at line 11 calls a method of a part of the model"),
    ("model = Net()\nfor m in model.modules():\n    if isinstance(m, Rep):\n        m.fuse()",
     "`for` loop at line 11 inside the branch: not a recognised pattern; import-ntire reads "
     "`for m in model.modules(): if hasattr(m, 'name'): m.name()` as "
     "`after_load: [{method: name, each_module: true}]`"),
])
def test_refused_calls_name_the_construct(tmp_path, lines, reason):
    write_demo(tmp_path, BRANCH_HEAD + textwrap.indent(lines, "    "))
    branch = only_branch(tmp_path)
    assert branch.model_ids == (0,) and reason in branch.reason


def test_an_empty_branch_is_reported_as_empty(tmp_path):
    write_demo(tmp_path, BRANCH_HEAD + "    model = Net()\nelif model_id == 1:\n    pass\n")
    translated, untranslated = translate_test_demo(tmp_path)
    assert [b.model_id for b in translated] == [0]
    (empty,) = untranslated
    assert empty.model_ids == (1,)
    assert empty.reason.startswith("branch for model id 1 is empty")
    assert empty.manifest_lines[:3] == (
        "# team01_<Name>.yaml: fill in every <…>, then check it with `esr-eval check`",
        'team_id: "01"', "name: <Name>")
    assert "  class: <ClassName>" in empty.manifest_lines


def test_three_digit_ids_state_the_submission_id_and_four_digits_are_refused(imported, tmp_path):
    _, _, report, _ = imported
    (branch,) = [b for b in report.translated if b.model_id == 101]
    assert branch.submission_id == "team101_IMDN_fast" and branch.team_id == "101"
    assert ('model_id 101 has three digits: written as team_id "101", submission id team101_IMDN_fast'
            in branch.notes)
    assert "team101_IMDN_fast" in report.summary_text()
    write_demo(tmp_path, BRANCH_HEAD.replace("model_id == 0", "model_id == 1000") + "    model = Net()\n")
    assert "model_id 1000 does not fit a team id of two or three digits" in only_branch(tmp_path).reason


def test_a_refusal_shows_manifest_lines_that_validate_once_pasted(tmp_path):
    (tmp_path / "model_zoo").mkdir()
    torch.save({"params": {}}, tmp_path / "model_zoo" / "a.pth")
    write_demo(tmp_path, BRANCH_HEAD + "    model = Net(4, width=2)\n"
               "    model.load_state_dict(torch.load('model_zoo/a.pth')['params'], strict=False)\n"
               "    model.repa()\n"
               "    for m in model.modules():\n        m.switch(model_id)\n")
    branch = only_branch(tmp_path)
    assert branch.reason.startswith("`for` loop at line 13 inside the branch")
    header, *lines = branch.manifest_lines
    assert header.startswith("# team00_Net.yaml: ") and not any("<" in line for line in lines)
    manifest = tmp_path / "team00_Net.yaml"
    manifest.write_text("\n".join(branch.manifest_lines) + "\n")
    submission = parse_manifest(manifest, tmp_path)
    assert (submission.model.args, submission.model.kwargs) == ((4,), {"width": 2})
    assert (submission.checkpoint.key, submission.checkpoint.strict) == ("params", False)
    assert [call.method for call in submission.after_load] == ["repa"]
    summary = ImportReport(tmp_path / "test_demo.py", tmp_path, (), (branch,), ()).summary_text()
    assert "      write instead:\n        # team00_Net.yaml: " in summary


def test_a_refusal_before_the_load_leaves_placeholders_for_what_is_unknown(tmp_path):
    write_demo(tmp_path, BRANCH_HEAD + "    model = Net()\n"
               "    model.load_state_dict(torch.load(args.weights))\n")
    branch = only_branch(tmp_path)
    assert "checkpoint path is computed at run time from `args.weights`" in branch.reason
    assert "  path: <model_zoo/file.pth>  # the weights file, relative to the checkout" in branch.manifest_lines
    assert any(line.startswith("  key: <key>  # 'params_ema|params' = the first present")
               for line in branch.manifest_lines)


@pytest.mark.parametrize("submission_id", sorted(EXPECTED))
def test_every_imported_manifest_loads_through_the_evaluator(imported, submission_id):
    checkout, out_dir, _, _ = imported
    loaded = load_submission(parse_manifest(out_dir / f"{submission_id}.yaml", checkout))
    expected = EXPECTED[submission_id]
    assert loaded.info.missing_keys == () and (loaded.info.unexpected_keys != ()) is (
        expected["strict"] is False)
    ran = [call.split(" [")[0] for call in loaded.info.after_load]
    assert ran == {"team44_RepSPAN": ["repa()"],
                   "team17_FSANet": ["switch_deploy() on every module that has it"],
                   "team40_MambaLight": ["load_weights('model_zoo/team40_mambalight.pth')"]
                   }.get(submission_id, [])
    with torch.no_grad():
        output = loaded.model(torch.rand(1, 3, 8, 8) * expected["data_range"])
    assert output.shape == (1, 3, 32, 32)
