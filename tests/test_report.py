"""Tests of esr_eval.report (HTML + Markdown + plots of a ranked run) and of the headless render."""
from __future__ import annotations

import html
import importlib.util
import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import esr_eval.ranking
from esr_eval.protocols import load_protocol
from esr_eval.ranking import metrics_table, rank, rank_run
from esr_eval.records import read_run
from esr_eval.report import POINT_LABEL_GID, pareto_front, psnr_runtime_figure, scores_figure, write_report
from tests.support.synthetic import DEVICE_NAME, write_synthetic_run

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory):
    run = write_synthetic_run(tmp_path_factory.mktemp("runs") / "synthetic-43")
    protocol = load_protocol("ntire2024").with_resamples(200)
    tables = read_run(run)
    rankings = rank(metrics_table(tables, protocol), protocol, samples=tables.samples)
    return write_report(run, protocol), rankings


def test_report_files_and_plots_exist(report) -> None:
    paths, _ = report
    assert paths.html.parent.name == "report"
    assert [p.name for p in paths.plots] == [
        "psnr_vs_runtime.png", "scores_main.png", "scores_sub_runtime.png", "scores_sub_flops.png",
        "scores_sub_params.png",
    ]
    for plot in paths.plots:
        with Image.open(plot) as image:
            assert image.format == "PNG" and image.width > 300 and image.height > 200
            assert np.asarray(image.convert("L")).std() > 5, f"{plot.name} looks blank"


