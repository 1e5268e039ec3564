"""Synthetic run folders for tests and demos: the run schema without torch, a GPU or images.

Contract
- ``write_synthetic_run(run_dir, n_submissions=43, seed=0, ...) -> Path`` writes
  ``run_dir/{submissions,splits,samples}/part-00000.parquet`` and ``run_dir/run.json`` in the
  schema ``esr_eval.records`` documents (one row per submission, per measured split, and per
  image x repeat), deterministically for a given seed.
- The population: ``team00_RLFN`` with the published 2024 RLFN complexity and PSNRs (on the
  DIV2K_LSDIR splits), ``team99_Bicubic`` (no parameters, ~1 dB below RLFN), one entry whose
  valid PSNR passes the 2024 gate after 2-decimal rounding but not exactly (26.8962 dB), one
  ``error`` submission (failed at load: no complexity, no splits) and one ``timeout`` (complexity
  measured, no splits), the rest random entries with PSNRs around the 2024 gates and runtimes,
  params, FLOPs and activations in the range of real entries.
- Latencies: per submission base x per-image factor (shared by all submissions) x per-repeat
  lognormal noise with rare spikes; each split's ``runtime_ms`` is the ``esr-default-v1``
  headline (mean over images of the per-image median); mean/median/p90/n are over all calls.
Units: PSNR dB, latency ms, memory MB (2^20 bytes), params/FLOPs (MACs)/activations as counts.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from esr_eval.records import atomic_write

RLFN_PARAMS = 317_218
RLFN_FLOPS = 19_674_859_520
RLFN_ACTIVATIONS = 80_045_184
RLFN_NUM_CONV = 39
# RLFN's published PSNRs per official split; other split names use the first value.
RLFN_PSNR_DB = {"DIV2K_LSDIR_valid": 26.955139, "DIV2K_LSDIR_test": 27.069471}
BORDERLINE_VALID_PSNR_DB = 26.8962
BICUBIC_PSNR_OFFSET_DB = -1.0
DEVICE_NAME = "NVIDIA GeForce RTX 3090 (synthetic)"
ARCHITECTURES = (
    "SPAN", "DIPNet", "RepRFN", "EFDN", "ShuffleMixer", "FMEN", "BSRN", "RFDN", "LKDN", "SAFMN",
    "DDistill", "ECBSR", "PAN", "MobileSR", "ELAN", "CFSR", "HNCT", "LBNet", "ASID", "SMFA",
)


def _write_part(table: pd.DataFrame, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / "part-00000.parquet", lambda temporary: table.to_parquet(temporary, index=False))


def _names(n_entries: int) -> list[str]:
    return [
        f"{ARCHITECTURES[i % len(ARCHITECTURES)]}{'' if i < len(ARCHITECTURES) else f'v{i // len(ARCHITECTURES) + 1}'}"
        for i in range(n_entries)
    ]


def _population(n_submissions: int, rng: np.random.Generator) -> pd.DataFrame:
    """One row per submission: ids, status, complexity, latency base and PSNR offset to RLFN."""
    n_entries = n_submissions - 2
    params = np.round(np.exp(rng.uniform(np.log(0.12e6), np.log(0.9e6), n_entries)))
    flops = np.round(params * 65536 * rng.uniform(0.85, 1.05, n_entries))
    activations = np.round(params * rng.uniform(150, 400, n_entries))
    base_ms = (3.0 + flops / 1e9 * 0.25 + activations / 1e6 * 0.06) * rng.lognormal(0.0, 0.25, n_entries)
    psnr_offset = rng.normal(0.0, 0.08, n_entries)
    entries = pd.DataFrame({
        "team_id": [f"{i + 1:02d}" for i in range(n_entries)],
        "name": _names(n_entries),
        "params": params,
        "flops_fvcore": flops,
        "activations": activations,
        "num_conv": rng.integers(20, 200, n_entries).astype("float64"),
        "base_ms": base_ms,
        "valid_offset_db": psnr_offset,
        "test_offset_db": psnr_offset + rng.normal(0.0, 0.02, n_entries),
        "status": "ok",
    })
    borderline_offset_db = BORDERLINE_VALID_PSNR_DB - RLFN_PSNR_DB["DIV2K_LSDIR_valid"]
    entries.loc[2, ["valid_offset_db", "test_offset_db"]] = [borderline_offset_db, 0.0]
    entries.loc[n_entries // 3, "status"] = "error"
    entries.loc[2 * n_entries // 3, "status"] = "timeout"
    rlfn = {"team_id": "00", "name": "RLFN", "params": RLFN_PARAMS, "flops_fvcore": RLFN_FLOPS,
            "activations": RLFN_ACTIVATIONS, "num_conv": RLFN_NUM_CONV, "base_ms": 9.8,
            "valid_offset_db": 0.0, "test_offset_db": 0.0, "status": "ok"}
    bicubic = {"team_id": "99", "name": "Bicubic", "params": 0, "flops_fvcore": 0, "activations": 0,
               "num_conv": 0, "base_ms": 0.4, "valid_offset_db": BICUBIC_PSNR_OFFSET_DB,
               "test_offset_db": BICUBIC_PSNR_OFFSET_DB, "status": "ok"}
    population = pd.concat([pd.DataFrame([rlfn]), entries, pd.DataFrame([bicubic])], ignore_index=True)
    population["submission_id"] = "team" + population["team_id"] + "_" + population["name"]
    return population


def _submissions(population: pd.DataFrame, run_id: str, timing_protocol: str, rng: np.random.Generator) -> pd.DataFrame:
    n = len(population)
    failed_load = (population["status"] == "error").to_numpy()
    measured = ~failed_load

    def counts(values: np.ndarray) -> pd.Series:
        return pd.Series(np.where(measured, values, np.nan)).round().astype("Int64")

    flops = population["flops_fvcore"].to_numpy(dtype="float64")
    params = population["params"].to_numpy(dtype="float64")
    return pd.DataFrame({
        "run_id": run_id,
        "submission_id": population["submission_id"],
        "team_id": population["team_id"],
        "name": population["name"],
        "status": population["status"],
        "error": np.select(
            [failed_load, (population["status"] == "timeout").to_numpy()],
            ["ModuleNotFoundError: No module named 'mmcv'", "split DIV2K_LSDIR_valid exceeded its 900 s budget"],
            default=None,
        ),
        "error_stage": np.select(
            [failed_load, (population["status"] == "timeout").to_numpy()], ["load", "timing"], default=None
        ),
        "attempts": np.where(population["status"] == "timeout", 2, 1).astype("int64"),
        "strict": True,
        "trusted_pickle": False,
        "data_range": 1.0,
        "scale": np.int64(4),
        "checkpoint_sha256": [hashlib.sha256(f"ckpt-{s}".encode()).hexdigest() for s in population["submission_id"]],
        "manifest_sha256": [hashlib.sha256(f"manifest-{s}".encode()).hexdigest() for s in population["submission_id"]],
        "params": counts(params),
        "params_before_forward": counts(params * np.where(rng.random(n) < 0.15, 1.2, 1.0)),
        "flops_fvcore": counts(flops),
        "flops_hook_2022": counts(flops * rng.uniform(1.0, 1.1, n)),
        "flops_audit": counts(flops),
        "flops_audit_flag": pd.Series(np.where(measured, False, None), dtype="boolean"),
        "activations": counts(population["activations"].to_numpy(dtype="float64")),
        "num_conv": counts(population["num_conv"].to_numpy(dtype="float64")),
        "device_kind": "cuda",
        "device_name": DEVICE_NAME,
        "timing_protocol": timing_protocol,
        "wall_s": rng.uniform(20.0, 400.0, n),
    })


def _split_tables(
    population: pd.DataFrame, run_id: str, splits: tuple[str, ...], images_per_split: int, repeats: int,
    rng: np.random.Generator,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    ok = population[population["status"] == "ok"]
    split_rows, sample_frames = [], []
    official_peak = {sid: 0.0 for sid in ok["submission_id"]}
    for split_index, split in enumerate(splits):
        rlfn_db = RLFN_PSNR_DB.get(split, RLFN_PSNR_DB["DIV2K_LSDIR_valid"])
        image_factor = rng.uniform(0.6, 1.4, images_per_split)
        image_factor /= image_factor.mean()
        image_psnr = rng.normal(0.0, 2.5, images_per_split)
        image_psnr -= image_psnr.mean()
        images = [f"{split}_{i:04d}.png" for i in range(images_per_split)]
        offset_column = "valid_offset_db" if split_index == 0 else "test_offset_db"
        for _, sub in ok.iterrows():
            noise = rng.lognormal(0.0, 0.03, (images_per_split, repeats))
            noise *= np.where(rng.random((images_per_split, repeats)) < 0.02, 1.5, 1.0)
            latency_ms = sub["base_ms"] * image_factor[:, None] * noise
            per_image_noise = rng.normal(0.0, 0.05, images_per_split)
            psnr_db = rlfn_db + sub[offset_column] + image_psnr + per_image_noise - per_image_noise.mean()
            ssim = 0.78 + 0.01 * (psnr_db - rlfn_db)
            peak_mb = 80.0 + sub["activations"] / 1e6 * 4.0 * rng.uniform(0.9, 1.1)
            official_peak[sub["submission_id"]] = max(official_peak[sub["submission_id"]], peak_mb)
            split_rows.append({
                "run_id": run_id, "submission_id": sub["submission_id"], "split": split,
                "num_images": np.int64(images_per_split), "psnr_db": psnr_db.mean(), "ssim": ssim.mean(),
                "psnr_y_db": (psnr_db + 1.6).mean(), "ssim_y": (ssim + 0.02).mean(),
                "runtime_ms": np.median(latency_ms, axis=1).mean(), "runtime_mean_ms": latency_ms.mean(),
                "runtime_median_ms": np.median(latency_ms), "runtime_p90_ms": np.percentile(latency_ms, 90),
                "runtime_n": np.int64(latency_ms.size), "peak_mem_mb": peak_mb,
                "peak_mem_official_mb": official_peak[sub["submission_id"]],
            })
            first = np.arange(repeats)[None, :] == 0
            sample_frames.append(pd.DataFrame({
                "run_id": run_id, "submission_id": sub["submission_id"], "split": split,
                "image": np.repeat(images, repeats),
                "repeat": np.tile(np.arange(repeats, dtype="int64"), images_per_split),
                "latency_ms": latency_ms.ravel(),
                "psnr_db": np.where(first, psnr_db[:, None], np.nan).ravel(),
                "ssim": np.where(first, ssim[:, None], np.nan).ravel(),
                "psnr_y_db": np.where(first, psnr_db[:, None] + 1.6, np.nan).ravel(),
                "ssim_y": np.where(first, ssim[:, None] + 0.02, np.nan).ravel(),
            }))
    return pd.DataFrame(split_rows), pd.concat(sample_frames, ignore_index=True)


def write_synthetic_run(
    run_dir: str | Path,
    n_submissions: int = 43,
    seed: int = 0,
    *,
    splits: tuple[str, ...] = ("DIV2K_LSDIR_valid", "DIV2K_LSDIR_test"),
    images_per_split: int = 20,
    repeats: int = 5,
    timing_protocol: str = "esr-default-v1",
) -> Path:
    """Write a synthetic run folder (see module doc) and return its path."""
    if n_submissions < 6:
        raise ValueError(
            f"n_submissions must be >= 6 (baseline, bicubic, borderline, two failures, one more), got {n_submissions}"
        )
    run_dir = Path(run_dir)
    run_id = run_dir.name
    rng = np.random.default_rng(seed)
    population = _population(n_submissions, rng)
    submissions = _submissions(population, run_id, timing_protocol, rng)
    split_table, samples = _split_tables(population, run_id, tuple(splits), images_per_split, repeats, rng)
    _write_part(submissions, run_dir / "submissions")
    _write_part(split_table, run_dir / "splits")
    _write_part(samples, run_dir / "samples")
    run_info = {
        "run_id": run_id,
        "synthetic": True,
        "seed": seed,
        "esr_eval": {"version": "0.1.0", "git_sha": "synthetic", "dirty": False},
        "versions": {"python": "3.11", "torch": "synthetic", "cuda": "synthetic", "ray": "synthetic"},
        "device": {"kind": "cuda", "name": DEVICE_NAME},
        "timing_protocol": {"name": timing_protocol, "warmup": 5, "repeats": repeats, "cudnn_benchmark": False},
        "datasets": {
            split: {"num_images": images_per_split, "sha256": hashlib.sha256(f"{split}-{seed}".encode()).hexdigest()}
            for split in splits
        },
    }
    (run_dir / "run.json").write_text(json.dumps(run_info, indent=2), encoding="utf-8")
    return run_dir
