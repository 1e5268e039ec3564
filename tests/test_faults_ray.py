"""The fault matrix through Ray (docs/FAULTS.md): every broken fixture beside the control in ONE
driver run on a local instance with fake GPUs, then a driver killed mid-run and resumed."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from esr_eval.data import embedded_split
from esr_eval.driver import DriverOptions, run_distributed
from esr_eval.evaluate import EvaluationConfig
from esr_eval.manifest import discover_all
from esr_eval.run import LOCK_NAME, RunFolder, fingerprint
from esr_eval.timing import OFFICIAL
from tests.conftest import REPO_ROOT
from tests.support.faults import (
    ACTOR_TIMEOUT_S,
    BROKEN,
    CONTROL,
    FAULTS,
    IN_PROCESS,
    PICKLE_MARKER,
    PROCESS_ONLY,
    assert_complete,
    assert_row_says,
    ids,
    slow_submissions,
)
from tests.support.ray_runs import local_ray

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray

FAKE_GPUS = 2
CONFIG = EvaluationConfig(protocol=OFFICIAL, device="cpu", complexity_input_shape=(1, 3, 32, 32))


@pytest.fixture(scope="module", autouse=True)
def ray_instance(tmp_path_factory):
    yield from local_ray(tmp_path_factory.mktemp("ray"), FAKE_GPUS)


@pytest.fixture(scope="module")
def ray_fault_run(tmp_path_factory):
    """Every broken fixture and the control in one driver run; the hang is started first."""
    workdir = tmp_path_factory.mktemp("ray_faults")
    subs, errors = discover_all(BROKEN / "model_zoo", BROKEN)
    folder = RunFolder.create(workdir / "results", "ray-faults")
    expected_s = {s.submission_id: 1.0 for s in subs if s.submission_id != "team48_Hangs"}
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)  # where the pickle payload would leave its marker
        summary = run_distributed(subs, errors, [embedded_split()], CONFIG, folder,
                                  DriverOptions(progress=False, timeout_s=ACTOR_TIMEOUT_S, expected_s=expected_s))
    tables = {t: pd.read_parquet(folder.path / t) for t in ("submissions", "splits", "samples")}
    return summary, tables, workdir


def test_every_submission_has_exactly_one_row(ray_fault_run):
    summary, tables, _ = ray_fault_run
    written = tables["submissions"]["submission_id"]
    expected = [CONTROL, *ids(FAULTS)]
    assert sorted(written) == sorted(expected) and written.is_unique
    assert summary.scheduling == "gpu" and sorted(summary.written) == sorted(expected)


@pytest.mark.parametrize("fault", IN_PROCESS, ids=ids(IN_PROCESS))
def test_fault_through_ray_same_row_as_in_process(ray_fault_run, fault):
    _, tables, workdir = ray_fault_run
    assert_row_says(tables["submissions"].set_index("submission_id").loc[fault.sid], fault)
    assert not (workdir / PICKLE_MARKER).exists() and not (REPO_ROOT / PICKLE_MARKER).exists()
    assert_complete(tables, CONTROL, images=len(embedded_split().pairs))


@pytest.mark.parametrize("fault", PROCESS_ONLY, ids=ids(PROCESS_ONLY))
def test_process_fault_through_ray(ray_fault_run, fault):
    _, tables, _ = ray_fault_run
    assert_row_says(tables["submissions"].set_index("submission_id").loc[fault.sid], fault)
    assert tables["samples"].query("submission_id == @fault.sid").empty
    assert_complete(tables, CONTROL, images=len(embedded_split().pairs))


def test_ray_driver_killed_mid_run_then_resumed(ray_instance, factory, tmp_path):
    ids = slow_submissions(factory, count=4, sleep_s=0.3)
    results = tmp_path / "results"
    run_dir = results / "killed"
    driver = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "evaluate_all.py"), "--address", ray_instance, "--root", str(factory.root),
         "--manifests", str(factory.manifests), "--results", str(results), "--run-id", "killed", "--no-hygiene",
         "--timing", "official", "--device", "cpu", "--no-progress"],
        cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while driver.poll() is None and time.monotonic() < deadline and not (
                run_dir.is_dir() and any((run_dir / "submissions").glob("*.parquet"))):
            time.sleep(0.05)
        driver.send_signal(signal.SIGKILL)
    finally:
        driver.wait()
    killed = pd.read_parquet(run_dir / "submissions")
    done = sorted(killed["submission_id"])
    assert 1 <= len(done) < len(ids), "the driver must be killed with some, not all, submissions finished"
    assert json.loads((run_dir / LOCK_NAME).read_text())["pid"] == driver.pid  # stale: its holder is dead

    subs, errors = discover_all(factory.manifests, factory.root)
    folder = RunFolder(run_dir)
    folder.lock()  # the stale lock is taken over
    try:
        summary = run_distributed(subs, errors, [embedded_split()], EvaluationConfig(protocol=OFFICIAL, device="cpu",
                                                                                     hygiene=False),
                                  folder, DriverOptions(progress=False, timeout_s=120))
    finally:
        folder.unlock()
    assert sorted(summary.skipped) == done and sorted(summary.written) == sorted(set(ids) - set(done))
    resumed = {t: pd.read_parquet(run_dir / t) for t in ("submissions", "splits", "samples")}
    for sid in ids:
        assert_complete(resumed, sid, images=len(embedded_split().pairs))
    started = resumed["submissions"].set_index("submission_id")["started_at_unix_s"]
    assert (started[done] == killed.set_index("submission_id")["started_at_unix_s"][done]).all()
    keys = resumed["submissions"].set_index("submission_id")["fingerprint"]
    split = embedded_split()
    assert all(keys[s.submission_id] == fingerprint(s, OFFICIAL.protocol_id, [split]) for s in subs)
