"""The main job's command line: every user mistake is one ``error:`` line naming the fix, exit
status 2, found before Ray starts or a run folder exists."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest

import evaluate_all
from esr_eval.cli import build_parser, parse
from tests.conftest import REPO_ROOT

MISTAKES = {
    "unknown id": (["team77_Nobody"], "no submission matches 'team77_Nobody'"),
    "id near one": (["SPN"], "no submission matches 'SPN'. Fix: did you mean team04_SPAN (SPAN)?"),
    "unknown rules": (["--rank", "ntire2099"], "unknown protocol 'ntire2099'"),
    "rules for other splits": (["--rank", "ntire2024"], "--rank ntire2024 ranks splits DIV2K_LSDIR_valid (valid), "
                               "DIV2K_LSDIR_test (test), which this run does not have (it has embedded)"),
    "unknown timing protocol": (["--timing", "fastest"], "unknown timing protocol 'fastest'. Fix:"),
    "missing data folder": (["--data", "/nonexistent/esr-data"], "no such folder. Fix:"),
    "split without data": (["--split", "DIV2K_LSDIR_valid"], "needs --data DIR"),
    "unknown device": (["--device", "gpu"], "--device gpu: not a device plan of evaluate_all.py. Fix: pass auto, "
                       "cuda or cpu"),
    "zero GPUs": (["--min-gpus", "0"], "--min-gpus 0: must be at least 1"),
}


@pytest.mark.parametrize("args, message", MISTAKES.values(), ids=MISTAKES.keys())
def test_user_mistake_is_one_line_exit_2_and_no_run_folder(tmp_path, capsys, args, message):
    results = tmp_path / "results"
    code = evaluate_all.main([*args, "--root", str(REPO_ROOT), "--results", str(results), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert not results.exists() or not any(results.iterdir())


def test_version_is_the_package_metadata(capsys):
    with pytest.raises(SystemExit) as exit_:
        evaluate_all.main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"esr-eval {metadata.version('esr-eval')}"


def test_protocol_still_means_the_timing_protocol_with_a_warning(capsys):
    assert evaluate_all.parse_args(["--protocol", "official"]).timing == "official"
    assert capsys.readouterr().err == ("warning: --protocol is deprecated and will be removed in the next release; "
                                       "write --timing official\n")


SHARED = ["team99_Bicubic", "--root", str(REPO_ROOT), "--data", "/data", "--split", "valid", "--timing", "official",
          "--repeats", "2", "--warmup", "0", "--threads", "1", "--no-hygiene", "--memory-limit-mb", "0",
          "--no-landlock", "--ssim", "--run-id", "r1", "--pair", "set5", "/hr", "/lr"]


@pytest.mark.parametrize("argv", [[], SHARED], ids=["defaults", "given"])
def test_shared_options_parse_as_esr_eval_evaluate_parses_them(argv, monkeypatch):
    """One definition of the options the Ray entry point shares with `esr-eval evaluate`, one default each."""
    monkeypatch.chdir(REPO_ROOT)
    ours = vars(evaluate_all.parse_args(argv))
    theirs = vars(parse(build_parser(), ["evaluate", *argv]))
    shared = (set(ours) & set(theirs)) - {"device"}  # --device: cpu for esr-eval, auto (the device plan) here
    assert {"ids", "root", "manifests", "results", "data", "split", "pair", "timing", "run_id"} <= shared
    assert {key: ours[key] for key in shared} == {key: theirs[key] for key in shared}
    assert ours["manifests"] == ours["root"] / "model_zoo" and ours["results"] == Path("results")
