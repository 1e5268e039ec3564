"""`esr-eval check`: every broken fixture fails the right check with its fix; good submissions pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from esr_eval.check import CHECK_NAMES, FAIL, PASS, SKIPPED, WARN, check_submission
from esr_eval.cli import main
from esr_eval.data import embedded_split, load_pair
from esr_eval.evaluate import EvaluationConfig, evaluate_submission
from esr_eval.manifest import manifest_paths, parse_manifest
from esr_eval.quality import psnr_db
from esr_eval.timing import OFFICIAL
from tests.conftest import REPO_ROOT
from tests.support.faults import BROKEN, FAULTS, HANG_TIMEOUT_S, PICKLE_MARKER, ids


@pytest.fixture(autouse=True)
def in_tmp_dir(tmp_path, monkeypatch):
    """Each test runs in an empty folder, where the pickle payload would leave its marker."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _bicubic_psnr_db() -> float:
    """Mean PSNR of torch bicubic x4 on the embedded split, computed here independently of the checker."""
    split = embedded_split()
    scores = []
    for pair in split.pairs:
        lr, hr = load_pair(pair, split.scale)
        x = torch.from_numpy(lr.transpose(2, 0, 1).astype(np.float32)).unsqueeze(0) / 255.0
        sr = torch.nn.functional.interpolate(x, scale_factor=4, mode="bicubic", align_corners=False)
        scores.append(psnr_db(np.round(sr.clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255.0).astype(np.uint8), hr, 4))
    return float(np.mean(scores))


def _check(sid: str, **limits):
    return check_submission(BROKEN / "model_zoo" / f"{sid}.yaml", BROKEN, **limits)


def test_control_passes_every_check():
    report = _check("team39_Control")
    assert report.ok and [r.status for r in report.results] == [PASS] * len(CHECK_NAMES), report.render()
    state = torch.load(BROKEN / "model_zoo" / "team39_Control.pth", weights_only=True)
    assert report.result("complexity").numbers["params"] == sum(t.numel() for t in state.values())
    psnr = report.result("psnr").numbers
    assert psnr["gain_db"] == pytest.approx(psnr["psnr_db"] - psnr["bicubic_psnr_db"]) and psnr["gain_db"] > 0
    assert psnr["bicubic_psnr_db"] == pytest.approx(_bicubic_psnr_db(), abs=1e-12)
    assert report.render().endswith("PASSED: 0 failed, 0 warnings, 0 skipped")


@pytest.mark.parametrize("fault", FAULTS, ids=ids(FAULTS))
def test_broken_fixture_fails_the_right_check_with_its_fix(fault, in_tmp_dir):
    sid, failing, message, fix, later_run = (fault.sid, fault.check, fault.check_message, fault.check_fix_text,
                                             fault.later_run)
    report = _check(sid, timeout_s=HANG_TIMEOUT_S) if sid == "team48_Hangs" else _check(sid)
    statuses = {r.name: r.status for r in report.results}
    assert list(statuses) == list(CHECK_NAMES)
    assert not report.ok and statuses[failing] == FAIL, report.render()
    result = report.result(failing)
    assert message in result.message and fix in result.fix, report.render()
    position = CHECK_NAMES.index(failing)
    assert all(statuses[name] in (PASS, WARN) for name in CHECK_NAMES[:position]), report.render()
    after = {statuses[name] for name in CHECK_NAMES[position + 1:]}
    assert (SKIPPED not in after) if later_run else after == {SKIPPED}, report.render()
    rendered = report.render()
    assert f"fix: {result.fix}" in rendered and rendered.startswith(f"esr-eval check {sid}")
    assert not (in_tmp_dir / PICKLE_MARKER).exists()


@pytest.mark.parametrize("sid", ["team45_WrongOutputShape", "team46_NaNOutput"])
def test_a_failure_is_worded_as_the_evaluators_error_row(sid):
    """One pipeline: check runs the evaluator's stages, so its failure reads as the row the evaluator writes."""
    report = _check(sid)
    forward = report.result("forward")
    row = evaluate_submission(parse_manifest(BROKEN / "model_zoo" / f"{sid}.yaml", BROKEN), [embedded_split()],
                              EvaluationConfig(protocol=OFFICIAL, hygiene=False), "r").submission
    assert forward.status == FAIL and row.status == "error"
    assert row.error == f"[{sid}] {forward.message}. Fix: {forward.fix}"


