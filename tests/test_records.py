"""Parquet records: schema from one place, atomic part files, pandas reads whole tables."""

from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq
import pytest

from esr_eval.records import SampleRow, SubmissionRow, arrow_schema, read_table, schema_markdown, write_rows


def _sample(i: int, sid: str = "team10_Tiny") -> SampleRow:
    return SampleRow(run_id="r", submission_id=sid, split="embedded", image=f"img{i}", repeat=i % 2,
                     latency_ms=1.5 + i, wall_ms=1.6 + i, lr_height=64, lr_width=64,
                     psnr_db=30.0 if i % 2 == 0 else None)


def test_parts_are_read_whole_by_pandas(tmp_path):
    write_rows(tmp_path, "samples", [_sample(0), _sample(1)], "team10_Tiny")
    write_rows(tmp_path, "samples", [_sample(2, "team11_B")], "team11_B")
    frame = pd.read_parquet(tmp_path / "samples")
    assert len(frame) == 3 and set(frame["submission_id"]) == {"team10_Tiny", "team11_B"}
    assert frame["latency_ms"].dtype == "float64" and frame["repeat"].dtype == "int64"
    assert frame["psnr_db"].isna().sum() == 1


def test_schema_types_and_nullability():
    schema = arrow_schema(SubmissionRow)
    assert str(schema.field("params").type) == "int64" and schema.field("params").nullable
    assert not schema.field("status").nullable
    assert schema.metadata[b"esr_eval_schema_version"] == b"1"


def test_written_file_carries_the_schema(tmp_path):
    path = write_rows(tmp_path, "submissions", [SubmissionRow(run_id="r", submission_id="s", team_id="10",
                                                              name="S", status="error", error="boom")], "s")
    schema = pq.read_schema(path)
    assert schema.field("flops_fvcore").type == arrow_schema(SubmissionRow).field("flops_fvcore").type
    assert read_table(tmp_path, "submissions").loc[0, "error"] == "boom"


def test_no_temporary_files_left_and_rewrite_replaces(tmp_path):
    write_rows(tmp_path, "samples", [_sample(0)], "team10_Tiny")
    write_rows(tmp_path, "samples", [_sample(1), _sample(3)], "team10_Tiny")
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["team10_Tiny.parquet"]
    assert len(read_table(tmp_path, "samples")) == 2


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    def broken(table, where):
        open(where, "wb").write(b"half")
        raise OSError("disk full")
    monkeypatch.setattr(pq, "write_table", broken)
    with pytest.raises(OSError):
        write_rows(tmp_path, "samples", [_sample(0)], "team10_Tiny")
    assert list((tmp_path / "samples").iterdir()) == []


def test_empty_table_has_the_columns(tmp_path):
    frame = read_table(tmp_path, "splits")
    assert frame.empty and "runtime_ms" in frame.columns


def test_schema_doc_is_current(repo_root):
    assert (repo_root / "docs" / "SCHEMA.md").read_text() == schema_markdown() + "\n", \
        "regenerate docs/SCHEMA.md: python -c 'from esr_eval.records import schema_markdown; print(schema_markdown())' > docs/SCHEMA.md"


def test_write_part_returns_the_ledger_entry_of_the_bytes_on_disk(tmp_path):
    import hashlib

    from esr_eval.records import write_part

    path, entry = write_part(tmp_path, "samples", [_sample(0)], "team10_Tiny")
    data = path.read_bytes()
    assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["size"] == len(data)
    assert write_part(tmp_path, "samples", [], "team11_B") is None


def test_read_verified_reads_recorded_parts_only(tmp_path):
    import json
    import warnings

    from esr_eval.records import (RunIntegrityWarning, file_entry, ledger_payload, read_verified, verify_run,
                                  write_json)

    recorded = write_rows(tmp_path, "samples", [_sample(0)], "team10_Tiny")
    write_json(tmp_path / "ledger.json", ledger_payload("r", {"samples/team10_Tiny.parquet":
                                                              file_entry(recorded.read_bytes())}))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RunIntegrityWarning)
        assert list(read_verified(tmp_path, "samples")["submission_id"]) == ["team10_Tiny"]
    write_rows(tmp_path, "samples", [_sample(1, "team11_B")], "team11_B")
    (tmp_path / "samples" / "nested").mkdir()
    (tmp_path / "samples" / "nested" / "x.parquet").write_bytes(b"pandas would read this")
    with pytest.warns(RunIntegrityWarning, match="TAMPERED RUN"):
        frame = read_verified(tmp_path, "samples")
    assert list(frame["submission_id"]) == ["team10_Tiny"]
    assert set(verify_run(tmp_path).unexpected) == {"samples/team11_B.parquet", "samples/nested/x.parquet"}
    (tmp_path / "ledger.json").write_text(json.dumps({"format": "something else"}))
    assert verify_run(tmp_path).ledger == "unreadable" and verify_run(tmp_path).tampered
