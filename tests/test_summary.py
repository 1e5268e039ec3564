"""esr_eval.summary and `esr-eval summary`: parallel sandboxes, the exact official counts, captured
output, error rows, and the table/csv/json/parquet formats."""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest

from esr_eval import summary
from esr_eval.cli import main
from esr_eval.complexity import measure_complexity
from esr_eval.loading import load_submission
from esr_eval.manifest import discover_all
from esr_eval.summary import SummaryRow, output_notes, render_table, summarize, summary_frame, write_summary
from tests.conftest import REPO_ROOT

SMALL_INPUT = (1, 3, 32, 32)
NOISY_PRELUDE = (
    "import ctypes, os, warnings\n"
    "print('marker-print-at-import')\n"
    "warnings.warn('marker-warning-at-import')\n"
    "os.write(2, b'marker-fd2-write\\n')\n"
    "ctypes.CDLL(None).puts(b'marker-libc-puts')\n"
)
NOISY_FORWARD = "print('marker-forward'); return self.shuffle(self.tail(torch.relu(self.head(x))))"
MARKERS = ("marker-print-at-import", "marker-warning-at-import", "marker-fd2-write", "marker-libc-puts",
           "marker-forward")


def _old_cells(sub_id: str, c) -> list[str]:
    """A row of the table as `esr-eval summary` printed it when it counted in its own process."""
    return [sub_id,
            f"{c.params:,}" + ("" if c.params == c.params_before_forward else f" (before: {c.params_before_forward:,})"),
            f"{c.flops_fvcore:,}", f"{c.flops_hook_2022:,}", f"{c.flops_audit:,}" + (" FLAG" if c.audit_flag else ""),
            f"{c.activations:,}", str(c.num_conv), c.audit_text()]


def test_counts_are_those_of_measure_complexity_run_directly_on_the_zoo():
    subs, errors = discover_all(REPO_ROOT / "model_zoo", REPO_ROOT)
    assert not errors and len(subs) == 6
    rows = summarize(subs, input_shape=SMALL_INPUT, jobs=2)
    assert [row.submission_id for row in rows] == [sub.submission_id for sub in subs]
    table = render_table(rows, SMALL_INPUT).splitlines()
    for sub, row in zip(subs, rows):
        direct = measure_complexity(load_submission(sub, "cpu").model, SMALL_INPUT, sub.data_range, "cpu")
        assert row.status == "ok", row.error
        assert (row.params, row.params_before_forward, row.flops_fvcore, row.flops_hook_2022, row.flops_audit,
                row.flops_audit_flag, row.activations, row.num_conv, row.audit) == (
            direct.params, direct.params_before_forward, direct.flops_fvcore, direct.flops_hook_2022,
            direct.flops_audit, direct.audit_flag, direct.activations, direct.num_conv, direct.audit_text())
        line = next(line for line in table if line.startswith(sub.submission_id + " "))
        assert [cell.strip() for cell in line.split("  ") if cell.strip()] == _old_cells(sub.submission_id, direct)
        assert row.input_shape == "1x3x32x32" and row.output == "" and row.output_lines == 0


def test_summary_prints_bicubic(capsys):
    assert main(["summary", "--root", str(REPO_ROOT), "team99_Bicubic"]) == 0
    out = capsys.readouterr().out
    assert "team99_Bicubic" in out and "1x3x256x256" in out


def test_summary_reports_an_invalid_manifest_as_a_row(factory, capsys):
    factory.make()
    bad = factory.make("team11_Bad", team_id="11")
    bad.write_text(bad.read_text().replace("data_range: 1.0", "data_rang: 1.0"))
    code = main(["summary", "--root", str(factory.root), "--manifests", str(factory.manifests),
                 "--input", "1x3x16x16"])
    captured = capsys.readouterr()
    assert code == 1
    assert "team10_Tiny" in captured.out and "team11_Bad" in captured.out
    assert "did you mean 'data_range'" in captured.err


