"""Smoke test of benchmarks/scheduling.py: a tiny run end to end and a self-consistent record.

Timing is not asserted (this machine's load decides it); what the record says about the
schedule is: the designed sleeps happened inside the evaluations, no more evaluations overlapped
than there were fake GPUs, and the ideal is the LPT makespan of the recorded sleeps.
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from esr_eval.scheduling import lower_bound, lpt_makespan

pytestmark = pytest.mark.ray

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "benchmarks" / "scheduling.py"
GPUS = 2


def _peak_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def test_small_run_writes_a_consistent_record(tmp_path):
    prefix = tmp_path / "scheduling"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--submissions", "3", "--gpus", str(GPUS), "--scale", "0.05",
                           "--out", str(prefix)], capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    record = json.loads(prefix.with_suffix(".json").read_text())
    table = prefix.with_suffix(".md").read_text()
    assert table in proc.stdout and f"**{record['makespan_over_lpt']:.3f}**" in table

    timings = record["timings"]
    assert (record["submissions"], record["gpus"], len(timings)) == (3, GPUS, 3)
    assert len({t["submission_id"] for t in timings}) == 3
    sleeps = [t["sleep_s"] for t in timings]
    assert sleeps == sorted(sleeps, reverse=True) and min(sleeps) > 0
    assert all(t["wall_s"] >= t["sleep_s"] for t in timings)
    assert all(0 <= t["start_offset_s"] < t["end_offset_s"] <= t["received_offset_s"] <= t["written_offset_s"]
               for t in timings)
    assert _peak_overlap([(t["start_offset_s"], t["end_offset_s"]) for t in timings]) <= GPUS
    assert record["makespan_s"] >= max(t["written_offset_s"] for t in timings)

    assert record["ideal_lpt_s"] == pytest.approx(lpt_makespan(sleeps, GPUS))
    assert record["lower_bound_s"] == pytest.approx(lower_bound(sleeps, GPUS))
    assert record["makespan_over_lpt"] == pytest.approx(record["makespan_s"] / record["ideal_lpt_s"])
    assert record["busy_wall_s_total"] == pytest.approx(sum(t["wall_s"] for t in timings))
    machine = record["machine"]
    assert machine["ray_version"] == metadata.version("ray") and machine["cpu_cores"] >= 1 and machine["cpu_model"]
