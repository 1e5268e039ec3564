"""Parquet records: schema from one place, atomic part files, pandas reads whole tables."""

from __future__ import annotations

import re

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
        ("regenerate docs/SCHEMA.md: "
         "python -c 'from esr_eval.records import schema_markdown; print(schema_markdown())' > docs/SCHEMA.md")


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

    from esr_eval.records import RunIntegrityWarning, file_entry, ledger_payload, read_verified, verify_run, write_json

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


def test_every_rankings_column_of_every_builtin_protocol_is_specified(tmp_path):
    from esr_eval.protocols import builtin_protocol_names, load_protocol
    from esr_eval.ranking import rank_tables
    from esr_eval.records import RANKINGS_COLUMNS, rankings_column, read_run
    from tests.support.synthetic import write_synthetic_run

    tables = read_run(write_synthetic_run(tmp_path / "run", n_submissions=8, seed=1, images_per_split=4, repeats=2))
    used = set()
    for name in builtin_protocol_names():
        protocol = load_protocol(name).with_resamples(5).with_baseline("team00_RLFN", accept_mismatch=True)
        if name == "demo":
            protocol = protocol.with_splits("DIV2K_LSDIR_valid", "DIV2K_LSDIR_test")
        for column in rank_tables(tables, protocol).columns:
            used.add(rankings_column(column).name)
    assert used == {c.name for c in RANKINGS_COLUMNS}, "a specified column no protocol writes"
    with pytest.raises(ValueError, match="not specified"):
        rankings_column("")


def test_rankings_are_written_typed_with_their_metadata_and_read_back(tmp_path):
    from esr_eval.records import read_rankings, write_rankings

    assert read_rankings(tmp_path) is None
    frame = pd.DataFrame({"protocol": ["demo", "demo"], "submission_id": ["a", "b"], "rank_main": [1, None],
                          "integrity": [None, None]}).astype({"rank_main": "Int64"})
    path = write_rankings(tmp_path, frame, {"esr_eval.protocol": "demo"})
    schema = pq.read_schema(path)
    assert str(schema.field("rank_main").type) == "int64" and str(schema.field("integrity").type) == "string"
    stored = read_rankings(tmp_path)
    assert stored.metadata == {"esr_eval.protocol": "demo"} and list(stored.table["rank_main"]) == [1, pd.NA]
    with pytest.raises(ValueError, match="RANKINGS_METADATA"):
        write_rankings(tmp_path, frame, {"esr_eval.made_up": "x"})
    with pytest.raises(ValueError, match="gate_pass.*bool"):
        write_rankings(tmp_path, frame.assign(gate_pass=["yes", "no"]), {})
    assert sorted(p.name for p in path.parent.iterdir()) == ["part-00000.parquet"]
    path.write_bytes(b"not parquet")
    assert read_rankings(tmp_path) is None


def test_run_sha256_follows_every_file_a_ranking_reads(tmp_path):
    from esr_eval.records import run_sha256, write_json

    write_rows(tmp_path, "samples", [_sample(0)], "team10_Tiny")
    before = run_sha256(tmp_path)
    assert run_sha256(tmp_path) == before
    write_json(tmp_path / "run.json", {"run_id": "r"})
    with_run_json = run_sha256(tmp_path)
    write_rows(tmp_path, "samples", [_sample(1)], "team10_Tiny")
    assert len({before, with_run_json, run_sha256(tmp_path)}) == 3


def test_markdown_tables_escape_pipes_and_line_breaks():
    from esr_eval.records import markdown_table

    header, alignment, row = markdown_table(("name", "value"), [("a|b", "1\n2")], left=(0,)).splitlines()
    assert header.replace(" ", "") == "|name|value|" and row.replace(" ", "") == "|a\\|b|12|"
    assert re.fullmatch(r"\|:-+\|-+:\|", alignment)


def test_rankings_integer_columns_keep_integer_types_through_a_write_and_a_read(tmp_path):
    """Ranks and counts are int64 on disk and nullable Int64 when read back, also when the frame
    written held them as floats with NaN (as a ranking computed in floats does)."""
    import numpy as np

    from esr_eval.records import read_rankings, write_rankings

    frame = pd.DataFrame({"protocol": ["demo"] * 3, "submission_id": ["a", "b", "c"],
                          "rank_main": [1.0, np.nan, 2.0], "metric_rank_params": [2.0, 1.0, 3.0],
                          "params": [317_218.0, np.nan, 1e6], "num_conv": [39.0, 12.0, 7.0],
                          "flops": [19_674_859_520.0, np.nan, 1.0], "runtime_ms": [1.5, np.nan, 2.25]})
    schema = pq.read_schema(write_rankings(tmp_path, frame, {}))
    integers = ["rank_main", "metric_rank_params", "params", "num_conv", "flops"]
    assert {name: str(schema.field(name).type) for name in integers} == dict.fromkeys(integers, "int64")
    table = read_rankings(tmp_path).table
    assert {name: str(table[name].dtype) for name in integers} == dict.fromkeys(integers, "Int64")
    assert table["runtime_ms"].dtype == "float64"
    assert list(table["params"]) == [317_218, pd.NA, 1_000_000] and table.loc[0, "flops"] == 19_674_859_520
    with pytest.raises(ValueError, match="params.*int64"):
        write_rankings(tmp_path, frame.assign(params=[0.5, 1.0, 2.0]), {})


def test_every_numeric_column_states_its_unit():
    from esr_eval.records import RANKINGS_COLUMNS, RUN_JSON_KEYS, TABLES, table_columns

    numeric = [c for table in TABLES for c in table_columns(table) if c.type in ("int64", "double")]
    numeric += [c for c in RANKINGS_COLUMNS + RUN_JSON_KEYS if c.type in ("int64", "double", "number")]
    assert [c.name for c in numeric if not c.unit] == []
    units = {c.name: c.unit for c in table_columns("submissions") + table_columns("splits")}
    assert {units[name] for name in ("flops_fvcore", "flops_hook_2022", "flops_audit")} == {"MACs"}
    assert {units[name] for name in units if name.endswith("_mb")} == {"MiB (2^20 B)"}


def test_schema_doc_covers_every_table_and_run_json_with_units():
    text = schema_markdown()
    for section in ("`submissions`", "`splits`", "`samples`", "`rankings`", "`run.json`"):
        body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
        header = next(line for line in body.splitlines() if line.startswith("|"))
        assert [cell.strip() for cell in header.strip("|").split("|")][:3] in (
            ["column", "type", "unit"], ["key", "type", "unit"]), section
    assert re.search(r"\| `flops_fvcore` +\| int64 +\| MACs +\|", text)
    assert re.search(r"\| `peak_mem_mb` +\| double +\| MiB \(2\^20 B\) +\|", text)
    assert re.search(r"\| `rank_<track>` +\| int64 +\| rank +\|", text)


def test_run_json_documents_every_environment_key_provenance_records():
    from esr_eval.provenance import environment
    from esr_eval.records import RUN_JSON_KEYS

    documented = {c.name.split(".", 1)[1] for c in RUN_JSON_KEYS if c.name.startswith("environment.")}
    assert documented == set(environment())