def test_output_is_kept_per_submission_and_failures_are_rows(factory, tmp_path, capfd):
    """A team's print/warnings/fd and libc writes go into its own row, never onto the terminal; a
    model that raises is an error row with the fix; the other submissions are counted."""
    factory.make("team10_Noisy", model_source={"prelude": NOISY_PRELUDE, "forward_body": NOISY_FORWARD})
    factory.make("team11_Quiet", team_id="11")
    factory.make("team12_Raises", team_id="12", model_source={"forward_body": "raise RuntimeError('team bug')"})
    out = tmp_path / "summary.json"
    code = main(["summary", "--root", str(factory.root), "--manifests", str(factory.manifests),
                 "--input", "1x3x16x16", "--jobs", "2", "--format", "json", "--out", str(out)])
    captured = capfd.readouterr()
    assert code == 1
    assert not any(marker in captured.out + captured.err for marker in MARKERS)
    rows = {row["submission_id"]: row for row in json.loads(out.read_text())}
    noisy, quiet, raises = rows["team10_Noisy"], rows["team11_Quiet"], rows["team12_Raises"]
    assert noisy["status"] == quiet["status"] == "ok" and noisy["params"] == quiet["params"] > 0
    assert all(marker in noisy["output"] for marker in MARKERS)
    assert noisy["output_lines"] >= len(MARKERS) + 1 and (quiet["output"], quiet["output_lines"]) == ("", 0)
    assert f"team10_Noisy: {noisy['output_lines']} lines of output captured (--show-output to print)" in captured.out
    assert "team11_Quiet:" not in captured.out
    assert (raises["status"], raises["error_stage"]) == ("error", "complexity")
    assert "RuntimeError: team bug" in raises["error"] and "Fix: " in raises["error"]
    assert f"error: {raises['error']}" in captured.err


def test_submissions_run_at_once_up_to_jobs(factory, tmp_path):
    """Each constructor waits until the other one has started: only parallel sandboxes finish."""
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    prelude = ("import pathlib, time\n"
               "def meet(folder, me, other):\n"
               "    pathlib.Path(folder, me).touch()\n"
               "    deadline = time.monotonic() + 200\n"
               "    while not pathlib.Path(folder, other).exists():\n"
               "        if time.monotonic() > deadline:\n"
               "            raise RuntimeError(other + ' never started while ' + me + ' waited')\n"
               "        time.sleep(0.05)\n")
    for sid, team, me, other in (("team10_A", "10", "a", "b"), ("team11_B", "11", "b", "a")):
        factory.make(sid, team_id=team,
                     model_source={"prelude": prelude, "extra_args": ", folder='', me='', other=''",
                                   "init_extra": "meet(folder, me, other)"},
                     manifest_extra={"model": {"file": f"models/{sid}.py", "class": "TinySR",
                                               "kwargs": {"folder": str(barrier), "me": me, "other": other}}})
    subs, _ = discover_all(factory.manifests, factory.root)
    rows = summarize(subs, input_shape=(1, 3, 16, 16), jobs=2, landlock=False)  # the barrier is written outside
    assert [(row.submission_id, row.status, row.error) for row in rows] == [
        ("team10_A", "ok", None), ("team11_B", "ok", None)]


def test_a_request_left_unanswered_is_an_error_row(factory):
    factory.make(model_source={"prelude": "import time\n", "forward_body": "time.sleep(3600)"})
    subs, _ = discover_all(factory.manifests, factory.root)
    (row,) = summarize(subs, input_shape=(1, 3, 16, 16), timeout_s=20)
    assert (row.status, row.error_stage) == ("error", "complexity")
    assert "no answer within 20 s" in row.error and "Fix: " in row.error and "--timeout" in row.error


def _rows() -> list[SummaryRow]:
    ok = SummaryRow("team10_Tiny", "ok", "1x3x16x16", params=2_000, params_before_forward=2_100,
                    flops_fvcore=5_000_000_000, flops_hook_2022=5_000_000_001, flops_audit=5_300_000_000,
                    flops_audit_flag=True, activations=7, num_conv=2, audit="audit/fvcore = 1.060",
                    output="hello\nworld", output_lines=2, wall_s=1.5)
    bad = SummaryRow("team11_Bad", "error", "1x3x16x16", error="[team11_Bad] load: nope. Fix: do it",
                     error_stage="load")
    return [ok, bad]