def test_html_is_self_contained(report) -> None:
    paths, _ = report
    text = paths.html.read_text(encoding="utf-8")
    assert "<style>" in text
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:)""", text), "external resource referenced"
    assert text.count('src="data:image/png;base64,') == len(paths.plots)


def test_markdown_links_its_plots(report) -> None:
    paths, _ = report
    text = paths.markdown.read_text(encoding="utf-8")
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert sorted(linked) == sorted(p.name for p in paths.plots)
    assert all((paths.markdown.parent / name).exists() for name in linked)


def test_results_table_lists_everyone_with_ranks_in_parentheses(report) -> None:
    paths, rankings = report
    text = paths.markdown.read_text(encoding="utf-8")
    results = text.split("## Results", 1)[1].split("## ", 1)[0]
    rows = [line for line in results.splitlines() if line.startswith("|")][2:]  # after the header and alignment rows
    assert len(rows) == len(rankings) == 43
    winner = rankings.iloc[0]
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[:3] == ["1", winner["team_id"], winner["name"]]
    assert f"{winner['runtime_ms']:.2f} ({int(winner['metric_rank_runtime_ms'])})" in cells
    assert f"{winner['params'] * 1e-6:.3f} ({int(winner['metric_rank_params'])})" in cells
    assert f"{winner['score_main']:.4f} (1)" in cells


def test_excluded_entries_and_provenance_are_reported(report) -> None:
    paths, rankings = report
    text = paths.markdown.read_text(encoding="utf-8")
    not_ranked = text.split("## Not ranked", 1)[1].split("## ", 1)[0]
    for reason in rankings["excluded_reason"].dropna():
        assert reason in not_ranked
    assert "status error: ModuleNotFoundError" in not_ranked
    provenance = text.split("## Provenance", 1)[1]
    assert re.search(r"\| run\.device\.name +\| NVIDIA GeForce RTX 3090 \(synthetic\) +\|", provenance)
    assert re.search(r"\| protocol\.gate_rounding +\| exact +\|", provenance)


def test_pareto_front_keeps_only_undominated_points() -> None:
    runtime_ms = np.array([10.0, 5.0, 20.0, 8.0, 30.0, 5.0])
    psnr_db = np.array([27.0, 26.9, 27.2, 26.8, 27.1, 26.95])
    assert list(pareto_front(runtime_ms, psnr_db)) == [5, 0, 2]


def test_single_split_report_draws_one_panel(tmp_path: Path) -> None:
    run = write_synthetic_run(
        tmp_path / "demo-run", n_submissions=8, seed=1, splits=("embedded",), images_per_split=5, repeats=3
    )
    paths = write_report(run, load_protocol("demo").with_resamples(50), out_dir=tmp_path / "out")
    assert paths.html.parent == tmp_path / "out"
    with Image.open(paths.plots[0]) as image:
        assert image.height < image.width  # one panel, not two one above the other


@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} not installed (apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(report, tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("render_report", REPO / "benchmarks" / "render_report.py")
    render_report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render_report)
    paths, _ = report
    screenshot = render_report.render_html(paths.html, tmp_path / "shot.png", window_px=(1400, 2000))
    with Image.open(screenshot) as image:
        assert image.size == (1400, 2000)
        pixels = np.asarray(image.convert("L"))
    assert pixels.std() > 20, "screenshot is blank"


def test_report_of_a_run_with_no_ranked_entry(tmp_path):
    """A run holding only the bicubic reference and a timed-out baseline still gets a report (empty score plots)."""
    from esr_eval.records import SplitRow, SubmissionRow, write_rows

    write_rows(tmp_path, "submissions", [SubmissionRow(run_id="r", submission_id="team00_RLFN", team_id="00",
                                                       name="RLFN", status="timeout", params=317_218,
                                                       flops_fvcore=19_674_859_520)], "team00_RLFN")
    write_rows(tmp_path, "submissions", [SubmissionRow(run_id="r", submission_id="team99_Bicubic", team_id="99",
                                                       name="Bicubic", status="ok", params=0, flops_fvcore=0,
                                                       activations=0, num_conv=0)], "team99_Bicubic")
    write_rows(tmp_path, "splits", [SplitRow(run_id="r", submission_id="team99_Bicubic", split="embedded",
                                             num_images=5, dataset_sha256="x", psnr_db=25.9, ssim=None,
                                             psnr_y_db=27.0, ssim_y=None, runtime_ms=1.0, runtime_mean_ms=1.0,
                                             runtime_median_ms=1.0, runtime_p90_ms=1.2, runtime_n=5,
                                             wall_mean_ms=1.0, warmup_calls=0, repeats=1)], "team99_Bicubic")
    paths = write_report(tmp_path, "demo")
    assert paths.html.is_file() and "Bicubic" in paths.markdown.read_text()


def test_flags_for_the_organiser_are_listed(tmp_path):
    from esr_eval.records import SubmissionRow, write_rows

    rows = [SubmissionRow(run_id="r", submission_id="team10_A", team_id="10", name="A", status="ok",
                          hygiene_flags="input_mutated,data_range", strict=False),
            SubmissionRow(run_id="r", submission_id="team11_B", team_id="11", name="B", status="ok",
                          hygiene_flags="", flops_audit_flag=True, flops_audit_ratio=2.5),
            SubmissionRow(run_id="r", submission_id="team12_C", team_id="12", name="C", status="ok", hygiene_flags="",
                          process_niceness=0),
            SubmissionRow(run_id="r", submission_id="team13_D", team_id="13", name="D", status="ok", hygiene_flags="",
                          process_niceness=15),
            SubmissionRow(run_id="r", submission_id="team14_E", team_id="14", name="E", status="ok", hygiene_flags="",
                          process_niceness=-5),
            SubmissionRow(run_id="r", submission_id="team00_RLFN", team_id="00", name="RLFN", status="ok",
                          hygiene_flags="", params=317_218, flops_fvcore=19_674_859_520)]
    for row in rows:
        write_rows(tmp_path, "submissions", [row], row.submission_id)
    text = write_report(tmp_path, "demo").markdown.read_text()
    section = text.split("Flags for the organiser", 1)[1]
    assert "input_mutated; data_range; loaded with strict=False" in section
    assert "FLOP audit: independent count / fvcore = 2.500" in section
    assert "team12_C" not in section.split("Provenance", 1)[0]
    assert "team14_E" not in section.split("Provenance", 1)[0]  # above normal priority is not below it
    assert re.search(r"\| team13_D +\| timed at niceness 15, below normal priority", section)  # Ray's default


def test_infinite_psnr_is_reported_not_a_crash(tmp_path):
    """A model that returns the ground truth exactly scores PSNR = +inf: the tables say "inf", the plot
    leaves it out of the axis limits, draws it clipped at the edge and says so under the axes."""
    import pandas as pd

    run = write_synthetic_run(
        tmp_path / "inf-run", n_submissions=8, seed=1, splits=("embedded",), images_per_split=5, repeats=3
    )
    splits = pd.read_parquet(run / "splits")
    perfect = splits["submission_id"] == "team01_SPAN"
    assert perfect.sum() == 1
    splits.loc[perfect, ["psnr_db", "psnr_y_db"]] = np.inf
    splits.to_parquet(next((run / "splits").glob("*.parquet")), index=False)

    paths = write_report(run, load_protocol("demo").with_resamples(50), out_dir=tmp_path / "out")
    results = paths.markdown.read_text(encoding="utf-8").split("## Results", 1)[1].split("## ", 1)[0]
    row = next(line for line in results.splitlines() if re.search(r"\| SPAN +\|", line))
    assert [c.strip() for c in row.strip("|").split("|")][3] == "inf"
    with Image.open(paths.plots[0]) as image:
        assert np.asarray(image.convert("L")).std() > 5


def test_report_reads_rankings_and_ranks_again_only_for_other_rules(tmp_path, monkeypatch):
    """With rankings/ made by the same rules from the run as it is, the report ranks nothing (the
    bootstrap ran once, in rank_run) and shows exactly those rankings; other rules rank again."""
    run = write_synthetic_run(tmp_path / "run", n_submissions=8, seed=1, splits=("embedded",), images_per_split=5,
                              repeats=3)
    protocol = load_protocol("demo").with_resamples(50)
    fresh = write_report(run, protocol, out_dir=tmp_path / "fresh")  # no rankings/ yet: ranks, writes nothing
    assert not (run / "rankings").exists()
    rank_run(run, protocol)

    def no_ranking(*args, **kwargs):
        raise AssertionError("the report ranked again")

    monkeypatch.setattr(esr_eval.ranking, "rank", no_ranking)
    stored = write_report(run, protocol, out_dir=tmp_path / "stored")
    assert stored.markdown.read_text(encoding="utf-8") == fresh.markdown.read_text(encoding="utf-8")
    assert stored.html.read_text(encoding="utf-8") == fresh.html.read_text(encoding="utf-8")
    for other in (protocol.with_resamples(60), load_protocol("ntire2026")):
        with pytest.raises(AssertionError, match="ranked again"):
            write_report(run, other, out_dir=tmp_path / "other")


def test_report_ranks_again_when_the_rules_version_or_the_run_changed(tmp_path, monkeypatch):
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    run = write_synthetic_run(tmp_path / "run", n_submissions=8, seed=1, splits=("embedded",), images_per_split=5,
                              repeats=3)
    protocol = load_protocol("demo").with_resamples(20)
    stored = run / "rankings" / "part-00000.parquet"

    def ranked_again() -> bool:
        calls = []
        monkeypatch.setattr(esr_eval.ranking, "rank", lambda *args, **kwargs: calls.append(1) or rank(*args, **kwargs))
        write_report(run, protocol, out_dir=tmp_path / "report")
        monkeypatch.setattr(esr_eval.ranking, "rank", rank)
        return bool(calls)

    rank_run(run, protocol)
    assert not ranked_again()
    table = pq.read_table(stored)  # the same metadata, another rules_version
    column = table.schema.get_field_index("rules_version")
    pq.write_table(table.set_column(column, "rules_version", pa.array(["0"] * len(table))), stored)
    assert ranked_again()
    table = pq.read_table(stored).drop_columns(["rules_version"])  # rankings from before the column
    pq.write_table(table, stored)
    assert not ranked_again()
    rank_run(run, protocol)
    splits = next((run / "splits").glob("*.parquet"))
    pd.read_parquet(splits).assign(psnr_db=30.0).to_parquet(splits, index=False)
    assert ranked_again()


def test_without_matplotlib_the_report_has_every_table_and_says_why_no_plots(tmp_path, monkeypatch):
    from esr_eval import report as report_module

    run = write_synthetic_run(tmp_path / "run", n_submissions=8, seed=2)
    protocol = load_protocol("ntire2024").with_resamples(20)
    with_plots = write_report(run, protocol, tmp_path / "with")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(report_module.importlib.util, "find_spec",
                        lambda name, *args: None if name == "matplotlib" else real_find_spec(name, *args))
    without = write_report(run, protocol, tmp_path / "without")
    assert with_plots.plots and without.plots == ()
    text = without.markdown.read_text(encoding="utf-8")
    assert text.count(report_module.PLOTS_MISSING) == 1 + len(protocol.tracks)
    assert "![" not in text and 'src="data:image/png' not in without.html.read_text(encoding="utf-8")
    tables = re.compile(r"^\|.*\|$", re.MULTILINE)
    assert tables.findall(text) == tables.findall(with_plots.markdown.read_text(encoding="utf-8"))



def _renderer(figure):
    """The renderer of ``figure`` after a draw (layout done, positions final)."""
    figure.draw_without_rendering()
    return figure.canvas.get_renderer()


def _inside(outer, box) -> bool:
    return outer.x0 <= box.x0 and box.x1 <= outer.x1 and outer.y0 <= box.y0 and box.y1 <= outer.y1


def test_every_point_is_labelled_inside_the_figure_and_no_two_labels_overlap(report) -> None:
    """Every measured entry has its label (one drawn clipped at the right edge with its values too),
    each label wholly inside the figure, no two labels overlapping, and the legend off the axes."""
    _, rankings = report
    rankings = rankings.copy()
    far_off = rankings.index[rankings["name"] == "SPAN"][0]
    rankings.loc[far_off, ["name", "runtime_ms", "val_psnr_db"]] = ["MDN", 900.0, 25.0]
    rankings.loc[far_off, "rank_main"] = None  # not ranked: off the focus of the axes, drawn clipped
    figure = psnr_runtime_figure(rankings, load_protocol("ntire2024"))
    renderer = _renderer(figure)
    legend = figure.legends[0].get_window_extent(renderer)
    assert _inside(figure.bbox, legend)
    for axes, psnr_column in zip(figure.axes, ("val_psnr_db", "test_psnr_db"), strict=True):
        measured = rankings[rankings[psnr_column].notna() & rankings["runtime_ms"].notna()]
        labels = [text for text in axes.texts if text.get_gid() == POINT_LABEL_GID]
        assert sorted(text.get_text().split(" (")[0] for text in labels) == sorted(measured["name"])
        assert any(text.get_text().startswith("MDN (900.00 ms, ") for text in labels)
        boxes = [text.get_window_extent(renderer) for text in labels]
        assert [t.get_text() for t, box in zip(labels, boxes) if not _inside(figure.bbox, box)] == []
        overlapping = [(a.get_text(), b.get_text())
                       for (a, box_a), (b, box_b) in itertools.combinations(zip(labels, boxes), 2)
                       if box_a.overlaps(box_b)]
        assert overlapping == []
        assert not legend.overlaps(axes.get_window_extent(renderer))


def test_score_plot_legend_is_off_the_bars(report) -> None:
    _, rankings = report
    figure = scores_figure(rankings, load_protocol("ntire2024"), "main")
    renderer = _renderer(figure)
    (axes,) = figure.axes
    legend = figure.legends[0].get_window_extent(renderer)
    assert _inside(figure.bbox, legend) and not legend.overlaps(axes.get_window_extent(renderer))
    assert {text.get_text() for text in figure.legends[0].get_texts()} >= {"95% interval"}


def test_plots_are_saved_at_200_dpi_at_a_readable_size(report) -> None:
    paths, _ = report
    for plot in paths.plots:
        with Image.open(plot) as image:
            assert min(image.info["dpi"]) >= 199.5, plot.name
            assert 1200 <= image.width <= 4000 and 600 <= image.height <= 4000, (plot.name, image.size)


def _single_split_run(run_dir: Path) -> Path:
    return write_synthetic_run(run_dir, n_submissions=8, seed=1, splits=("embedded",), images_per_split=4, repeats=2)


def test_header_line_names_hardware_version_date_and_rules(tmp_path: Path) -> None:
    import pandas as pd

    run = _single_split_run(tmp_path / "run")
    run_info = {"run_id": "run", "created_unix_s": 1767225600.0, "device": "cuda",
                "environment": {"esr_eval_version": "0.1.0", "esr_eval_git_sha": "0123456789abcdef",
                                "esr_eval_git_dirty": True}}
    (run / "run.json").write_text(json.dumps(run_info), encoding="utf-8")
    protocol = load_protocol("demo").with_resamples(20)
    paths = write_report(run, protocol, out_dir=tmp_path / "gpu")
    expected = (f"Hardware: GPU {DEVICE_NAME} · esr-eval 0.1.0 (git 0123456789, uncommitted changes) · "
                f"run of 2026-01-01 00:00 UTC · rules demo, version {protocol.version}")
    assert expected in paths.markdown.read_text(encoding="utf-8").splitlines()
    assert f'<p class="header">{html.escape(expected)}</p>' in paths.html.read_text(encoding="utf-8")

    part = next((run / "submissions").glob("*.parquet"))
    pd.read_parquet(part).assign(device_kind="cpu", device_name="AMD EPYC 7B13", torch_num_threads=2).to_parquet(
        part, index=False)
    text = write_report(run, protocol, out_dir=tmp_path / "cpu").markdown.read_text(encoding="utf-8")
    assert "Hardware: CPU AMD EPYC 7B13, 2 torch threads · esr-eval 0.1.0" in text


def test_one_split_for_both_roles_gives_one_psnr_column_and_no_repeated_runtimes(tmp_path: Path) -> None:
    run = _single_split_run(tmp_path / "run")
    text = write_report(run, load_protocol("demo").with_resamples(20)).markdown.read_text(encoding="utf-8")
    results = text.split("## Results", 1)[1].split("## ", 1)[0]
    header = [cell.strip() for cell in next(line for line in results.splitlines() if line.startswith("|"))
              .strip("|").split("|")]
    assert "PSNR [dB] (embedded)" in header
    assert [cell for cell in header if cell.startswith(("Val ", "Test "))] == []
    assert len([cell for cell in header if "Runtime" in cell]) == 1


def test_report_for_other_rules_than_the_stored_rankings_goes_beside_the_run_report(tmp_path: Path) -> None:
    run = _single_split_run(tmp_path / "run")
    own = load_protocol("demo").with_resamples(20)
    rank_run(run, own)
    assert write_report(run, own).html.parent == run / "report"
    own_report = (run / "report" / "report.md").read_bytes()
    other = write_report(run, load_protocol("ntire2024").with_resamples(20).with_splits("embedded", "embedded"))
    assert other.html.parent == run / "report-ntire2024"
    assert (run / "report" / "report.md").read_bytes() == own_report
    assert write_report(run, own).html.parent == run / "report"
