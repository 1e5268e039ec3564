"""The baseline is what the rules say it is: each protocol names its baseline by identity
(architecture + published complexity), the ranking finds it by that identity, verifies an
explicitly named one, and refuses a run it cannot find it in instead of scoring against another
model. The run below is shaped like the shipped zoo, with its real measured figures."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pandas as pd
import pytest

from esr_eval.cli import main, ranking_protocol
from esr_eval.protocols import ProtocolError, RankingProtocol, builtin_protocol_names, load_protocol
from esr_eval.ranking import BaselineError, metrics_table, rank
from esr_eval.records import SplitRow, SubmissionRow, read_run, write_rows

REPO = Path(__file__).resolve().parents[1]

# The shipped model_zoo as measured on 1x3x256x256 (README "esr-eval summary") and on the
# embedded split (PSNR dB, runtime ms on CPU).
ZOO = {
    "team00_RLFN": dict(name="RLFN", params=317_218, flops_fvcore=19_674_859_520, flops_hook_2022=19_695_306_752,
                        activations=80_045_184, num_conv=39, psnr_db=26.9966, runtime_ms=12.67),
    "team01_IMDN": dict(name="IMDN", params=893_936, flops_fvcore=58_430_849_024, flops_hook_2022=58_531_512_320,
                        activations=154_140_672, num_conv=43, psnr_db=26.2742, runtime_ms=29.44),
    "team02_RFDN": dict(name="RFDN", params=433_448, flops_fvcore=27_046_231_296, flops_hook_2022=27_102_461_184,
                        activations=112_034_240, num_conv=64, psnr_db=27.2850, runtime_ms=36.46),
    "team03_EFDN": dict(name="EFDN", params=276_192, flops_fvcore=16_703_470_848, flops_hook_2022=16_728_636_672,
                        activations=111_116_736, num_conv=65, psnr_db=27.5994, runtime_ms=17.47),
    "team04_SPAN": dict(name="SPAN", params=150_688, flops_fvcore=9_833_807_872, flops_hook_2022=9_833_807_872,
                        activations=41_680_896, num_conv=22, psnr_db=26.9947, runtime_ms=10.03),
    "team99_Bicubic": dict(name="Bicubic", params=0, flops_fvcore=0, flops_hook_2022=0,
                           activations=0, num_conv=0, psnr_db=25.9104, runtime_ms=0.60),
}
BASELINE_BY_PROTOCOL = {
    "ntire2022": "team01_IMDN",
    "ntire2024": "team00_RLFN",
    "ntire2025": "team03_EFDN",
    "ntire2026": "team04_SPAN",
    "demo": "team00_RLFN",
}


def _write_zoo_run(run_dir: Path, drop: tuple[str, ...] = (), **changes: dict) -> Path:
    """A run folder of the shipped zoo on the embedded split; ``changes`` overrides fields per submission id."""
    population = {sid: {**figures, **changes.get(sid, {})} for sid, figures in ZOO.items() if sid not in drop}
    population.update({sid: figures for sid, figures in changes.items() if sid not in ZOO})
    for sid, f in population.items():
        write_rows(run_dir, "submissions", [SubmissionRow(
            run_id="zoo", submission_id=sid, team_id=sid[4:6], name=f["name"], status="ok", params=f["params"],
            flops_fvcore=f["flops_fvcore"], flops_hook_2022=f["flops_hook_2022"], activations=f["activations"],
            num_conv=f["num_conv"], timing_protocol="esr-default-v1")], sid)
        write_rows(run_dir, "splits", [SplitRow(
            run_id="zoo", submission_id=sid, split="embedded", num_images=5, dataset_sha256="x",
            psnr_db=f["psnr_db"], ssim=None, psnr_y_db=f["psnr_db"] + 1.7, ssim_y=None, runtime_ms=f["runtime_ms"],
            runtime_mean_ms=f["runtime_ms"], runtime_median_ms=f["runtime_ms"], runtime_p90_ms=f["runtime_ms"],
            runtime_n=25, wall_mean_ms=f["runtime_ms"], warmup_calls=5, repeats=5)], sid)
    return run_dir


def _on_embedded(name: str) -> RankingProtocol:
    return load_protocol(name).with_splits(valid="embedded", test="embedded")


def _rank(run: Path, protocol: RankingProtocol) -> pd.DataFrame:
    return rank(metrics_table(read_run(run), protocol), protocol).set_index("submission_id")


@pytest.fixture()
def zoo_run(tmp_path: Path) -> Path:
    return _write_zoo_run(tmp_path / "zoo")


# --- identity ------------------------------------------------------------------------------------

def test_every_builtin_protocol_is_covered_here() -> None:
    assert set(builtin_protocol_names()) == set(BASELINE_BY_PROTOCOL)


@pytest.mark.parametrize(("name", "expected"), sorted(BASELINE_BY_PROTOCOL.items()))
def test_each_builtin_protocol_finds_its_baseline_in_the_shipped_zoo(zoo_run: Path, name: str, expected: str) -> None:
    rankings = _rank(zoo_run, _on_embedded(name))
    assert list(rankings.index[rankings["role"] == "baseline"]) == [expected]
    assert set(rankings["baseline_submission_id"]) == {expected}
    assert set(rankings["baseline_selection"]) == {"identity"}
    assert "differs" not in rankings["baseline_check"].iloc[0]


def test_2026_rules_score_against_span_not_team00_rlfn(zoo_run: Path) -> None:
    rankings = _rank(zoo_run, _on_embedded("ntire2026"))
    assert rankings.loc["team04_SPAN", "role"] == "baseline"
    assert rankings.loc["team00_RLFN", "role"] == "entry"
    assert rankings.loc["team04_SPAN", "score_main"] == pytest.approx(math.exp(2))
    assert rankings.loc["team00_RLFN", "score_sub_params"] == pytest.approx(math.exp(2 * 317_218 / 150_688))
    assert rankings.loc["team00_RLFN", "score_sub_flops"] == pytest.approx(math.exp(2 * 19_674_859_520 / 9_833_807_872))
    assert "name SPAN matches" in rankings.loc["team00_RLFN", "baseline_check"]


def test_run_without_the_baseline_model_is_refused_with_the_fix(tmp_path: Path) -> None:
    run = _write_zoo_run(tmp_path / "zoo", drop=("team04_SPAN",))
    with pytest.raises(BaselineError) as refused:
        _rank(run, _on_embedded("ntire2026"))
    message = str(refused.value)
    assert "its baseline SPAN (28 channels" in message and "is not in this run" in message
    assert "--baseline SUBMISSION_ID" in message and "team 00" in message


def test_a_model_only_named_like_the_baseline_is_not_taken(tmp_path: Path) -> None:
    run = _write_zoo_run(tmp_path / "zoo", team04_SPAN={"params": 120_000})
    with pytest.raises(BaselineError, match="team04_SPAN is named like it, but params 120,000 differs from "
                                            "published 150,688 exact"):
        _rank(run, _on_embedded("ntire2026"))


def test_the_baseline_under_another_name_is_pointed_out_then_named_explicitly(tmp_path: Path) -> None:
    run = _write_zoo_run(tmp_path / "zoo", team04_SPAN={"name": "Baseline"})
    with pytest.raises(BaselineError, match="Its published complexity under another name: team04_SPAN"):
        _rank(run, _on_embedded("ntire2026"))
    rankings = _rank(run, _on_embedded("ntire2026").with_baseline("team04_SPAN"))
    assert rankings.loc["team04_SPAN", "role"] == "baseline"
    assert set(rankings["baseline_selection"]) == {"explicit"}


def test_two_submissions_of_the_baseline_identity_are_refused(tmp_path: Path) -> None:
    run = _write_zoo_run(tmp_path / "zoo", team05_SPAN=ZOO["team04_SPAN"])
    with pytest.raises(BaselineError, match="team04_SPAN, team05_SPAN all match .*choose one with --baseline"):
        _rank(run, _on_embedded("ntire2026"))


@pytest.mark.parametrize(("params", "matches"), [(276_150, True), (276_250, True), (276_149, False), (276_251, False)])
def test_rounded_figures_match_to_the_published_precision(tmp_path: Path, params: int, matches: bool) -> None:
    """EFDN's params are published as 0.2762 M: 276,200 +- 50 (half a unit of the last digit)."""
    run = _write_zoo_run(tmp_path / "zoo", team03_EFDN={"params": params})
    if matches:
        assert _rank(run, _on_embedded("ntire2025")).loc["team03_EFDN", "role"] == "baseline"
    else:
        with pytest.raises(BaselineError, match="differs from published 276,200 ± 50"):
            _rank(run, _on_embedded("ntire2025"))


