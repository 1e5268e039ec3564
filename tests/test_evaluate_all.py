"""The main job's command line: every user mistake is one ``error:`` line naming the fix, exit
status 2, found before Ray starts or a run folder exists."""

from __future__ import annotations

import pytest

import evaluate_all
from esr_eval.cli import build_parser, parse
from tests.conftest import REPO_ROOT

MISTAKES = {
    "unknown id": (["team77_Nobody"], "no such submission"),
    "unknown rules": (["--rank", "ntire2099"], "unknown protocol 'ntire2099'"),
    "unknown timing protocol": (["--protocol", "fastest"], "unknown timing protocol 'fastest'"),
    "missing data folder": (["--data", "/nonexistent/esr-data"], "no such folder. Fix:"),
    "split without data": (["--split", "DIV2K_LSDIR_valid"], "needs --data DIR"),
    "zero GPUs": (["--min-gpus", "0"], "--min-gpus 0: must be at least 1"),
}


@pytest.mark.parametrize("args, message", MISTAKES.values(), ids=MISTAKES.keys())
def test_user_mistake_is_one_line_exit_2_and_no_run_folder(tmp_path, capsys, args, message):
    results = tmp_path / "results"
    code = evaluate_all.main([*args, "--root", str(REPO_ROOT), "--results", str(results), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and message in err
    assert not results.exists() or not any(results.iterdir())


def test_unknown_device_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_:
        evaluate_all.main(["--device", "gpu"])
    assert exit_.value.code == 2 and "invalid choice: 'gpu'" in capsys.readouterr().err


SHARED = ["team99_Bicubic", "--root", str(REPO_ROOT), "--data", "/data", "--split", "valid", "--protocol", "official",
          "--repeats", "2", "--warmup", "0", "--threads", "1", "--no-hygiene", "--memory-limit-mb", "0",
          "--no-landlock", "--ssim", "--run-id", "r1", "--pair", "set5", "/hr", "/lr"]


@pytest.mark.parametrize("argv", [[], SHARED], ids=["defaults", "given"])
def test_shared_options_parse_as_esr_eval_evaluate_parses_them(argv, monkeypatch):
    """One definition of the options the Ray entry point shares with `esr-eval evaluate`, one default each."""
    monkeypatch.chdir(REPO_ROOT)
    ours = vars(evaluate_all.parse_args(argv))
    theirs = vars(parse(build_parser(), ["evaluate", *argv]))
    shared = (set(ours) & set(theirs)) - {"device"}  # --device: cpu for esr-eval, auto (the device plan) here
    assert {"ids", "root", "manifests", "results", "data", "split", "pair", "protocol", "run_id"} <= shared
    assert {key: ours[key] for key in shared} == {key: theirs[key] for key in shared}
    assert ours["manifests"] == ours["root"] / "model_zoo" and ours["results"] == ours["root"] / "results"
