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
                               env=env, cwd=REPO_ROOT, timeout=120)
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
