"""Containment: what a submission spawns dies with its run (double forks included), memory past
the limit fails inside the run, and the record says what was active and what was killed."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest

from esr_eval.containment import contained

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="subreaper is Linux-only")

DAEMON = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(600)\n"


def _alive_sleepers(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if marker in " ".join(proc.info["cmdline"] or []) and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(proc)
    return found


def test_a_double_forked_daemon_does_not_outlive_the_run():
    marker = f"esr-containment-{os.getpid()}-{time.time_ns()}"
    with contained(memory_limit_mb=None) as record:
        subprocess.run([sys.executable, "-c", DAEMON, marker], check=True)  # returns at once; grandchild lives
        time.sleep(0.2)
        assert _alive_sleepers(marker), "the daemon should be running inside the run"
    assert record.subreaper and record.leftover_processes_killed >= 1
    assert any(marker in command for command in record.leftover_commands)
    assert not _alive_sleepers(marker)


def test_processes_that_existed_before_are_left_alone():
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        with contained(memory_limit_mb=None) as record:
            pass
        assert sleeper.poll() is None and record.leftover_processes_killed == 0
    finally:
        sleeper.kill()
        sleeper.wait()


def test_memory_past_the_limit_fails_inside_and_the_limit_is_restored():
    before = resource.getrlimit(resource.RLIMIT_DATA)
    limit_mb = _data_mib() + 1024
    with contained(memory_limit_mb=limit_mb) as record:
        with pytest.raises(MemoryError):
            np.ones(3 * 2 ** 30, dtype=np.uint8)  # 3 GiB of private memory
    assert record.memory_limited and f"memory<={limit_mb}MiB" in record.describe()
    assert resource.getrlimit(resource.RLIMIT_DATA) == before
    assert np.ones(2 ** 20, dtype=np.uint8).sum() == 2 ** 20


def _evaluate(factory, sid, source, **config):
    from esr_eval.data import embedded_split
    from esr_eval.evaluate import EvaluationConfig, evaluate_submission
    from esr_eval.manifest import discover_all
    from esr_eval.timing import OFFICIAL

    factory.make(sid, model_source=source)
    subs, _ = discover_all(factory.manifests, factory.root)
    (sub,) = [s for s in subs if s.submission_id == sid]
    return evaluate_submission(sub, [embedded_split()], EvaluationConfig(protocol=OFFICIAL, hygiene=False, **config),
                               "contained").submission


def test_a_submission_that_leaves_a_daemon_behind_has_it_killed_and_recorded(factory):
    marker = f"esr-daemon-{os.getpid()}-{time.time_ns()}"
    spawn = (f"subprocess.run([sys.executable, '-c', {DAEMON!r}, {marker!r}]) if not hasattr(self, 's') else None; "
             "self.s = 1; return self.shuffle(self.tail(torch.relu(self.head(x))))")
    row = _evaluate(factory, "team70_Daemon", {"prelude": "import subprocess, sys\n", "forward_body": spawn})
    assert row.status == "ok", row.error
    assert row.leftover_processes_killed >= 1 and marker in row.leftover_processes
    assert "subreaper" in row.containment and row.memory_limit_mb == 16384
    assert not _alive_sleepers(marker)


def _data_mib() -> int:
    """This process's private writable memory now (VmData), which the limit includes."""
    line = next(line for line in open("/proc/self/status") if line.startswith("VmData:"))
    return int(line.split()[1]) // 1024


def test_a_submission_past_the_memory_limit_is_an_error_row_naming_the_limit(factory):
    limit_mb = _data_mib() + 1024  # the evaluator's own memory plus 1 GiB for the submission
    grab = "torch.ones(3 * 2 ** 30, dtype=torch.uint8).sum(); return self.shuffle(self.tail(self.head(x)))"
    row = _evaluate(factory, "team71_Greedy", {"forward_body": grab}, memory_limit_mb=limit_mb)
    assert row.status == "error" and row.error_stage == "inference", row.error
    assert f"memory limit of {limit_mb} MiB" in row.error and "--memory-limit-mb" in row.error