def test_pickle_fixture_really_runs_code_when_fully_unpickled(in_tmp_dir):
    """Positive control for the refusal above: the payload is live, so its absence there means something."""
    torch.load(BROKEN / "model_zoo" / "team51_PickleRunsCode.pth", weights_only=False)
    assert (in_tmp_dir / PICKLE_MARKER).exists()


def test_implausible_output_range_fails_forward_but_later_checks_run(factory):
    path = factory.make(model_source={"forward_body": "return 255.0 * torch.nn.functional.interpolate("
                                                      "x, scale_factor=4, mode='bicubic', align_corners=False)"})
    report = check_submission(path, factory.root)
    forward = report.result("forward")
    assert forward.status == FAIL and forward.numbers["in_range_fraction"] < 0.9
    assert "declared data_range 1" in forward.message and "data_range" in forward.fix
    assert all(report.result(name).status != SKIPPED for name in ("complexity", "hygiene", "psnr"))


def test_below_bicubic_is_a_warning_not_a_failure(factory):
    blur = ("return torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(x, 5, 1, 2, "
            "count_include_pad=False), scale_factor=4, mode='bicubic', align_corners=False)")
    report = check_submission(factory.make(model_source={"forward_body": blur}), factory.root)
    psnr = report.result("psnr")
    assert report.ok and psnr.status == WARN and psnr.numbers["gain_db"] < 0, report.render()
    assert "below bicubic" in psnr.message and "WARN" in report.render()


def test_every_missing_module_is_listed_at_once_with_its_line(factory):
    """Three modules this environment lacks, one in a local helper file: all named in one pass."""
    prelude = "import einops\nimport team10_helpers\nfrom timm.layers import DropPath\n"
    path = factory.make(model_source={"prelude": prelude})
    (factory.root / "models" / "team10_helpers.py").write_text("import mmcv\n")
    report = check_submission(path, factory.root)
    result = report.result("import")
    assert result.status == FAIL and "No module named 'einops'" in result.message, report.render()
    assert "imports 3 modules this environment lacks" in result.message
    for shown in ("einops (models/team10_Tiny.py:1: `import einops`)", "mmcv (models/team10_helpers.py:1: `import mmcv`)",
                  "timm (models/team10_Tiny.py:3: `from timm.layers import DropPath`)"):
        assert shown in result.message
    assert "pip install einops mmcv-lite timm" in result.fix


def test_a_missing_module_behind_an_optional_import_is_a_warning(factory):
    prelude = "try:\n    import einops\nexcept ImportError:\n    einops = None\n"
    report = check_submission(factory.make(model_source={"prelude": prelude}), factory.root)
    result = report.result("import")
    assert result.status == WARN and report.result("load").status == PASS, report.render()
    assert "einops (models/team10_Tiny.py:2: `import einops`)" in result.message and "requirements:" in result.fix


def test_invalid_manifest_fails_first_and_nothing_runs(factory):
    path = factory.make()
    path.write_text(path.read_text().replace("data_range:", "data_rnge:"))
    report = check_submission(path, factory.root)
    assert [r.status for r in report.results] == [FAIL] + [SKIPPED] * (len(CHECK_NAMES) - 1)
    assert "did you mean 'data_range'" in report.result("manifest").fix


def test_cli_check_exit_codes_for_a_failure_and_an_unknown_id(capsys):
    manifest = BROKEN / "model_zoo" / "team42_WrongKeys.yaml"
    assert main(["check", str(manifest), "--root", str(BROKEN)]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "fix:" in out and "FAILED: 1 failed" in out
    assert main(["check", "team39_Contrl", "--root", str(BROKEN)]) == 2
    assert "did you mean 'team39_Control'" in capsys.readouterr().err


def _zoo_cases():
    return [pytest.param(path, id=path.stem) for path in manifest_paths(REPO_ROOT / "model_zoo")]


@pytest.mark.parametrize("manifest", _zoo_cases())
def test_shipped_submissions_pass(manifest, capsys):
    checkpoint = (yaml.safe_load(manifest.read_text()).get("checkpoint") or {}).get("path")
    if checkpoint and not (REPO_ROOT / checkpoint).is_file():
        pytest.skip(f"{checkpoint} is absent (demo checkpoints are produced by model_zoo/train_demo.py)")
    code = main(["check", manifest.stem, "--root", str(REPO_ROOT)])
    out = capsys.readouterr().out
    assert code == 0 and "PASSED" in out, out
