"""The main job's command line: every user mistake is one ``error:`` line naming the fix, exit
status 2, found before Ray starts or a run folder exists."""

from __future__ import annotations

import pytest

import evaluate_all
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