def test_a_baseline_the_scores_do_not_need_may_be_absent(tmp_path: Path) -> None:
    run = _write_zoo_run(tmp_path / "zoo", drop=("team00_RLFN", "team01_IMDN"))
    rank_sums = _rank(run, _on_embedded("ntire2022"))
    rules_2024 = _on_embedded("ntire2024")
    from_constants = dataclasses.replace(rules_2024, baseline=dataclasses.replace(rules_2024.baseline,
                                                                                  source="constants"))
    constants = _rank(run, from_constants)
    for rankings in (rank_sums, constants):
        assert set(rankings["baseline_selection"]) == {"absent"}
        assert rankings["baseline_submission_id"].isna().all() and (rankings["role"] != "baseline").all()
        assert not rankings["excluded_reason"].fillna("").str.contains("baseline").any()
    assert constants["rank_main"].notna().sum() == 3  # RFDN, EFDN, SPAN pass the 2024 gate on this split
    with pytest.raises(BaselineError, match="is not in this run"):
        _rank(run, rules_2024)


# --- explicit baseline ---------------------------------------------------------------------------

def test_baseline_option_naming_the_wrong_model_is_refused(zoo_run: Path) -> None:
    with pytest.raises(BaselineError) as refused:
        _rank(zoo_run, _on_embedded("ntire2026").with_baseline("team00_RLFN"))
    message = str(refused.value)
    assert "--baseline team00_RLFN is not the rules' baseline SPAN" in message
    assert "params 317,218 differs from published 150,688 exact" in message
    assert "--accept-baseline-mismatch" in message


