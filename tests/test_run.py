"""Run folders: the single-writer lock, per-submission parts, resume fingerprints, split resolution."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from esr_eval.data import embedded_split
from esr_eval.manifest import parse_manifest
from esr_eval.records import EvaluationResult, SampleRow, SubmissionRow, read_table
from esr_eval.run import RunFolder, RunLockedError, fingerprint
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



def test_fingerprint_tracks_the_files_after_load_calls_read(factory):
    split = embedded_split()
    path = factory.make(with_checkpoint=False, manifest_extra={"after_load": [
        {"method": "load_weights", "path": "model_zoo/late.pth"}]})
    weights = factory.root / "model_zoo" / "late.pth"
    weights.parent.mkdir(exist_ok=True)
    weights.write_bytes(b"weights v1")
    sub = parse_manifest(path, factory.root)
    base = fingerprint(sub, DEFAULT.protocol_id, [split])
    weights.write_bytes(b"weights v2")
    assert base != fingerprint(sub, DEFAULT.protocol_id, [split])

def _ledger_files(folder: RunFolder) -> dict:
    return json.loads((folder.path / "ledger.json").read_text())["files"]


def test_ledger_records_every_part_and_follows_a_rewrite(tmp_path):
    import hashlib

    folder = RunFolder.create(tmp_path, "run1")
    folder.write_run_json({"run_id": "run1"})
    folder.write_result(_result("a", samples=3), fingerprint="fa")
    folder.write_result(_result("b"), fingerprint="fb")
    assert set(_ledger_files(folder)) == {"run.json", "samples/a.parquet", "submissions/a.parquet",
                                          "samples/b.parquet", "submissions/b.parquet"}
    before = _ledger_files(folder)["submissions/a.parquet"]["sha256"]
    folder.write_result(_result("a", status="error", samples=0), fingerprint="fa2", attempts=2)
    files = _ledger_files(folder)
    assert "samples/a.parquet" not in files  # the dropped part left the ledger with it
    entry = files["submissions/a.parquet"]
    data = (folder.path / "submissions" / "a.parquet").read_bytes()
    assert entry["sha256"] == hashlib.sha256(data).hexdigest() != before and entry["size"] == len(data)
    assert folder.ledger_sha256 == hashlib.sha256((folder.path / "ledger.json").read_bytes()).hexdigest()
    assert json.loads((folder.path / "run.json").read_text())["ledger"] == "ledger.json"
    assert folder.verify().clean


def test_completed_ignores_parts_the_ledger_does_not_hold(tmp_path):
    from esr_eval.records import write_rows

    folder = RunFolder.create(tmp_path, "run1")
    folder.write_result(_result("a"), fingerprint="fa")
    write_rows(folder.path, "submissions", [SubmissionRow(run_id="r", submission_id="x", team_id="77", name="x",
                                                          status="ok", fingerprint="fx")], "x")
    assert folder.completed() == {"a": "fa"}
    assert RunFolder(folder.path).completed() == {"a": "fa"}  # a resumed driver reads the ledger on disk
    rewritten = _result("a", status="error")  # a changed recorded part is not trusted either
    write_rows(folder.path, "submissions", [rewritten.submission], "a")
    assert RunFolder(folder.path).completed() == {}


def test_a_run_from_before_the_ledger_is_adopted_on_resume(tmp_path):
    from esr_eval.records import verify_run, write_json, write_rows

    path = tmp_path / "old"
    write_rows(path, "submissions", [SubmissionRow(run_id="old", submission_id="a", team_id="10", name="a",
                                                   status="ok", fingerprint="fa")], "a")
    write_json(path / "run.json", {"run_id": "old"})
    folder = RunFolder(path)
    assert folder.completed() == {"a": "fa"}
    folder.write_result(_result("b"), fingerprint="fb")
    files = _ledger_files(folder)
    assert files["submissions/a.parquet"]["adopted"] and "adopted" not in files["submissions/b.parquet"]
    integrity = verify_run(path)
    assert not integrity.tampered and any("predate the ledger" in note for note in integrity.notes)


def test_a_ledger_rewritten_behind_the_driver_is_noticed(tmp_path):
    folder = RunFolder.create(tmp_path, "run1")
    folder.write_result(_result("a"), fingerprint="fa")
    ledger = json.loads((folder.path / "ledger.json").read_text())
    ledger["files"]["submissions/a.parquet"]["written_at_unix_s"] = 0.0
    (folder.path / "ledger.json").write_text(json.dumps(ledger))
    integrity = folder.verify()
    assert integrity.tampered and "is not the one the driver wrote" in integrity.ledger_problem
    assert folder.closing_lines()[0].startswith("WARNING: TAMPERED RUN")
    folder.write_result(_result("b"), fingerprint="fb")  # the driver's next write restores its own ledger
    assert folder.verify().clean


def test_discarded_empty_run_leaves_no_ledger_behind(tmp_path):
    folder = RunFolder.open(tmp_path, "fresh")
    folder.write_run_json({"run_id": "fresh"})
    folder.close(discard_if_empty=True)
    assert not (tmp_path / "fresh").exists()


def test_completed_counts_only_rows_of_the_runs_device_kind_and_gpu_model(tmp_path):
    folder = RunFolder.create(tmp_path, "kinds")
    assert folder.completed(device_kind="cuda", gpu_models={"A10G"}) == {}  # a fresh GPU run
    rows = {"cpu": ("cpu", "AMD EPYC"), "a10g": ("cuda", "NVIDIA A10G"), "t4": ("cuda", "Tesla T4")}
    for sid, (kind, name) in rows.items():
        result = _result(sid)
        folder.write_result(dataclasses.replace(result, submission=dataclasses.replace(
            result.submission, device_kind=kind, device_name=name)), fingerprint=f"f{sid}")
    assert folder.completed(device_kind="cpu") == {"cpu": "fcpu"}
    assert folder.completed(device_kind="cuda", gpu_models={"A10G"}) == {"a10g": "fa10g"}
    assert folder.completed(device_kind="cuda", gpu_models={"unknown"}) == {"a10g": "fa10g", "t4": "ft4"}


def test_run_json_holds_only_specified_keys(tmp_path):
    from esr_eval.provenance import run_metadata
    from esr_eval.records import RUN_JSON_KEYS

    folder = RunFolder.create(tmp_path, "meta")
    folder.write_run_json(run_metadata("meta", DEFAULT, [embedded_split()], [], "in-process", "cpu",
                                       {"device_requested": "cpu"}))
    written = json.loads((folder.path / "run.json").read_text())
    top_level = {key.name: key for key in RUN_JSON_KEYS if "." not in key.name}
    nested = {key.name.split(".", 1)[1] for key in RUN_JSON_KEYS if key.name.startswith("environment.")}
    assert set(written) <= set(top_level)
    assert all(key in written for key, spec in top_level.items() if not spec.nullable)
    assert set(written["environment"]) <= nested
    assert all(key.split(".", 1)[1] in written["environment"]
               for key, spec in {k.name: k for k in RUN_JSON_KEYS}.items()
               if key.startswith("environment.") and not spec.nullable)
