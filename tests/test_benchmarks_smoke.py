"""Smoke tests of benchmarks/gpu_check.py and benchmarks/harness_overhead.py.

Each script runs with tiny settings on the CPU and must write its record; timings are never
asserted (a benchmark measures and records), only the record's structure and the arithmetic
that derives its summary figures from its raw numbers.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from esr_eval.data import load_pair
from esr_eval.quality import psnr_db, to_uint8

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO_ROOT / "benchmarks"
TINY_DATA = ["--images", "2", "--hr-size", "64x64"]


def _load(name: str):
    """Import benchmarks/<name>.py (not a package) under a private module name, once."""
    module_name = f"_benchmarks_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


def _run(script: str, args: list[str], cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "ESR_EVAL_CACHE": str(cache)}
    completed = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True,
                               env=env, cwd=REPO_ROOT, timeout=900)
    assert completed.returncode == 0, f"{script} failed:\n{completed.stdout}\n{completed.stderr}"
    return completed


def test_gpu_check_cpu_run_writes_json_and_markdown(tmp_path):
    out = tmp_path / "gc"
    completed = _run("gpu_check.py", ["--device", "cpu", *TINY_DATA, "--launches", "2", "--models", "conv",
                                      "--widths", "4", "--depth", "1", "--threads", "1", "--out", str(out)],
                     tmp_path / "cache")
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["launches"] == 2 and record["device"] == "cpu"
    assert record["environment"]["torch"] == torch.__version__
    outcomes = record["launch_records"]
    calls = {(o["protocol"], o["launch"]): o["record"]["splits"][0]["timed_calls"] for o in outcomes}
    assert calls == {("official", 1): 2, ("esr-default", 1): 10, ("official", 2): 2, ("esr-default", 2): 10}
    rows = {row["protocol"]: row for row in record["summary"]}
    assert set(rows) == {"official", "esr-default"}
    for protocol, row in rows.items():
        per_launch = [o["record"]["splits"][0]["runtime_ms"] for o in outcomes if o["protocol"] == protocol]
        assert row["runtime_ms_per_launch"] == per_launch
        assert row["spread"] == pytest.approx((max(per_launch) - min(per_launch)) / np.median(per_launch))
        assert row["latency_to_wall"] == pytest.approx(1.0)  # the CPU timer reports one clock for both
        assert row["peak_mem_mb"] is None and row["errors"] == []
    markdown = out.with_suffix(".md").read_text()
    assert "PlainConv-w4-d1" in markdown and "| protocol | model | split |" in markdown
    last_table_line = [line for line in markdown.splitlines() if line.startswith("|")][-1]
    assert completed.stdout.rstrip().endswith(last_table_line)  # the table is printed last


def test_gpu_check_rlfn_without_checkpoint_gets_seeded_random_weights(tmp_path):
    gpu_check = _load("gpu_check")
    if (REPO_ROOT / "model_zoo" / "team00_RLFN.pth").is_file():
        pytest.skip("the RLFN checkpoint is present, so the shipped manifest is used")
    (model,) = gpu_check.bench_models(["rlfn"], [], 1, 7, tmp_path)
    assert "random" in model.weights and "manual_seed(7)" in model.weights
    sub = gpu_check.parse_manifest(model.manifest, REPO_ROOT)
    assert sub.checkpoint is None and sub.model.class_name == "RLFN_Prune"


def test_generated_split_is_deterministic_and_official_layout(tmp_path):
    gpu_check = _load("gpu_check")
    first = gpu_check.generated_split(2, (64, 80), tmp_path / "a")
    second = gpu_check.generated_split(2, (64, 80), tmp_path / "b")
    assert first.sha256 == second.sha256
    lr, hr = load_pair(first.pairs[1], 4)
    assert hr.shape == (80, 64, 3) and lr.shape == (20, 16, 3)
    with pytest.raises(ValueError, match="multiples of 4"):
        gpu_check.generated_split(2, (66, 80), tmp_path / "c")


def test_official_style_helpers_match_the_harness_definitions():
    overhead = _load("harness_overhead")
    rng = np.random.default_rng(0)
    sr = torch.rand(1, 3, 20, 24) * 1.2 - 0.1
    assert np.array_equal(overhead.tensor2uint(sr.clone(), 1.0), to_uint8(sr, 1.0))
    a, b = (rng.integers(0, 256, (20, 24, 3), dtype=np.uint8) for _ in range(2))
    assert overhead.calculate_psnr(a, b, 4) == pytest.approx(psnr_db(a, b, 4), abs=1e-12)
    lr = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    assert torch.equal(overhead.uint2tensor4(lr, 255.0), torch.from_numpy(lr).permute(2, 0, 1)[None].float())


def test_harness_overhead_writes_its_record(tmp_path):
    out = tmp_path / "ho"
    completed = _run("harness_overhead.py", [*TINY_DATA, "--passes", "2", "--threads", "1", "--out", str(out)],
                     tmp_path / "cache")
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["torch_version"] == torch.__version__ and record["cpu_cores"] >= 1 and record["cpu_model"]
    assert record["lr_size_px"] == "16x16"
    for loop in ("official", "ours"):
        m = record[loop]
        assert (m["images"], m["passes"]) == (2, 2)
        assert 0 < m["forward_ms"] < m["wall_ms"]
        assert m["overhead_ms_per_call"] == pytest.approx((m["wall_ms"] - m["forward_ms"]) / 4)
    ratio = record["ours"]["overhead_ms_per_call"] / record["official"]["overhead_ms_per_call"]
    assert record["ratio"] == pytest.approx(ratio)
    assert record["target_met"] == (ratio <= record["target_ratio"])
    functions = [row["function"] for row in record["profile"]]
    assert "evaluate.evaluate_submission" in functions
    assert "ours / official-style" in completed.stdout


def test_spread_rows_aggregate_ok_launches_and_list_failed_ones():
    gpu_check = _load("gpu_check")

    def outcome(launch: int, runtime_ms: float | None):
        splits = () if runtime_ms is None else (gpu_check.SplitMeasurement(
            split="valid", num_images=2, runtime_ms=runtime_ms, first_latency_ms=2 * runtime_ms,
            latency_mean_ms=runtime_ms, wall_mean_ms=runtime_ms * 1.25, timed_calls=2,
            peak_mem_mb=10.0 + launch, peak_mem_official_mb=20.0 + launch),)
        record = gpu_check.LaunchRecord(
            submission_id="m", protocol_id="official-v1", status="ok" if splits else "error",
            error=None if splits else "boom", device_name="gpu", torch_num_threads=1, environment={}, splits=splits)
        return gpu_check.LaunchOutcome(model="m", protocol="official", launch=launch, process_wall_s=1.0, record=record)

    (row,) = gpu_check.spread_rows([outcome(1, 10.0), outcome(2, None), outcome(3, 12.0), outcome(4, 11.0)])
    assert row.launches_ok == 3 and row.runtime_ms_per_launch == (10.0, 12.0, 11.0)
    assert row.runtime_median_ms == 11.0 and row.spread == pytest.approx(2.0 / 11.0)
    assert row.first_latency_median_ms == 22.0 and row.latency_to_wall == pytest.approx(0.8)
    assert (row.peak_mem_mb, row.peak_mem_official_mb) == (14.0, 24.0)
    assert row.errors == ("launch 2: boom",)


# --- benchmarks/hygiene_false_flags.py ------------------------------------------------------------


def test_hygiene_false_flags_writes_its_record(tmp_path):
    out = tmp_path / "hff"
    completed = _run("hygiene_false_flags.py", ["--mix", "team99_Bicubic=3", "--load-procs", "0", "--threads", "1",
                                                "--out", str(out)], tmp_path / "cache")
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["torch_version"] == torch.__version__ and record["cpu_cores"] >= 1 and record["cpu_model"]
    assert record["settings"]["mix"] == {"team99_Bicubic": 3} and record["settings"]["load_procs"] == 0
    assert record["total_runs"] == record["planned_runs"] == 3 and record["stopped_early"] is None
    assert record["wall_s"] > 0 and record["date"]
    runs = record["runs"]
    assert [r["submission_id"] for r in runs] == ["team99_Bicubic"] * 3
    assert all(r["cache_timings"] and r["check_s"] > 0 for r in runs)
    rates = {(row["submission_id"], row["check"]): row for row in record["rates"]}
    checks = ("input_mutated", "nondeterministic", "nonfinite_output", "cache_suspect", "data_range", "any")
    assert set(rates) == {(sub, check) for sub in ("all", "team99_Bicubic") for check in checks}
    for (sub, check), row in rates.items():
        flagged = sum(1 for r in runs if (r["flags"] if check == "any" else check in r["flags"]))
        assert (row["flags"], row["runs"]) == (flagged, 3)
        assert row["rate"] == pytest.approx(flagged / 3) and row["rate"] <= row["upper_95"] <= 1
    assert record["flagged_runs"] == [r for r in runs if r["flags"]]
    markdown = out.with_suffix(".md").read_text()
    assert "| all | cache_suspect |" in markdown and "Cache check timing" in markdown
    assert completed.stdout.rstrip().endswith(markdown.rstrip())  # the tables are printed last


def test_hygiene_false_flags_upper_bound_and_schedule():
    hff = _load("hygiene_false_flags")
    assert hff.upper_bound(0, 1000) == pytest.approx(1 - 0.05 ** (1 / 1000))  # ~ 3 / n, the rule of three
    assert hff.upper_bound(0, 1000) == pytest.approx(3 / 1000, rel=0.01)
    assert hff.upper_bound(5, 30) > 5 / 30 and hff.upper_bound(30, 30) == 1.0
    order = hff.schedule((("a", 3), ("b", 2)), seed=1)
    assert sorted(order) == ["a", "a", "a", "b", "b"] and order == hff.schedule((("a", 3), ("b", 2)), seed=1)


# --- benchmarks/scale_driver.py -------------------------------------------------------------------


def test_scale_driver_field_and_made_up_rows_fit_the_run_folder(tmp_path):
    import pandas as pd

    from esr_eval.data import ImagePair, Split
    from esr_eval.run import RunFolder
    from esr_eval.settings import DEFAULT, EvaluationConfig

    sd = _load("scale_driver")
    durations = sd.designed_durations(40, seed=3, scale=0.5)
    assert np.array_equal(durations, sd.designed_durations(40, seed=3, scale=0.5))
    assert durations.min() >= sd.REAL_FLOOR_S * 0.5
    designed = sd.write_field(tmp_path / "subs", durations)
    subs, errors = sd.discover_field(tmp_path / "subs")
    assert not errors and {s.submission_id: s.model.kwargs["sleep_s"] for s in subs} == designed
    assert all(s.checkpoint is None for s in subs)
    image = tmp_path / "img.png"
    image.write_bytes(b"not decoded")
    split = Split("tiny", 4, (ImagePair("a", image, image), ImagePair("b", image, image)))
    base = dict(run_id="r", submission_id=subs[0].submission_id, team_id=subs[0].team_id, name=subs[0].name,
                manifest_sha256=subs[0].manifest_sha256)
    result = sd._made_up_result(base, subs[0], [split], EvaluationConfig(protocol=DEFAULT), 2.0)
    assert result.submission.status == "ok" and len(result.splits) == 1
    assert len(result.samples) == 2 * DEFAULT.repeats
    folder = RunFolder.create(tmp_path / "results", "r")
    folder.write_result(result, fingerprint="f")  # the made-up rows fit the Parquet schemas
    assert len(pd.read_parquet(folder.path / "samples")) == 2 * DEFAULT.repeats


@pytest.mark.ray
def test_scale_driver_writes_its_record(tmp_path):
    out = tmp_path / "sd"
    env = {**os.environ, "ESR_EVAL_CACHE": str(tmp_path / "cache")}
    completed = subprocess.run(
        [sys.executable, str(BENCHMARKS / "scale_driver.py"), "--submissions", "6", "--nodes", "2",
         "--gpus-per-node", "2", "--scale", "0.01", "--out", str(out)],
        capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=900)
    assert completed.returncode == 0, f"scale_driver.py failed:\n{completed.stdout}\n{completed.stderr[-4000:]}"
    record = json.loads(out.with_suffix(".json").read_text())
    settings = record["settings"]
    assert (settings["submissions"], settings["nodes"], settings["gpus_per_node"], settings["gpus"]) == (6, 2, 2, 4)
    assert record["statuses"] == {"ok": 6}
    assert record["actors_torch_free"] == record["actors_logged"] == record["distinct_actor_processes"] == 6
    assert 1 <= record["peak_concurrent_evaluations"] <= 4
    timings = record["timings"]
    designed = [t["designed_s"] for t in timings]
    assert designed == sorted(designed, reverse=True)  # launched longest first
    assert all(t["wall_s"] >= t["designed_s"] for t in timings)  # the sleeps happened
    from esr_eval.scheduling import lpt_makespan

    assert record["ideal_lpt_s"] == pytest.approx(lpt_makespan(designed, 4))
    assert record["makespan_over_lpt"] == pytest.approx(record["makespan_s"] / record["ideal_lpt_s"])
    assert record["driver_cpu_s"] > 0 and record["driver_rss_peak_mib"] >= record["driver_rss_before_mib"] > 0
    assert record["driver_ray_calls"]["kill"] == 6
    rows = {read["table"]: read["rows"] for read in record["table_reads"]}
    assert rows == {"submissions": 6, "splits": 6, "samples": 6 * settings["samples_per_submission"]}
    assert record["machine"]["cpu_cores"] >= 1 and record["machine"]["ray_version"] and record["machine"]["date"]
    markdown = out.with_suffix(".md").read_text()
    assert "**makespan / LPT ideal**" in markdown and "pd.read_parquet(run/samples)" in markdown
    assert completed.stdout.rstrip().endswith(markdown.rstrip())  # the table is printed last


def test_summary_speed_writes_its_record(tmp_path):
    out = tmp_path / "ss"
    completed = _run("summary_speed.py", ["--count", "2", "--input", "1x3x16x16", "--jobs", "2", "--out", str(out)],
                     tmp_path / "cache")
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["count"] == 2 and record["submission_ids"] == ["team00_RLFN", "team01_IMDN"]
    assert record["numbers_identical"] and record["differences"] == []
    old, new = record["runs"]
    assert (old["path"], new["path"], old["errors"], new["errors"]) == ("old", "new", [], [])
    assert record["speedup_per_run"] == [pytest.approx(old["wall_s"] / new["wall_s"])]
    assert {row["submission_id"] for row in record["rows"]["new"]} == {"team00_RLFN", "team01_IMDN"}
    assert record["machine"]["cpu_cores"] >= 1 and len(record["load_average_start"]) == 3
    markdown = out.with_suffix(".md").read_text()
    assert "numbers identical in both paths: True" in markdown
    assert completed.stdout.rstrip().endswith(markdown.rstrip())  # the table is printed last


def test_summary_speed_replicates_the_zoo_under_distinct_ids(tmp_path):
    from esr_eval.manifest import discover_all

    ids = _load("summary_speed").replicate_zoo(35, tmp_path)
    subs, errors = discover_all(tmp_path, REPO_ROOT)
    assert not errors and len(ids) == len(set(ids)) == len(subs) == 35
    assert len({sub.team_id for sub in subs}) == 35 and "team00_RLFN" in ids
