"""Longest-expected-first ordering and the LPT bound."""

from __future__ import annotations

import pytest

from esr_eval.records import EvaluationResult, SubmissionRow
from esr_eval.run import RunFolder
from esr_eval.scheduling import expected_seconds, lower_bound, lpt_makespan, lpt_order


def test_lpt_order_unknown_first_then_longest():
    order = lpt_order(["a", "b", "c", "d"], key=lambda s: s, expected={"a": 1.0, "b": 9.0, "d": 5.0})
    assert order == ["c", "b", "d", "a"]


@pytest.mark.parametrize("durations, slots, makespan", [
    ([3, 3, 2, 2, 2], 2, 7),      # LPT's classic non-optimal case (optimum is 6)
    ([5, 4, 3, 2, 1], 3, 5),
    ([], 4, 0),
])
def test_lpt_makespan(durations, slots, makespan):
    assert lpt_makespan(durations, slots) == makespan
    assert lpt_makespan(durations, slots) >= lower_bound(durations, slots)


def test_expected_seconds_from_earlier_runs(tmp_path):
    for run, wall, started in (("r1", 10.0, 1.0), ("r2", 12.0, 2.0)):
        folder = RunFolder.create(tmp_path, run)
        row = SubmissionRow(run_id=run, submission_id="a", team_id="10", name="a", status="ok",
                            wall_s=wall, started_at_unix_s=started)
        folder.write_result(EvaluationResult(submission=row), fingerprint="f")
    failed = RunFolder.create(tmp_path, "r3")
    failed.write_result(EvaluationResult(submission=SubmissionRow(
        run_id="r3", submission_id="a", team_id="10", name="a", status="error", wall_s=1.0,
        started_at_unix_s=3.0)), fingerprint="f")
    assert expected_seconds(tmp_path) == {"a": 12.0}
    assert expected_seconds(tmp_path, exclude_run="r2") == {"a": 10.0}
