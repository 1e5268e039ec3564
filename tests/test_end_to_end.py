"""End to end on real rows: the README's main job (every shipped submission on the embedded default
split, through Ray) and then `esr-eval rank` and `esr-eval report` on its run folder. What the
closing ranking wrote, what `rank` writes again and what the report shows must agree."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

from esr_eval.cli import main
from esr_eval.manifest import discover_all
from esr_eval.records import read_rankings, read_verified
from tests.conftest import REPO_ROOT
from tests.support.ray_runs import local_ray

pytest.importorskip("ray")
pytestmark = pytest.mark.ray

RULES = "demo"  # the rules the main job's closing ranking picks for an embedded-split run


@pytest.fixture(scope="module")
def ray_address(tmp_path_factory):
    yield from local_ray(tmp_path_factory.mktemp("ray"), fake_gpus=2)


@pytest.fixture(scope="module")
def main_job(ray_address, tmp_path_factory):
    """`python evaluate_all.py` as the README runs it, on a private instance and results folder."""
    results = tmp_path_factory.mktemp("e2e") / "results"
    completed = subprocess.run(
        [sys.executable, str(REPO_ROOT / "evaluate_all.py"), "--address", ray_address, "--results", str(results),
         "--run-id", "e2e", "--device", "cpu", "--no-progress"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=900, check=False)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return results / "e2e", completed.stdout


def test_every_shipped_submission_has_an_ok_row(main_job):
    run_dir, _ = main_job
    shipped, errors = discover_all(REPO_ROOT / "model_zoo", REPO_ROOT)
    assert not errors
    subs = read_verified(run_dir, "submissions").set_index("submission_id")
    assert sorted(subs.index) == sorted(s.submission_id for s in shipped)
    assert (subs["status"] == "ok").all(), subs["error"].dropna().to_dict()
    splits = read_verified(run_dir, "splits")
    assert set(splits["split"]) == {"embedded"} and len(splits) == len(shipped)


def test_rank_and_report_agree_with_the_closing_ranking(main_job, capsys):
    run_dir, stdout = main_job
    closing = read_rankings(run_dir)
    assert closing is not None, "the main job's closing ranking wrote no rankings/"
    closing_table = closing.table.set_index("submission_id").sort_index()
    assert (closing_table["protocol"] == RULES).all() and closing_table["rules_version"].notna().all()
    assert closing_table.loc["team00_RLFN", "baseline_selection"] == "identity"
    ranked = closing_table[closing_table["rank_main"].notna()]
    assert len(ranked) >= 3, "the shipped zoo ranks under the demo rules"

    assert main(["rank", str(run_dir), "--rules", RULES]) == 0
    again = read_rankings(run_dir).table.set_index("submission_id").sort_index()
    pd.testing.assert_frame_equal(again, closing_table)  # fixed bootstrap seed: the same table

    assert main(["report", str(run_dir), "--rules", RULES]) == 0
    report = (run_dir / "report" / "report.md").read_text(encoding="utf-8")
    for name in ranked["name"]:
        assert f"| {name} " in report or f"| {name}|" in report, f"{name} missing from the report"
    best = ranked.sort_values("rank_main").iloc[0]
    assert f"{best['score_main']:.4f} (1)" in report  # the results table: score (rank)
    capsys.readouterr()
    assert best["name"] in stdout  # the closing ranking printed by the main job names the winner
