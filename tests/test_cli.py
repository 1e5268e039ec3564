"""The esr-eval command line, in-process."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pandas as pd
import pytest

from esr_eval.cli import ROOT_ENV, UsageError, build_parser, check_device, default_root, main, parse
from esr_eval.records import read_rankings
from tests.conftest import REPO_ROOT
from tests.support.synthetic import write_synthetic_run


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
    run = write_synthetic_run(tmp_path / "syn", n_submissions=43)
    assert main(["rank", str(run), "--rules", "ntire2024", "--resamples", "50"]) == 0
    out = capsys.readouterr().out
    assert "protocol ntire2024" in out
    rankings = pd.read_parquet(run / "rankings")
    assert len(rankings) == 43 and rankings["rank_main"].min() == 1
    assert main(["report", str(run), "--rules", "ntire2024", "--resamples", "50"]) == 0
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
    assert (args.root, args.manifests, args.results) == (REPO_ROOT, REPO_ROOT / "model_zoo", Path("results"))
    (home / "esr-eval" / "model_zoo").rmdir()
    monkeypatch.delenv(ROOT_ENV)
    assert default_root() == Path(".")  # nothing found: the current folder, whose missing model_zoo/ the error names


def test_version_is_the_package_metadata(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"esr-eval {metadata.version('esr-eval')}"


def test_results_default_to_the_working_folder_whatever_the_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = parse(build_parser(), ["evaluate", "--root", str(REPO_ROOT)])
    assert args.results == Path("results") and args.manifests == REPO_ROOT / "model_zoo"
    assert parse(build_parser(), ["evaluate", "--results", "elsewhere"]).results == Path("elsewhere")


@pytest.mark.parametrize("argv, dest, value, new", [
    (["evaluate", "--protocol", "official"], "timing", "official", "--timing official"),
    (["rank", "results/r", "--protocol", "ntire2024"], "rules", "ntire2024", "--rules ntire2024"),
    (["report", "results/r", "--protocol", "demo"], "rules", "demo", "--rules demo"),
], ids=["timing", "rank", "report"])
def test_protocol_is_a_warned_alias_of_timing_and_rules(argv, dest, value, new, capsys):
    args = parse(build_parser(), argv)
    assert getattr(args, dest) == value and "protocol" not in args
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: --protocol is deprecated") and f"write {new}" in err


def test_new_spellings_do_not_warn(capsys):
    assert parse(build_parser(), ["evaluate", "--timing", "official"]).timing == "official"
    assert parse(build_parser(), ["rank", "results/r", "--rules", "demo"]).rules == "demo"
    assert parse(build_parser(), ["evaluate"]).timing == "esr-default"
    assert parse(build_parser(), ["report", "results/r"]).rules == "auto"
    assert capsys.readouterr().err == ""


def _no_cuda(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


EVALUATE_MISTAKES = {
    "unknown device": (["--device", "gpu"], "--device gpu: not a device esr-eval runs on. Fix: pass cpu, cuda or cuda:N"),
    "cuda without CUDA": (["--device", "cuda:0"], "sees no CUDA device here. Fix: pass --device cpu"),
    "split without data": (["--split", "DIV2K_LSDIR_valid"], "--split DIV2K_LSDIR_valid needs --data DIR"),
    "missing data folder": (["--data", "/nonexistent/esr-data"], "no such folder. Fix:"),
    "unknown timing": (["--timing", "fastest"], "unknown timing protocol 'fastest'. Fix: pass --timing with one of"),
    "id matching nothing": (["Tny"], "no submission matches 'Tny'. Fix: did you mean team10_Tiny (Tiny)?"),
    "no close id": (["zzzzzz"], "no submission matches 'zzzzzz'. Fix: Give a submission id, team id or name"),
}


@pytest.mark.parametrize("args, message", EVALUATE_MISTAKES.values(), ids=EVALUATE_MISTAKES.keys())
def test_evaluate_mistake_is_one_error_line_exit_2_and_no_run_folder(factory, tmp_path, capsys, monkeypatch,
                                                                     args, message):
    factory.make()
    _no_cuda(monkeypatch)
    results = tmp_path / "results"
    code = main(["evaluate", "--root", str(factory.root), "--manifests", str(factory.manifests),
                 "--results", str(results), *args])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert not results.exists() or not any(results.iterdir())


@pytest.mark.parametrize("command", ["summary", "check"])
def test_every_device_option_is_validated(command, capsys):
    argv = [command, "team99_Bicubic"] if command == "check" else [command]
    assert main([*argv, "--root", str(REPO_ROOT), "--device", "gpu"]) == 2
    assert capsys.readouterr().err.startswith("error: --device gpu: not a device esr-eval runs on")


def test_a_cuda_device_torch_sees_passes_and_one_it_does_not_is_refused(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    check_device("cuda")
    check_device("cuda:0")
    with pytest.raises(UsageError, match=r"^--device cuda:1: torch sees 1 CUDA device\(s\) here, cuda:0 to cuda:0\. Fix"):
        check_device("cuda:1")


def test_evaluate_that_fails_before_its_first_row_leaves_no_run_folder(factory, tmp_path, monkeypatch, capsys):
    def fail(*args, **kwargs):
        raise RuntimeError("environment probe failed")

    factory.make()
    monkeypatch.setattr("esr_eval.provenance.run_metadata", fail)
    results = tmp_path / "results"
    assert main(["evaluate", "--root", str(factory.root), "--manifests", str(factory.manifests),
                 "--results", str(results), "--run-id", "r1"]) == 2
    assert "environment probe failed" in capsys.readouterr().err
    assert not (results / "r1").exists()


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def _rules_of(run: Path) -> set[str]:
    return set(read_rankings(run).table["protocol"])


def test_rank_auto_on_splits_of_no_challenge_says_so_and_ranks_with_the_demo_rules(tmp_path, capsys):
    run = write_synthetic_run(tmp_path / "set5", n_submissions=8, splits=("Set5",), images_per_split=4, repeats=2)
    assert main(["rank", str(run), "--resamples", "20"]) == 0
    out = capsys.readouterr().out
    note = [line for line in out.splitlines() if line.startswith("rules auto:")]
    assert note == [
        "rules auto: the PSNR gates of ntire2026 need splits DIV2K_LSDIR_valid and DIV2K_LSDIR_test; this run has "
        "Set5: ranked with the demo rules on Set5, gated: valid PSNR >= the PSNR of submission_id == "
        "'team99_Bicubic' + 0.3 dB"]
    rankings = read_rankings(run).table
    assert _rules_of(run) == {"demo"} and rankings["rank_main"].notna().sum() >= 1


def test_rank_auto_on_challenge_splits_takes_the_latest_rules_for_them(tmp_path, capsys):
    run = write_synthetic_run(tmp_path / "div2k", n_submissions=8, splits=("DIV2K_valid", "DIV2K_test"),
                              images_per_split=4, repeats=2)
    assert main(["rank", str(run), "--resamples", "20"]) == 0
    assert "rules auto:" not in capsys.readouterr().out and _rules_of(run) == {"ntire2022"}


@pytest.mark.parametrize("command", ["rank", "report"])
def test_rules_reading_splits_the_run_lacks_are_refused_with_the_fix(command, tmp_path, capsys):
    run = write_synthetic_run(tmp_path / "emb", n_submissions=8, splits=("embedded",), images_per_split=4, repeats=2)
    assert main([command, str(run), "--rules", "ntire2024", "--resamples", "20"]) == 2
    [error] = _error_lines(capsys.readouterr().err)  # after the synthetic run's UNVERIFIED warning (no ledger)
    assert error.startswith("error: --rules ntire2024 ranks splits DIV2K_LSDIR_valid (valid), DIV2K_LSDIR_test "
                            "(test), which this run does not have (it has embedded)")
    assert "Fix: name the run's splits that stand for them with --valid-split NAME --test-split NAME" in error
    assert not (run / "rankings").exists() and not (run / "report").exists()
    mapped = ["--valid-split", "embedded", "--test-split", "embedded"]
    assert main([command, str(run), "--rules", "ntire2024", *mapped, "--resamples", "20"]) == 0


def test_rank_never_replaces_rankings_made_under_other_rules_without_replace(tmp_path, capsys):
    run = write_synthetic_run(tmp_path / "div2k", n_submissions=8, images_per_split=4, repeats=2)
    demo = ["--rules", "demo", "--valid-split", "DIV2K_LSDIR_valid", "--test-split", "DIV2K_LSDIR_test"]
    assert main(["rank", str(run), "--rules", "ntire2024", "--resamples", "20"]) == 0
    before = (run / "rankings" / "part-00000.parquet").read_bytes()
    capsys.readouterr()
    assert main(["rank", str(run), *demo, "--resamples", "20"]) == 2
    [error] = _error_lines(capsys.readouterr().err)
    assert error.startswith(f"error: {run / 'rankings'} holds this run's ntire2024 ranking; ranking under demo "
                            f"would replace it. Fix: `esr-eval report {run} --rules demo` writes") and "--replace" in error
    assert (run / "rankings" / "part-00000.parquet").read_bytes() == before
    assert main(["rank", str(run), "--rules", "ntire2024", "--resamples", "20"]) == 0  # the same rules: re-ranked
    assert main(["rank", str(run), *demo, "--resamples", "20", "--replace"]) == 0
    assert _rules_of(run) == {"demo"}
