"""Tests of esr_eval.protocols and esr_eval.ranking: protocol files, gates, ties, exclusions,
the published 2022 table, the 2024 baseline score, bootstrap intervals and the rankings table."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from esr_eval.protocols import ProtocolError, builtin_protocol_names, load_protocol
from esr_eval.ranking import BaselineError, metrics_table, rank, rank_run
from esr_eval.records import read_run
from tests.conftest import SHARED
from tests.support.synthetic import write_synthetic_run

REPO = Path(__file__).resolve().parents[1]
REFERENCE = SHARED / "reference"
NTIRE2022_CSV = REFERENCE / "ntire2022_results.csv"
# RLFN_Prune's published complexity: the baseline identity of ntire2024 and demo.
RLFN_FIGURES = {"params": 317_218.0, "flops": 19_674_859_520.0}


def _table(rows: list[dict]) -> pd.DataFrame:
    """A metrics table from short rows: defaults for ids, status and every 2024 metric; a row
    named RLFN defaults to RLFN's published complexity, so the protocols take it as baseline."""
    defaults = {"status": "ok", "val_psnr_db": 27.0, "test_psnr_db": 27.1, "runtime_ms": 10.0,
                "params": 300_000.0, "flops": 2.0e10, "activations": 8.0e7, "memory_mb": 400.0, "num_conv": 39.0}
    rlfn = {sid: RLFN_FIGURES for sid in (row["submission_id"] for row in rows) if sid.endswith("_RLFN")}
    table = pd.DataFrame([{**defaults, **rlfn.get(row["submission_id"], {}), **row} for row in rows])
    table["team_id"] = table["submission_id"].str.slice(4, 6)
    table["name"] = table["submission_id"].str.split("_").str[1]
    return table


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_run(tmp_path_factory.mktemp("runs") / "synthetic-43")


# --- protocol files -----------------------------------------------------------------------------

def test_every_builtin_protocol_loads_with_its_tracks() -> None:
    names = builtin_protocol_names()
    assert set(names) == {"demo", "ntire2022", "ntire2024", "ntire2025", "ntire2026"}
    weights = {n: dict(load_protocol(n).track("main").weights) for n in names if n != "ntire2022"}
    assert weights["ntire2024"] == weights["ntire2025"] == {"runtime_ms": 0.7, "flops": 0.15, "params": 0.15}
    assert weights["ntire2026"] == weights["demo"] == {"runtime_ms": 0.8, "flops": 0.1, "params": 0.1}
    p2022 = load_protocol("ntire2022")
    assert p2022.track("sub2").metric_names == ("runtime_ms", "params", "flops", "activations", "memory_mb")
    assert p2022.metric("flops").column == "flops_hook_2022"
    assert load_protocol("ntire2024").metric("flops").column == "flops_fvcore"
    assert load_protocol("ntire2024").baseline.constant("runtime_ms") == 13.54


