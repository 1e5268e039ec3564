"""The esr-eval command line, in-process."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from esr_eval.cli import ROOT_ENV, build_parser, default_root, main, parse
from tests.conftest import REPO_ROOT


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


def test_evaluate_writes_run_folder_and_resumes(factory, tmp_path, capsys):
    factory.make()
    args = ["evaluate", "--root", str(factory.root), "--manifests", str(factory.manifests),
            "--results", str(tmp_path / "results"), "--run-id", "r1", "--repeats", "2", "--no-hygiene"]
    assert main(args) == 0
    run = tmp_path / "results" / "r1"
    subs = pd.read_parquet(run / "submissions")
    assert subs.loc[0, "status"] == "ok" and subs.loc[0, "fingerprint"]
    assert len(pd.read_parquet(run / "samples")) == 2 * 5
    assert (run / "run.json").is_file() and not (run / "driver.lock").exists()
    capsys.readouterr()
    assert main(args) == 0
    assert "already complete in this run, skipped" in capsys.readouterr().out


def test_evaluate_does_not_run_a_submission_whose_requirements_are_missing(factory, tmp_path, capsys):
    """In-process evaluation installs nothing: a submission needing an absent package is an error row
    naming it (its code never runs); the other submissions run."""
    factory.make()
    factory.make("team11_Needs", team_id="11", manifest_extra={"requirements": ["esr-eval-fixture-absent-pkg>=1"]},
                 model_source={"prelude": "import esr_eval_fixture_absent_pkg\n"})
    args = ["evaluate", "--root", str(factory.root), "--manifests", str(factory.manifests),
            "--results", str(tmp_path / "results"), "--run-id", "r1", "--repeats", "2", "--no-hygiene"]
    assert main(args) == 1
    subs = pd.read_parquet(tmp_path / "results" / "r1" / "submissions").set_index("submission_id")
    assert subs.loc["team10_Tiny", "status"] == "ok"
    row = subs.loc["team11_Needs"]
    assert (row["status"], row["error_stage"]) == ("error", "requirements")
    assert "this environment lacks esr-eval-fixture-absent-pkg>=1; not run" in row["error"]
    assert "evaluate_all.py" in row["error"] and pd.isna(row["traceback"])
    assert "team11_Needs: error" in capsys.readouterr().out


def test_import_ntire_then_summary_loads_the_manifests(tmp_path, capsys):
    checkout = REPO_ROOT / "tests" / "fixtures" / "ntire_repo"
    out = tmp_path / "manifests"
    assert main(["import-ntire", str(checkout), "--out", str(out)]) == 0
    report = capsys.readouterr().out
    assert "Not translated (2)" in report and "line 77" in report
    assert main(["summary", "--root", str(checkout), "--manifests", str(out), "--input", "1x3x32x32"]) == 0
    table = capsys.readouterr().out
    assert table.count("team") >= 7 and "ERROR" not in table


def test_rank_and_report_on_a_synthetic_43_submission_run(tmp_path, capsys):
    from tests.support.synthetic import write_synthetic_run

    run = write_synthetic_run(tmp_path / "syn", n_submissions=43)
    assert main(["rank", str(run), "--protocol", "ntire2024", "--resamples", "50"]) == 0
    out = capsys.readouterr().out
    assert "protocol ntire2024" in out
    rankings = pd.read_parquet(run / "rankings")
    assert len(rankings) == 43 and rankings["rank_main"].min() == 1
    assert main(["report", str(run), "--protocol", "ntire2024", "--resamples", "50"]) == 0
    assert (run / "report" / "report.html").is_file() and (run / "report" / "report.md").is_file()


def test_rank_auto_protocol_is_demo_for_the_embedded_split(factory, tmp_path, capsys):
    factory.make()
    results = tmp_path / "results"
    main(["evaluate", "--root", str(factory.root), "--manifests", str(factory.manifests),
          "--results", str(results), "--run-id", "r", "--repeats", "1", "--no-hygiene"])
    capsys.readouterr()
    assert main(["rank", str(results / "r"), "--resamples", "20"]) == 2  # no RLFN in the run: refused
    assert "protocol demo: its baseline RLFN_Prune" in capsys.readouterr().err
    assert main(["rank", str(results / "r"), "--resamples", "20",
                 "--baseline", "team10_Tiny", "--accept-baseline-mismatch"]) == 0
    assert "protocol demo" in capsys.readouterr().out


def test_default_root_is_the_current_folder_else_the_checkout_ray_submit_finds(tmp_path, monkeypatch):
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    (home / "esr-eval" / "model_zoo").mkdir(parents=True)
    elsewhere.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv(ROOT_ENV, raising=False)
    monkeypatch.chdir(REPO_ROOT)
    assert default_root() == Path(".")
    monkeypatch.chdir(elsewhere)  # as under `ray submit`: the home folder, no model_zoo/ in it
    assert default_root() == home / "esr-eval"
    monkeypatch.setenv(ROOT_ENV, str(REPO_ROOT))
    args = parse(build_parser(), ["evaluate"])
    assert (args.root, args.manifests, args.results) == (REPO_ROOT, REPO_ROOT / "model_zoo", REPO_ROOT / "results")
    (home / "esr-eval" / "model_zoo").rmdir()
    monkeypatch.delenv(ROOT_ENV)
    assert default_root() == Path(".")  # nothing found: the current folder, whose missing model_zoo/ the error names