def test_baseline_option_naming_the_right_model_works(zoo_run: Path) -> None:
    by_identity = _rank(zoo_run, _on_embedded("ntire2026"))
    explicit = _rank(zoo_run, _on_embedded("ntire2026").with_baseline("team04_SPAN"))
    assert set(explicit["baseline_selection"]) == {"explicit"}
    assert explicit.loc["team04_SPAN", "role"] == "baseline"
    pd.testing.assert_series_equal(explicit["score_main"], by_identity["score_main"])


def test_accepted_mismatch_scores_against_the_named_model_and_says_so(zoo_run: Path) -> None:
    rankings = _rank(zoo_run, _on_embedded("ntire2026").with_baseline("team00_RLFN", accept_mismatch=True))
    assert rankings.loc["team00_RLFN", "role"] == "baseline"
    assert rankings.loc["team00_RLFN", "score_main"] == pytest.approx(math.exp(2))
    assert set(rankings["baseline_selection"]) == {"explicit-unverified"}
    assert "differs from published 150,688 exact" in rankings["baseline_check"].iloc[0]


def test_unknown_baseline_id_is_refused(zoo_run: Path) -> None:
    with pytest.raises(BaselineError, match="--baseline team77_X: no such submission in this run; submissions: "
                                            "team00_RLFN, team01_IMDN"):
        _rank(zoo_run, _on_embedded("ntire2026").with_baseline("team77_X"))


# --- protocol files ------------------------------------------------------------------------------

def test_a_protocol_naming_its_baseline_by_team_id_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text('include: ntire2026\nname: mine\nversion: "1"\nbaseline: {match: {team_id: "00"}}\n')
    with pytest.raises(ProtocolError, match="baseline.match: is not supported: a baseline is named by identity"):
        load_protocol(path)


def test_a_published_figure_must_be_a_measured_count(tmp_path: Path) -> None:
    text = (REPO / "esr_eval" / "protocols" / "ntire2026.yaml").read_text()
    path = tmp_path / "p.yaml"
    path.write_text(text.replace("      params: {value: 150688, tolerance: 0}", "      runtime_ms: {value: 9, tolerance: 0}"))
    with pytest.raises(ProtocolError, match="published.runtime_ms: a published figure names a submissions.. metric"):
        load_protocol(path)


# --- command line --------------------------------------------------------------------------------

def test_rank_and_report_take_the_baseline_option(zoo_run: Path, capsys: pytest.CaptureFixture) -> None:
    on_embedded = ["--rules", "ntire2026", "--valid-split", "embedded", "--test-split", "embedded"]
    assert main(["rank", str(zoo_run), *on_embedded]) == 0
    assert "baseline: team04_SPAN (identity: name SPAN matches" in capsys.readouterr().out
    assert set(pd.read_parquet(zoo_run / "rankings")["baseline_submission_id"]) == {"team04_SPAN"}

    assert main(["rank", str(zoo_run), *on_embedded, "--baseline", "team00_RLFN"]) == 2
    assert "add --accept-baseline-mismatch" in capsys.readouterr().err
    assert main(["rank", str(zoo_run), *on_embedded, "--baseline", "team00_RLFN", "--accept-baseline-mismatch"]) == 0
    written = pd.read_parquet(zoo_run / "rankings")
    assert set(written["baseline_selection"]) == {"explicit-unverified"}

    assert main(["report", str(zoo_run), *on_embedded, "--baseline", "team04_SPAN"]) == 0
    assert "Baseline: team04_SPAN (explicit: params 150,688 matches" in (zoo_run / "report" / "report.md").read_text()


def test_ranking_protocol_keeps_its_positional_parameters(zoo_run: Path) -> None:
    plain = ranking_protocol(zoo_run, "ntire2026", "embedded", "embedded", 10)
    assert plain.split_for("valid") == "embedded" and plain.baseline.submission_id is None
    named = ranking_protocol(zoo_run, "ntire2026", baseline="team04_SPAN")
    assert named.baseline.submission_id == "team04_SPAN" and not named.baseline.accept_mismatch
    with pytest.raises(ValueError, match="--accept-baseline-mismatch applies to a baseline named with --baseline"):
        ranking_protocol(zoo_run, "ntire2026", accept_baseline_mismatch=True)