def test_unknown_key_suggests_the_close_one(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("include: ntire2024\nname: mine\nversion: '1'\ngate_roundng: exact\n")
    expected = r"bad.yaml: gate_roundng: unknown key\. Fix: remove it or rename it \(did you mean 'gate_rounding'\?\)"
    with pytest.raises(ProtocolError, match=expected):
        load_protocol(bad)
    bad.write_text("include: ntire2024\nname: mine\nversion: '1'\ntracks: {sub_runtime: {weights: {runtime: 1.0}}}\n")
    expected = r"tracks.sub_runtime: uses unknown metric 'runtime' \(did you mean 'runtime_ms'\?\)"
    with pytest.raises(ProtocolError, match=expected):
        load_protocol(bad)
    with pytest.raises(ProtocolError, match=r"unknown protocol 'ntire2204' \(did you mean 'ntire2024'\?\)"):
        load_protocol("ntire2204")


def test_constants_source_needs_every_scored_constant(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("include: ntire2026\nname: mine\nversion: '1'\nbaseline: {source: constants}\n")
    with pytest.raises(ProtocolError, match="baseline.constants lacks runtime_ms"):
        load_protocol(path)


def test_with_splits_remaps_the_roles(synthetic_run: Path) -> None:
    protocol = load_protocol("ntire2024").with_splits(valid="DIV2K_LSDIR_test", test="DIV2K_LSDIR_test")
    metrics = metrics_table(synthetic_run, protocol).set_index("submission_id")
    assert metrics["val_psnr_db"].equals(metrics["test_psnr_db"])
    assert metrics.loc["team00_RLFN", "val_psnr_db"] == pytest.approx(27.069471, abs=1e-9)


# --- the published 2022 table -------------------------------------------------------------------

@pytest.fixture(scope="module")
def ntire2022() -> tuple[pd.DataFrame, pd.DataFrame]:
    if not NTIRE2022_CSV.exists():
        pytest.skip(f"{NTIRE2022_CSV} absent (shared reference data not checked out)")
    published = pd.read_csv(NTIRE2022_CSV)
    metrics = pd.DataFrame({
        "submission_id": published["team"], "team_id": [f"{i:02d}" for i in range(len(published))],
        "name": published["team"], "status": "ok",
        "val_psnr_db": published["val_psnr_db"], "test_psnr_db": published["test_psnr_db"],
        "runtime_ms": published["runtime_ms"], "params": published["params_m"] * 1e6,
        "flops": published["flops_g"] * 1e9, "activations": published["activations_m"] * 1e6,
        "memory_mb": published["memory_mb"], "num_conv": published["num_conv"],
    })
    rankings = rank(metrics, load_protocol("ntire2022")).set_index("submission_id")
    return published.set_index("team"), rankings


def test_2022_ranks_exactly_the_published_35_and_excludes_the_rest(ntire2022) -> None:
    published, rankings = ntire2022
    rankings = rankings.loc[published.index]
    ranked = rankings["rank_main"].notna()
    assert ranked.sum() == 35
    assert (ranked == (published["status"] == "ranked")).all()
    assert (rankings["rank_main"][ranked].astype(int) == published["main_rank"][ranked].astype(int)).all()
    excluded = published["status"] == "excluded"
    assert (~rankings.loc[excluded, "gate_pass"]).all()
    assert rankings.loc[excluded, "excluded_reason"].str.startswith("PSNR gate:").all()
    assert set(rankings.loc[published["status"] == "reference", "role"]) == {"baseline", "reference"}


@pytest.mark.parametrize(("track", "column"), [("sub1", "subtrack1_rank_sum"), ("sub2", "subtrack2_rank_sum")])
def test_2022_rank_sums_match_for_teams_untied_in_rounded_columns(ntire2022, track: str, column: str) -> None:
    published, rankings = ntire2022
    ranked = published[published["status"] == "ranked"]
    source = {"runtime_ms": "runtime_ms", "params": "params_m", "flops": "flops_g",
              "activations": "activations_m", "memory_mb": "memory_mb"}
    metrics = load_protocol("ntire2022").track(track).metric_names
    tied = np.zeros(len(ranked), dtype=bool)
    for metric in metrics:
        tied |= ranked[source[metric]].duplicated(keep=False).to_numpy()
    untied = ranked.index[~tied]
    assert len(untied) >= 25, "too few untied teams: the check would say little"
    ours = rankings.loc[untied, f"score_{track}"].astype(int)
    assert (ours == ranked.loc[untied, column].astype(int)).all(), (ours - ranked.loc[untied, column]).to_dict()


# --- the exp-ratio rules ------------------------------------------------------------------------

def test_2024_baseline_scores_exp2_on_every_track_from_run_and_constants() -> None:
    protocol = load_protocol("ntire2024")
    table = _table([
        {"submission_id": "team00_RLFN", "runtime_ms": 13.54, "params": 317_218.0, "flops": 19_674_859_520.0},
        {"submission_id": "team01_Half", "runtime_ms": 13.54 / 2, "params": 317_218.0, "flops": 19_674_859_520.0},
    ])
    constants = dataclasses.replace(protocol, baseline=dataclasses.replace(protocol.baseline, source="constants"))
    for rules in (protocol, constants):
        rankings = rank(table, rules).set_index("submission_id")
        for track in ("main", "sub_runtime", "sub_flops", "sub_params"):
            assert rankings.loc["team00_RLFN", f"score_{track}"] == pytest.approx(math.exp(2), abs=5e-5)
            assert round(rankings.loc["team00_RLFN", f"score_{track}"], 4) == 7.3891
        assert rankings.loc["team01_Half", "score_sub_runtime"] == pytest.approx(math.e)
        assert rankings.loc["team01_Half", "score_main"] == pytest.approx(0.7 * math.e + 0.3 * math.exp(2))
        assert pd.isna(rankings.loc["team00_RLFN", "rank_main"]) and rankings.loc["team01_Half", "rank_main"] == 1


def test_missing_baseline_is_refused_with_the_fix() -> None:
    with pytest.raises(BaselineError, match=r"its baseline RLFN_Prune .* is not in this run.*--baseline SUBMISSION_ID"):
        rank(_table([{"submission_id": "team01_A"}]), load_protocol("ntire2024"))


def test_baseline_without_runtime_leaves_exp_tracks_unranked_with_reason() -> None:
    table = _table([{"submission_id": "team00_RLFN", "status": "timeout", "runtime_ms": np.nan},
                    {"submission_id": "team01_A"}])
    rankings = rank(table, load_protocol("ntire2024")).set_index("submission_id")
    assert rankings.loc["team00_RLFN", "role"] == "baseline" and rankings["rank_main"].isna().all()
    expected = "no baseline runtime_ms (baseline team00_RLFN has status timeout)"
    assert expected in rankings.loc["team01_A", "excluded_reason"]


# --- gates, ties, missing metrics, failures -----------------------------------------------------

def test_gate_exact_and_2dp_disagree_on_a_borderline_entry() -> None:
    table = _table([
        {"submission_id": "team00_RLFN"},
        {"submission_id": "team01_Border", "val_psnr_db": 26.8951},
        {"submission_id": "team02_Below", "test_psnr_db": 26.9849},
    ])
    exact = load_protocol("ntire2024")
    two_dp = dataclasses.replace(exact, gate_rounding="2dp")
    by_exact = rank(table, exact).set_index("submission_id")
    by_2dp = rank(table, two_dp).set_index("submission_id")
    assert not by_exact.loc["team01_Border", "gate_pass"] and by_2dp.loc["team01_Border", "gate_pass"]
    assert by_exact.loc["team01_Border", "excluded_reason"] == "PSNR gate: valid 26.8951 < 26.9000 dB"
    assert by_2dp.loc["team01_Border", "rank_main"] == 1
    assert "valid 26.90 (exact 26.8951) >= 26.90 dB" in by_2dp.loc["team01_Border", "gate_reason"]
    assert not by_exact.loc["team02_Below", "gate_pass"] and not by_2dp.loc["team02_Below", "gate_pass"]


def test_relative_gate_is_bicubic_plus_margin() -> None:
    table = _table([
        {"submission_id": "team99_Bicubic", "val_psnr_db": 26.0, "params": 0.0, "flops": 0.0},
        {"submission_id": "team00_RLFN", "val_psnr_db": 27.0},
        {"submission_id": "team01_Close", "val_psnr_db": 26.29},
        {"submission_id": "team02_Over", "val_psnr_db": 26.31, **RLFN_FIGURES},
    ])
    rankings = rank(table, load_protocol("demo")).set_index("submission_id")
    order = ["team00_RLFN", "team01_Close", "team02_Over", "team99_Bicubic"]
    assert list(rankings["gate_pass"][order]) == [True, False, True, False]
    assert "< 26.3000 (team99_Bicubic 26.0000 + 0.3) dB" in rankings.loc["team01_Close", "gate_reason"]
    assert rankings.loc["team99_Bicubic", "role"] == "reference"
    assert rankings.loc["team00_RLFN", "rank_main"] == 1  # the demo ranks its baseline


def test_ties_share_the_smallest_rank() -> None:
    passing_2022 = {"val_psnr_db": 29.0, "test_psnr_db": 28.7}
    table = _table([
        {"submission_id": "team01_A", "runtime_ms": 20.0, "params": 3e5, **passing_2022},
        {"submission_id": "team02_B", "runtime_ms": 20.0, "params": 2e5, **passing_2022},
        {"submission_id": "team03_C", "runtime_ms": 10.0, "params": 3e5, **passing_2022},
        {"submission_id": "team04_D", "runtime_ms": 30.0, "params": 1e5, **passing_2022},
    ])
    rankings = rank(table, load_protocol("ntire2022")).set_index("submission_id")
    assert rankings["rank_main"].to_dict() == {"team03_C": 1, "team01_A": 2, "team02_B": 2, "team04_D": 4}
    # sub1 = rank(params) + rank(flops): params ranks 3, 2, 3, 1 plus all-tied FLOPs rank 1.
    assert rankings["score_sub1"].to_dict() == {"team03_C": 4, "team01_A": 4, "team02_B": 3, "team04_D": 2}
    assert rankings["rank_sub1"].to_dict() == {"team03_C": 3, "team01_A": 3, "team02_B": 2, "team04_D": 1}


def test_missing_metric_excludes_only_the_tracks_that_need_it() -> None:
    table = _table([
        {"submission_id": "team00_RLFN"},
        {"submission_id": "team01_NoFlops", "flops": np.nan},
        {"submission_id": "team02_Full", "runtime_ms": 12.0},
    ])
    rankings = rank(table, load_protocol("ntire2024")).set_index("submission_id")
    row = rankings.loc["team01_NoFlops"]
    assert pd.isna(row["rank_main"]) and pd.isna(row["rank_sub_flops"])
    assert row["rank_sub_runtime"] == 1 and row["rank_sub_params"] == 1
    assert row["excluded_reason"] == "missing flops (not ranked in main, sub_flops)"
    assert rankings.loc["team02_Full", "rank_main"] == 1 and pd.isna(rankings.loc["team02_Full", "excluded_reason"])


def test_failed_submission_is_listed_with_its_reason() -> None:
    table = _table([
        {"submission_id": "team00_RLFN"},
        {"submission_id": "team01_Crash", "status": "error", "error": "RuntimeError: CUDA OOM\ntraceback...",
         "runtime_ms": np.nan, "val_psnr_db": np.nan, "test_psnr_db": np.nan},
        {"submission_id": "team02_Ok", "runtime_ms": 9.0},
    ])
    rankings = rank(table, load_protocol("ntire2024"))
    assert len(rankings) == 3
    row = rankings.set_index("submission_id").loc["team01_Crash"]
    assert row["excluded_reason"] == "status error: RuntimeError: CUDA OOM"
    assert all(pd.isna(row[f"rank_{t}"]) for t in ("main", "sub_runtime", "sub_flops", "sub_params"))
    assert list(rankings["submission_id"]) == ["team02_Ok", "team00_RLFN", "team01_Crash"]


# --- synthetic run: bootstrap and the written table ---------------------------------------------

def test_rank_run_writes_the_rankings_table_with_intervals(synthetic_run: Path) -> None:
    protocol = load_protocol("ntire2024").with_resamples(300)
    written = rank_run(synthetic_run, protocol)
    again = rank_run(synthetic_run, protocol)
    on_disk = pd.read_parquet(synthetic_run / "rankings")
    assert len(on_disk) == len(written) == 43 and list(on_disk.columns) == list(written.columns)
    assert sorted(p.name for p in (synthetic_run / "rankings").iterdir()) == ["part-00000.parquet"]
    pd.testing.assert_frame_equal(written, again)
    ranked = written[written["rank_main"].notna()]
    assert 20 <= len(ranked) <= 39
    assert (ranked["runtime_ms_ci_low"] <= ranked["runtime_ms"]).all()
    assert (ranked["runtime_ms"] <= ranked["runtime_ms_ci_high"]).all()
    assert (ranked["rank_main_ci_low"] <= ranked["rank_main"]).all()
    assert (ranked["rank_main"] <= ranked["rank_main_ci_high"]).all()
    assert ranked["tied_with_main"].notna().all()
    for _, row in ranked[ranked["tied_with_main"] != ""].iterrows():
        for other in row["tied_with_main"].split(", "):
            partner = ranked.set_index("submission_id").loc[other]
            assert partner["rank_main_ci_low"] <= row["rank_main_ci_high"]
            assert row["rank_main_ci_low"] <= partner["rank_main_ci_high"]
    statuses = written.set_index("submission_id")["excluded_reason"]
    assert statuses.str.startswith("status error").sum() == 1 and statuses.str.startswith("status timeout").sum() == 1
    assert statuses["team03_RepRFN"] == "PSNR gate: valid 26.8962 < 26.9000 dB"


def test_no_samples_means_null_intervals(synthetic_run: Path) -> None:
    protocol = load_protocol("ntire2024")
    rankings = rank(metrics_table(synthetic_run, protocol), protocol)
    assert rankings["runtime_ms_ci_low"].isna().all() and rankings["rank_main_ci_high"].isna().all()
    assert rankings["tied_with_main"].isna().all()


def test_constant_latencies_give_zero_width_intervals(synthetic_run: Path) -> None:
    protocol = load_protocol("ntire2024").with_resamples(200)
    tables = read_run(synthetic_run)
    metrics = metrics_table(tables, protocol)
    noisy = rank(metrics, protocol, samples=tables.samples).set_index("submission_id")
    per_submission_ms = tables.samples.groupby("submission_id")["latency_ms"].transform("mean")
    flat_samples = tables.samples.assign(latency_ms=per_submission_ms)
    flat = rank(metrics, protocol, samples=flat_samples).set_index("submission_id")
    assert ((noisy["runtime_ms_ci_high"] - noisy["runtime_ms_ci_low"]).dropna() > 0).all()
    assert np.allclose((flat["runtime_ms_ci_high"] - flat["runtime_ms_ci_low"]).dropna(), 0.0, atol=1e-9)


def test_bootstrap_resamples_images_jointly_across_submissions() -> None:
    """B is 1.2x slower than A on every image; image times span 100x. A paired bootstrap never
    swaps them, whereas resampling images independently per submission would."""
    image_ms = np.array([1.0, 3.0, 10.0, 30.0, 100.0])
    rows = [
        {"submission_id": sid, "split": split, "image": f"{i}.png", "repeat": r, "latency_ms": factor * ms}
        for sid, factor in (("team01_A", 1.0), ("team02_B", 1.2))
        for split in ("DIV2K_valid", "DIV2K_test") for i, ms in enumerate(image_ms) for r in range(3)
    ]
    passing = {"val_psnr_db": 29.0, "test_psnr_db": 28.7, "timing_protocol": "esr-default-v1"}
    metrics = _table([
        {"submission_id": "team01_A", "runtime_ms": image_ms.mean(), **passing},
        {"submission_id": "team02_B", "runtime_ms": 1.2 * image_ms.mean(), **passing},
    ])
    rankings = rank(metrics, load_protocol("ntire2022").with_resamples(400), samples=pd.DataFrame(rows))
    rankings = rankings.set_index("submission_id")
    assert rankings["runtime_ms_ci_high"]["team01_A"] > rankings["runtime_ms_ci_low"]["team02_B"]  # marginals overlap
    assert rankings["rank_main_ci_low"].to_dict() == {"team01_A": 1, "team02_B": 2}
    assert rankings["rank_main_ci_high"].to_dict() == {"team01_A": 1, "team02_B": 2}
    assert rankings["tied_with_main"].to_dict() == {"team01_A": "", "team02_B": ""}


def test_unknown_timing_protocol_is_refused(synthetic_run: Path) -> None:
    protocol = load_protocol("ntire2024").with_resamples(10)
    tables = read_run(synthetic_run)
    metrics = metrics_table(tables, protocol).assign(timing_protocol="mystery-v9")
    with pytest.raises(ValueError, match="timing_protocol of .* is 'mystery-v9'.*RUNTIME_STATISTIC_BY_TIMING_PROTOCOL"):
        rank(metrics, protocol, samples=tables.samples)


def test_metrics_table_names_a_missing_run_column(synthetic_run: Path) -> None:
    protocol = load_protocol("ntire2024")
    tables = read_run(synthetic_run)
    broken = dataclasses.replace(tables, submissions=tables.submissions.drop(columns=["flops_fvcore"]))
    with pytest.raises(ValueError, match="submissions lacks column 'flops_fvcore' .*metric flops"):
        metrics_table(broken, protocol)


def test_demo_protocol_on_an_embedded_run(tmp_path: Path) -> None:
    run = write_synthetic_run(
        tmp_path / "demo-run", n_submissions=8, seed=3, splits=("embedded",), images_per_split=6, repeats=3
    )
    rankings = rank_run(run, load_protocol("demo").with_resamples(100)).set_index("submission_id")
    assert rankings["val_runtime_ms"].equals(rankings["test_runtime_ms"])
    assert rankings["runtime_ms"].equals(rankings["val_runtime_ms"])
    assert rankings.loc["team00_RLFN", "score_main"] == pytest.approx(math.exp(2))
    assert rankings.loc["team99_Bicubic", "role"] == "reference" and not rankings.loc["team99_Bicubic", "gate_pass"]


def test_rankings_for_reuses_rankings_made_by_the_same_rules(synthetic_run: Path, monkeypatch) -> None:
    from esr_eval import ranking
    from esr_eval.ranking import rankings_for, rules_sha256, stored_rankings

    protocol = load_protocol("ntire2024").with_resamples(30)
    written = rank_run(synthetic_run, protocol)
    tables = read_run(synthetic_run)
    monkeypatch.setattr(ranking, "rank", lambda *args, **kwargs: pytest.fail("ranked again"))
    reused = rankings_for(tables, protocol)
    assert list(reused.columns) == list(written.columns)
    assert reused["rank_main"].equals(written["rank_main"]) and reused["submission_id"].equals(written["submission_id"])
    assert np.allclose(reused["score_main_ci_low"], written["score_main_ci_low"], equal_nan=True)
    assert rules_sha256(protocol) == rules_sha256(dataclasses.replace(protocol, source_path="elsewhere.yaml"))
    for other in (protocol.with_resamples(31), protocol.with_baseline("team00_RLFN"), load_protocol("ntire2025")):
        assert rules_sha256(other) != rules_sha256(protocol) and stored_rankings(tables, other) is None


def test_a_skipped_submission_is_listed_as_not_measured_on_this_hardware(synthetic_run: Path) -> None:
    tables = read_run(synthetic_run)
    subs = tables.submissions.copy()
    entry = subs.index[subs["submission_id"] == subs["submission_id"].iloc[5]][0]
    sid = subs.at[entry, "submission_id"]
    subs.loc[entry, ["status", "error"]] = ["skipped", f"[{sid}] not measured on this hardware: it imports the "
                                                       "CUDA-only extension mamba_ssm and this run has no CUDA device"]
    protocol = load_protocol("ntire2024").with_resamples(20)
    rankings = rank(metrics_table(dataclasses.replace(tables, submissions=subs), protocol), protocol)
    row = rankings.set_index("submission_id").loc[sid]
    assert pd.isna(row["rank_main"])
    assert row["excluded_reason"].startswith(f"status skipped: [{sid}] not measured on this hardware: it imports")


# --- --rules auto: rules that fit the run's splits ------------------------------------------------

_MEASURED = pd.DataFrame({"submission_id": ["team00_RLFN", "team99_Bicubic"], "team_id": ["00", "99"],
                          "name": ["RLFN", "Bicubic"], "status": ["ok", "ok"]})
_NO_BICUBIC = _MEASURED.iloc[:1]
_NTIRE_2026_GATES = "the PSNR gates of ntire2026 need splits DIV2K_LSDIR_valid and DIV2K_LSDIR_test; this run has"
_UNGATED = "ungated (the gate's reference, submission_id == 'team99_Bicubic', has no ok row in this run)"
FITTING = {
    "embedded": (["embedded"], _MEASURED, "demo", ("embedded", "embedded"), 1, None),
    "embedded, no bicubic": (["embedded"], _NO_BICUBIC, "demo", ("embedded", "embedded"), 0,
                             f"demo rules for the embedded split, {_UNGATED}"),
    "2024-2026 splits": (["DIV2K_LSDIR_valid", "DIV2K_LSDIR_test"], _MEASURED, "ntire2026",
                         ("DIV2K_LSDIR_valid", "DIV2K_LSDIR_test"), 2, None),
    "2022 splits": (["DIV2K_test", "DIV2K_valid"], _MEASURED, "ntire2022", ("DIV2K_valid", "DIV2K_test"), 2, None),
    "Set5": (["Set5", "Set5"], _MEASURED, "demo", ("Set5", "Set5"), 1,
             f"{_NTIRE_2026_GATES} Set5: ranked with the demo rules on Set5, gated: valid PSNR >= the PSNR of "
             "submission_id == 'team99_Bicubic' + 0.3 dB"),
    "Set5 and Set14, no bicubic": (["Set5", "Set14"], _NO_BICUBIC, "demo", ("Set5", "Set14"), 0,
                                   f"{_NTIRE_2026_GATES} Set5, Set14: ranked with the demo rules on Set5 (valid) and "
                                   f"Set14 (test), {_UNGATED}"),
    "half of a challenge": (["DIV2K_LSDIR_valid"], _NO_BICUBIC, "demo", ("DIV2K_LSDIR_valid", "DIV2K_LSDIR_valid"),
                            0, f"{_NTIRE_2026_GATES} DIV2K_LSDIR_valid: ranked with the demo rules on "
                               f"DIV2K_LSDIR_valid, {_UNGATED}"),
}


@pytest.mark.parametrize("splits, submissions, name, roles, gates, note", FITTING.values(), ids=FITTING.keys())
def test_fitting_rules_pick_rules_whose_splits_and_gates_the_run_has(splits, submissions, name, roles, gates, note):
    from esr_eval.ranking import fitting_rules

    choice = fitting_rules(splits, submissions)
    assert (choice.protocol.name, (choice.protocol.split_for("valid"), choice.protocol.split_for("test"))) == (name, roles)
    assert (len(choice.protocol.gates), choice.note) == (gates, note)
    assert ("ungated" in choice.protocol.description) == (_UNGATED in (note or ""))


def test_fitting_rules_on_a_set5_run_without_bicubic_rank_entries_instead_of_nobody(tmp_path: Path) -> None:
    from esr_eval.ranking import fitting_rules

    run = write_synthetic_run(tmp_path / "set5", n_submissions=8, splits=("Set5",), images_per_split=4, repeats=2)
    tables = read_run(run)
    without = tables.submissions[tables.submissions["submission_id"] != "team99_Bicubic"]
    tables = dataclasses.replace(tables, submissions=without)
    protocol = fitting_rules(tables.splits["split"], without).protocol.with_resamples(20)
    rankings = rank(metrics_table(tables, protocol), protocol)
    assert rankings["rank_main"].notna().sum() >= 2 and set(rankings["gate_reason"].dropna()) == {"no PSNR gate"}