def test_table_keeps_the_old_cells_and_notes_the_captured_output():
    table = render_table(_rows(), (1, 3, 16, 16)).splitlines()
    assert table[0] == "complexity on input 1x3x16x16 (FLOPs are MAC counts, as the official tools)"
    assert table[1].split() == summary.TABLE_HEADERS
    assert table[3].split() == ["team10_Tiny", "2,000", "(before:", "2,100)", "5,000,000,000", "5,000,000,001",
                                "5,300,000,000", "FLAG", "7", "2", "audit/fvcore", "=", "1.060"]
    assert table[4].split() == ["team11_Bad", "ERROR"]
    assert output_notes(_rows()) == ["team10_Tiny: 2 lines of output captured (--show-output to print)"]
    assert output_notes(_rows(), show_output=True) == ["--- team10_Tiny: 2 lines of output ---", "hello", "world"]


def test_csv_json_and_parquet_hold_every_field_with_integer_types(tmp_path, capsys):
    rows = _rows()
    assert write_summary(rows, "csv") == 1
    captured = capsys.readouterr()
    assert "team10_Tiny: 2 lines of output captured" in captured.err  # stdout holds the csv alone
    assert "error: [team11_Bad] load: nope. Fix: do it" in captured.err
    from_csv = pd.read_csv(io.StringIO(captured.out))
    assert list(from_csv.columns) == list(summary_frame(rows).columns)
    assert from_csv.loc[0, "flops_fvcore"] == 5_000_000_000 and from_csv.loc[0, "output"] == "hello\nworld"
    write_summary(rows, "json")
    from_json = json.loads(capsys.readouterr().out)
    assert from_json[0]["params"] == 2_000 and from_json[1]["params"] is None and from_json[1]["status"] == "error"
    path = tmp_path / "summary.parquet"
    write_summary(rows, "parquet", path)
    assert f"written: {path}" in capsys.readouterr().out
    table = pd.read_parquet(path)
    assert str(table["flops_fvcore"].dtype) == "Int64" and table["flops_fvcore"].iloc[0] == 5_000_000_000
    assert table["params"].isna().tolist() == [False, True] and table["output"].iloc[0] == "hello\nworld"


@pytest.mark.parametrize("argv, words", [
    (["--format", "parquet"], "no --out was given. Fix: add --out PATH"),
    (["--out", "/nonexistent-folder/s.csv", "--format", "csv"], "does not exist. Fix: "),
    (["--jobs", "0"], "--jobs 0: at least one submission must run at a time. Fix: "),
    (["--timeout", "0"], "--timeout 0: a request needs some time to be answered. Fix: "),
], ids=["parquet-needs-out", "out-folder", "jobs", "timeout"])
def test_unusable_options_are_refused_before_anything_is_measured(argv, words, monkeypatch, capsys):
    monkeypatch.setattr(summary, "summarize", lambda *a, **k: pytest.fail("measured despite a refused option"))
    assert main(["summary", "--root", str(REPO_ROOT), *argv]) == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1


def test_captured_output_is_escaped_counted_and_clipped_to_head_and_tail(tmp_path):
    log = tmp_path / "sandbox.log"
    before = b"the sandbox's own start-up line\n"
    body = b"\x1b[31mred\n" + b"x" * 40 + b"\n" * 2 * summary.OUTPUT_MAX_BYTES + b"last words"
    log.write_bytes(before + body)
    text, lines = summary._captured(log, len(before))
    assert lines == body.count(b"\n") + 1
    assert text.startswith("\\x1b[31mred\n") and text.endswith("last words") and "start-up" not in text
    assert f"{len(body) - summary.OUTPUT_MAX_BYTES:,} bytes not kept" in text
    assert summary._captured(log, log.stat().st_size) == ("", 0)
