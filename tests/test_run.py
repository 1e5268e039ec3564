"""Run folders: the single-writer lock, per-submission parts, resume fingerprints, split resolution."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from esr_eval.data import SplitError, embedded_split
from esr_eval.records import EvaluationResult
from esr_eval.manifest import parse_manifest
from esr_eval.records import SampleRow, SubmissionRow, read_table
from esr_eval.run import RunFolder, RunLockedError, fingerprint, resolve_splits
from esr_eval.timing import DEFAULT, OFFICIAL


def _result(sid: str, status: str = "ok", samples: int = 2) -> EvaluationResult:
    row = SubmissionRow(run_id="r", submission_id=sid, team_id="10", name=sid, status=status)
    rows = tuple(SampleRow(run_id="r", submission_id=sid, split="embedded", image=f"i{k}", repeat=0,
                           latency_ms=1.0, wall_ms=1.0, lr_height=4, lr_width=4) for k in range(samples))
    return EvaluationResult(submission=row, samples=rows)


def test_second_driver_refuses(tmp_path):
    first = RunFolder.create(tmp_path, "run1")
    first.lock()
    with pytest.raises(RunLockedError, match="being written by another driver"):
        RunFolder.create(tmp_path, "run1").lock()
    first.unlock()
    RunFolder.create(tmp_path, "run1").lock()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    folder = RunFolder.create(tmp_path, "run1")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket
    (folder.path / "driver.lock").write_text(json.dumps({"hostname": socket.gethostname(),
                                                         "pid": int(dead.stdout)}))
    folder.lock()
    assert json.loads((folder.path / "driver.lock").read_text())["pid"] != int(dead.stdout)


def test_rewrite_replaces_a_submissions_rows_and_keeps_others(tmp_path):
    folder = RunFolder.create(tmp_path, "run1")
    folder.write_result(_result("a", samples=3), fingerprint="fa")
    folder.write_result(_result("b"), fingerprint="fb")
    folder.write_result(_result("a", status="error", samples=0), fingerprint="fa2", attempts=2)
    subs = read_table(folder.path, "submissions").set_index("submission_id")
    assert subs.loc["a", "status"] == "error" and subs.loc["a", "attempts"] == 2
    samples = read_table(folder.path, "samples")
    assert set(samples["submission_id"]) == {"b"}  # a's stale samples are gone, b's kept


def test_completed_skips_only_finished_statuses(tmp_path):
    folder = RunFolder.create(tmp_path, "run1")
    for sid, status in [("a", "ok"), ("b", "error"), ("c", "timeout"), ("d", "crashed")]:
        folder.write_result(_result(sid, status), fingerprint=f"f{sid}")
    assert folder.completed() == {"a": "fa", "b": "fb"}


def test_fingerprint_tracks_checkpoint_protocol_and_data(factory):
    split = embedded_split()
    sub = parse_manifest(factory.make(), factory.root)
    base = fingerprint(sub, DEFAULT.protocol_id, [split])
    assert base == fingerprint(sub, DEFAULT.protocol_id, [split])
    assert base != fingerprint(sub, OFFICIAL.protocol_id, [split])
    ckpt = factory.root / "model_zoo" / "team10_Tiny.pth"
    ckpt.write_bytes(ckpt.read_bytes() + b"\0")
    assert base != fingerprint(sub, DEFAULT.protocol_id, [split])


def test_resolve_splits_default_is_embedded():
    (split,) = resolve_splits(None, None, None)
    assert split.name == "embedded"


def test_resolve_splits_rejects_bad_data_before_any_model_runs(tmp_path):
    hr, lr = tmp_path / "x_HR", tmp_path / "x_LR"
    hr.mkdir()
    lr.mkdir()
    split = embedded_split()
    pair = split.pairs[0]
    (hr / f"{pair.name}.png").write_bytes(pair.hr_path.read_bytes())
    (lr / f"{pair.name}x4.png").write_bytes(b"not a png")
    with pytest.raises(SplitError, match=f"{pair.name}x4.png"):
        resolve_splits(tmp_path, ["x"], None)
