"""The fault matrix in-process (docs/FAULTS.md): each broken fixture gives the right row, and the
control evaluated beside it keeps complete rows; run-level faults (corrupt split, a second driver,
a killed driver) lose nothing. Hangs and hard crashes need a process per submission: see
tests/test_faults_ray.py and tests/test_check.py."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

import evaluate_all
from esr_eval.cli import main
from esr_eval.data import embedded_split
from esr_eval.records import RunIntegrityWarning, read_verified
from esr_eval.run import LOCK_NAME, RunFolder
from tests.conftest import REPO_ROOT
from tests.support.faults import (
    BROKEN,
    CONTROL,
    IN_PROCESS,
    PICKLE_MARKER,
    assert_complete,
    assert_row_says,
    ids,
    slow_submissions,
)

EVALUATE = ["--timing", "official"]


def _tables(run_dir):
    return {table: pd.read_parquet(run_dir / table) for table in ("submissions", "splits", "samples")}


@pytest.fixture(scope="module")
def fault_run(tmp_path_factory):
    """One `esr-eval evaluate` over the control and every fault that cannot end the process."""
    workdir = tmp_path_factory.mktemp("faults")
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)  # where the pickle payload would leave its marker
        with contextlib.redirect_stdout(out):
            code = main(["evaluate", "--root", str(BROKEN), CONTROL, *ids(IN_PROCESS),
                         "--results", str(workdir / "results"), "--run-id", "faults", *EVALUATE])
    return code, out.getvalue(), _tables(workdir / "results" / "faults"), workdir


def test_every_submission_has_exactly_one_row(fault_run):
    code, _, tables, _ = fault_run
    assert code == 1
    written = tables["submissions"]["submission_id"]
    assert sorted(written) == sorted([CONTROL, *ids(IN_PROCESS)]) and written.is_unique


@pytest.mark.parametrize("fault", IN_PROCESS, ids=ids(IN_PROCESS))
def test_fault_in_process(fault_run, fault):
    _, printed, tables, workdir = fault_run
    row = tables["submissions"].set_index("submission_id").loc[fault.sid]
    assert_row_says(row, fault)
    if fault.status != "ok":
        assert f"{fault.sid}: error" in printed
        assert fault.stage == "manifest" or "Traceback" in row["traceback"]
    assert not (workdir / PICKLE_MARKER).exists()
    assert_complete(tables, CONTROL, images=len(embedded_split().pairs))


def _truncate(path) -> str:
    path.write_bytes(path.read_bytes()[:100])
    return "cannot read image"


def _decompression_bomb(path) -> str:
    Image.new("1", (14_000, 14_000)).save(path)  # a 24 kB PNG that would decode to 196 M pixels
    return "decompression bomb"


@pytest.mark.parametrize("spoil", [_truncate, _decompression_bomb], ids=["truncated", "decompression_bomb"])
def test_corrupt_image_in_a_split_stops_the_run_before_any_model(tmp_path, capsys, spoil):
    """An HR/LR folder pair copied from the embedded split with one file spoilt."""
    split = embedded_split()
    hr_dir, lr_dir = tmp_path / "corrupt_HR", tmp_path / "corrupt_LR"
    hr_dir.mkdir()
    lr_dir.mkdir()
    for pair in split.pairs:
        (hr_dir / pair.hr_path.name).write_bytes(pair.hr_path.read_bytes())
        (lr_dir / pair.lr_path.name).write_bytes(pair.lr_path.read_bytes())
    bad = lr_dir / split.pairs[1].lr_path.name
    reason = spoil(bad)
    results = tmp_path / "results"
    args = ["--root", str(BROKEN), CONTROL, "--pair", "corrupt", str(hr_dir), str(lr_dir),
            "--results", str(results), "--run-id", "corrupt"]
    assert main(["evaluate", *args, *EVALUATE]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and reason in err and "valid 8-bit PNG" in err
    assert evaluate_all.main([*args, "--no-progress"]) == 2  # the Ray entry point refuses before connecting
    err = capsys.readouterr().err
    assert err.startswith("error: ") and bad.name in err and reason in err
    assert not (results / "corrupt").exists()


def test_second_driver_on_the_same_run_id_refuses(tmp_path, capsys):
    args = ["evaluate", "--root", str(BROKEN), CONTROL, "--results", str(tmp_path), "--run-id", "shared", *EVALUATE]
    assert main(args) == 0
    before = _tables(tmp_path / "shared")
    holder = RunFolder.create(tmp_path, "shared")
    holder.lock()  # a live driver (this process) holds the run
    try:
        capsys.readouterr()
        assert main(args[:4] + ["team47_MutatesInput"] + args[4:]) == 2
        assert "being written by another driver" in capsys.readouterr().err
        capsys.readouterr()
        assert evaluate_all.main(args[1:] + ["--no-progress"]) == 2
        assert f"pid {os.getpid()}" in capsys.readouterr().err
    finally:
        holder.unlock()
    after = _tables(tmp_path / "shared")
    pd.testing.assert_frame_equal(before["submissions"], after["submissions"])
    assert_complete(after, CONTROL, images=len(embedded_split().pairs))


def _finished(run_dir) -> list[str]:
    """Submissions whose rows the driver has committed: their part is on disk and in the ledger (a
    part written just before the driver died, but not yet recorded, is measured again on resume)."""
    try:
        recorded = json.loads((run_dir / "ledger.json").read_text())["files"]
    except (OSError, ValueError, KeyError):
        return []
    return sorted(Path(relpath).stem for relpath in recorded
                  if relpath.startswith("submissions/") and (run_dir / relpath).is_file())


def test_driver_killed_mid_run_then_resumed(factory, tmp_path, capsys):
    ids = slow_submissions(factory, count=3, sleep_s=0.2)
    run_dir = tmp_path / "results" / "killed"
    args = ["evaluate", "--root", str(factory.root), "--manifests", str(factory.manifests),
            "--results", str(tmp_path / "results"), "--run-id", "killed", "--no-hygiene", *EVALUATE]
    driver = subprocess.Popen([sys.executable, "-m", "esr_eval.cli", *args], cwd=REPO_ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not _finished(run_dir) and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        driver.send_signal(signal.SIGKILL)
    finally:
        driver.wait()
    done = _finished(run_dir)
    assert 1 <= len(done) < len(ids), "the driver must be killed with some, not all, submissions finished"
    images = len(embedded_split().pairs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RunIntegrityWarning)  # a part written but not yet recorded is unexpected
        killed = {table: read_verified(run_dir, table) for table in ("submissions", "splits", "samples")}
    assert sorted(killed["submissions"]["submission_id"]) == done
    for sid in done:
        assert_complete(killed, sid, images)
    lock = json.loads((run_dir / LOCK_NAME).read_text())
    assert lock["pid"] == driver.pid  # left behind by the killed driver: stale

    assert main(args) == 0  # takes the stale lock over and resumes
    printed = capsys.readouterr().out
    resumed = _tables(run_dir)
    assert sorted(resumed["submissions"]["submission_id"]) == sorted(ids)
    for sid in ids:
        assert_complete(resumed, sid, images)
        assert (f"{sid}: already complete in this run, skipped" in printed) == (sid in done)
    started = resumed["submissions"].set_index("submission_id")["started_at_unix_s"]
    assert (started[done] == killed["submissions"].set_index("submission_id")["started_at_unix_s"][done]).all()
    assert not (run_dir / LOCK_NAME).exists()
