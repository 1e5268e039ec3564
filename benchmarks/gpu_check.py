"""GPU check: runtime spread, peak memory and timer agreement of the harness, launch by launch.

Contract
- ``python benchmarks/gpu_check.py [--device cuda] [--launches 5] [--images 20] [--hr-size 2040x1356]
  [--data DIR --split NAME ...] [--models bicubic,rlfn,conv] [--widths 16,48,128] [--depth 8]
  [--protocols official,esr-default] [--threads N] [--seed 0] [--out PREFIX]`` measures every
  (protocol, model) pair in ``--launches`` separate process launches (one subprocess per launch,
  as the official numbers were averaged over separate launches). Launches are interleaved
  (launch 1 of every pair, then launch 2, …) so slow drift of the machine spreads over all pairs.
- Models: bicubic (``model_zoo/team99_Bicubic.yaml``); RLFN (``model_zoo/team00_RLFN.yaml`` when
  its checkpoint exists, else the same class with random weights from ``torch.manual_seed(seed)``,
  said so in the record: runtime does not depend on weight values); :class:`PlainConvNet` at
  each of ``--widths`` (random weights, same seed).
- Data: ``--data DIR --split NAME`` (official layout, repeatable), else a generated split of
  ``--images`` HR images of ``--hr-size`` (W x H pixels) from scikit-image photos, LR by MATLAB
  bicubic x1/4, cached under ``$ESR_EVAL_CACHE`` (see :func:`generated_split`).
- Each launch runs the harness's own measurement path: ``load_submission``, ``ForwardAdapter``,
  ``time_split`` with the harness's checked uint8 conversion, ``summarize``, and the peak-memory
  bookkeeping of ``esr_eval.evaluate`` (reset before each split, and the official never-reset
  peak). Only quality scoring is left out: it runs after the clock and would add ~2 s of CPU per
  2040x1356 image to every launch. Only LR images are decoded in a launch.
- Output: ``PREFIX.json`` and ``PREFIX.md`` (default ``benchmarks/results/gpu_check-<host>-<date>``)
  with the device, torch/CUDA/cuDNN versions, the settings, every launch, and per (protocol,
  model, split): runtime per launch, spread = (max - min) / median of the split runtime over the
  launches, the first timed call (cold under ``official``, after the warm-up pass under
  ``esr-default``), peak memory with per-split reset and never reset, and the mean CUDA-event
  latency against the mean wall-clock time of the same calls. The table is printed last.
Units: milliseconds (ms), MiB (2^20 bytes, the official "MB"), pixels; spread is a fraction.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from esr_eval.adapter import ForwardAdapter  # noqa: E402
from esr_eval.data import (  # noqa: E402
    Split,
    default_cache_dir,
    embedded_source_paths,
    matlab_imresize,
    official_split,
    read_image_rgb,
    validate_split,
)
from esr_eval.loading import load_submission  # noqa: E402
from esr_eval.manifest import Submission, parse_manifest  # noqa: E402
from esr_eval.provenance import device_facts, environment  # noqa: E402
from esr_eval.quality import to_uint8  # noqa: E402
from esr_eval.timing import get_protocol, in_process, summarize, time_split  # noqa: E402

SCALE = 4
DEFAULT_HR_SIZE_PX = (2040, 1356)
DEFAULT_IMAGES = 20
DEFAULT_LAUNCHES = 5
DEFAULT_WIDTHS = (16, 48, 128)
DEFAULT_DEPTH = 8
DEFAULT_PROTOCOLS = ("official", "esr-default")
MODEL_CHOICES = ("bicubic", "rlfn", "conv")
GENERATED_SPLIT_NAME = "generated"
GENERATED_NOISE_SIGMA = 2.0  # grey levels; brings PNG size near a real DIV2K image's
LAUNCH_TIMEOUT_S = 600
BICUBIC_MANIFEST = "model_zoo/team99_Bicubic.yaml"
RLFN_MANIFEST = "model_zoo/team00_RLFN.yaml"
_MIB = 2 ** 20


class PlainConvNet(nn.Module):
    """Synthetic plain SR convnet: conv3x3(3->w), ``depth`` x (conv3x3(w->w), ReLU), conv3x3(w->3*s^2), shuffle."""

    def __init__(self, width: int = 32, depth: int = DEFAULT_DEPTH, upscale: int = SCALE):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1), nn.ReLU()]
        for _ in range(depth):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
        layers += [nn.Conv2d(width, 3 * upscale ** 2, 3, padding=1), nn.PixelShuffle(upscale)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


# --- data ------------------------------------------------------------------------------------


def _generated_hr(index: int, photos: list[np.ndarray], width_px: int, height_px: int) -> np.ndarray:
    """HR image ``index``: a photo cropped to the aspect ratio, flipped every other round, resized, noised."""
    photo = photos[index % len(photos)]
    rows, cols = photo.shape[:2]
    crop_cols = min(cols, round(rows * width_px / height_px))
    crop_rows = min(rows, round(crop_cols * height_px / width_px))
    top, left = (rows - crop_rows) // 2, (cols - crop_cols) // 2
    crop = photo[top: top + crop_rows, left: left + crop_cols]
    if (index // len(photos)) % 2:
        crop = crop[:, ::-1]
    resized = np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((width_px, height_px), Image.BICUBIC))
    noise = np.random.default_rng(index).normal(0.0, GENERATED_NOISE_SIGMA, resized.shape)
    return np.clip(np.round(resized + noise), 0, 255).astype(np.uint8)


def _write_generated(split_root: Path, n_images: int, width_px: int, height_px: int) -> None:
    hr_dir = split_root / f"{GENERATED_SPLIT_NAME}_HR"
    lr_dir = split_root / f"{GENERATED_SPLIT_NAME}_LR"
    hr_dir.mkdir(parents=True)
    lr_dir.mkdir()
    photos = [read_image_rgb(path) for path in embedded_source_paths()]
    for index in range(n_images):
        hr = _generated_hr(index, photos, width_px, height_px)
        Image.fromarray(hr).save(hr_dir / f"{index + 1:04d}.png")
        Image.fromarray(matlab_imresize(hr, 1 / SCALE)).save(lr_dir / f"{index + 1:04d}x{SCALE}.png")


def generated_split(n_images: int, hr_size_px: tuple[int, int], cache_dir: Path | None = None) -> Split:
    """A deterministic x4 split of ``n_images`` HR images of ``hr_size_px`` = (width, height) pixels.

    Image i is scikit-image photo i mod 5, centre-cropped to the aspect ratio, mirrored on odd
    rounds, resized with Pillow bicubic, plus Gaussian noise (sigma 2 grey levels, seed i); its LR
    is ``matlab_imresize(hr, 1/4)``. Built once under ``<cache>/bench-<n>-<W>x<H>-v1`` (temporary
    folder renamed into place, so concurrent callers never see a partial split).
    """
    width_px, height_px = hr_size_px
    if width_px % SCALE or height_px % SCALE or min(width_px, height_px) < 16 * SCALE:
        raise ValueError(f"--hr-size {width_px}x{height_px}: width and height must be multiples of {SCALE} "
                         f"and at least {16 * SCALE} pixels, e.g. 2040x1356")
    if n_images < 1:
        raise ValueError(f"--images {n_images}: give at least one image")
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    split_root = cache_root / f"bench-{n_images}-{width_px}x{height_px}-v1"
    if not split_root.is_dir():
        cache_root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache_root, prefix=".bench-") as tmp:
            staging = Path(tmp) / split_root.name
            _write_generated(staging, n_images, width_px, height_px)
            try:
                os.rename(staging, split_root)
            except OSError:
                if not split_root.is_dir():
                    raise
    return official_split(split_root, GENERATED_SPLIT_NAME, SCALE)


def resolve_data(data: Path | None, split_names: list[str] | None, n_images: int,
                 hr_size_px: tuple[int, int]) -> tuple[Path, list[str]]:
    """(data root, split names): the given official-layout splits, or the generated split."""
    if data is None:
        if split_names:
            raise ValueError("--split needs --data DIR (the folder holding <split>_HR and <split>_LR)")
        split = generated_split(n_images, hr_size_px)
        return split.pairs[0].hr_path.parents[1], [split.name]
    if not split_names:
        raise ValueError(f"--data {data}: name the split(s) to use with --split NAME")
    for name in split_names:
        validate_split(official_split(data, name, SCALE))
    return Path(data), list(split_names)


def parse_size(text: str) -> tuple[int, int]:
    """``"2040x1356"`` -> (2040, 1356) = (width, height) in pixels."""
    try:
        width_px, height_px = (int(part) for part in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"size must look like 2040x1356 (width x height), got {text!r}") from exc
    return width_px, height_px


# --- one launch (runs in its own process) -----------------------------------------------------


@dataclass(frozen=True)
class SplitMeasurement:
    """One split in one launch: headline runtime, cold first call, timer means, peaks, n calls."""

    split: str
    num_images: int
    runtime_ms: float
    first_latency_ms: float
    latency_mean_ms: float
    wall_mean_ms: float
    timed_calls: int
    peak_mem_mb: float | None
    peak_mem_official_mb: float | None


@dataclass(frozen=True)
class LaunchRecord:
    """What one launch process reports (``status`` is ``ok`` or ``error`` with the message)."""

    submission_id: str
    protocol_id: str
    status: str
    error: str | None
    device_name: str
    torch_num_threads: int
    environment: dict
    splits: tuple[SplitMeasurement, ...]


def _peak_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / _MIB if device.type == "cuda" else None


def measure_launch(sub: Submission, data_root: Path, split_names: list[str], protocol_name: str,
                   device_name: str, threads: int | None, seed: int) -> LaunchRecord:
    """Load ``sub`` and time every split under the protocol, as ``esr_eval.evaluate`` does."""
    device = torch.device(device_name)
    if threads:
        torch.set_num_threads(threads)
    torch.backends.cudnn.benchmark = False
    torch.manual_seed(seed)
    protocol = get_protocol(protocol_name)
    model = load_submission(sub, device).model
    adapter = ForwardAdapter(model, sub.adapter, sub.scale, sub.data_range)
    official_peak = _peak_mb(device)
    measurements = []
    for name in split_names:
        split = official_split(data_root, name, SCALE)
        inputs = [adapter.to_input(read_image_rgb(pair.lr_path), "cpu") for pair in split.pairs]
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        keep = lambda out: to_uint8(out, adapter.data_range, reject_inf=True)  # noqa: E731
        timed = time_split(in_process(adapter, device, keep_output=keep), inputs, protocol)
        split_peak = _peak_mb(device)
        if split_peak is not None:
            official_peak = max(official_peak, split_peak)
        summary = summarize(timed, protocol)
        measurements.append(SplitMeasurement(
            split=name, num_images=len(inputs), runtime_ms=summary.runtime_ms,
            first_latency_ms=float(timed.latency_ms[0, 0]), latency_mean_ms=summary.mean_ms,
            wall_mean_ms=summary.wall_mean_ms, timed_calls=summary.n,
            peak_mem_mb=split_peak, peak_mem_official_mb=official_peak))
    return LaunchRecord(submission_id=sub.submission_id, protocol_id=protocol.protocol_id, status="ok",
                        error=None, device_name=device_facts(device).device_name,
                        torch_num_threads=torch.get_num_threads(), environment=environment(),
                        splits=tuple(measurements))


def _launch_main(args: argparse.Namespace) -> int:
    """Child mode: measure one manifest under one protocol, write the record to ``--launch-record``."""
    sub = parse_manifest(args.manifest, REPO_ROOT)
    protocol = args.protocols[0]
    try:
        record = measure_launch(sub, args.data, args.split, protocol, args.device, args.threads, args.seed)
    except Exception as exc:  # the parent reports a failed launch as a row
        record = LaunchRecord(submission_id=sub.submission_id, protocol_id=protocol, status="error",
                              error=f"{type(exc).__name__}: {exc}", device_name=args.device,
                              torch_num_threads=torch.get_num_threads(), environment={}, splits=())
    Path(args.launch_record).write_text(json.dumps(dataclasses.asdict(record)))
    return 0 if record.status == "ok" else 1


# --- the parent: manifests, launches, aggregation --------------------------------------------


@dataclass(frozen=True)
class BenchModel:
    """A model under test: its manifest and where its weights come from."""

    label: str
    manifest: Path
    weights: str


def _write_manifest(path: Path, team_id: str, name: str, model: dict, weights: str) -> Path:
    path.write_text(yaml.safe_dump({"team_id": team_id, "name": name, "model": model, "data_range": 1.0,
                                    "scale": SCALE, "weights": weights}, sort_keys=False))
    return path


def bench_models(kinds: list[str], widths: list[int], depth: int, seed: int, work: Path) -> list[BenchModel]:
    """The models to measure; manifests for random-weight models are written under ``work``."""
    models = []
    if "bicubic" in kinds:
        models.append(BenchModel("Bicubic", REPO_ROOT / BICUBIC_MANIFEST, "none (parameter-free)"))
    if "rlfn" in kinds:
        shipped = parse_manifest(REPO_ROOT / RLFN_MANIFEST, REPO_ROOT, check_files=False)
        if shipped.checkpoint_path is not None and shipped.checkpoint_path.is_file():
            models.append(BenchModel("RLFN", shipped.manifest_path, f"checkpoint {shipped.checkpoint.path}"))
        else:
            weights = (f"random (torch.manual_seed({seed})): {shipped.checkpoint.path} is absent; "
                       "runtime does not depend on weight values")
            spec = {"file": shipped.model.file, "class": shipped.model.class_name,
                    "args": list(shipped.model.args), "kwargs": dict(shipped.model.kwargs)}
            path = _write_manifest(work / "bench00_RLFN_random.yaml", shipped.team_id, "RLFN", spec, weights)
            models.append(BenchModel("RLFN", path, weights))
    if "conv" in kinds:
        for index, width in enumerate(widths):
            label = f"PlainConv-w{width}-d{depth}"
            spec = {"file": str(Path(__file__).resolve().relative_to(REPO_ROOT)), "class": "PlainConvNet",
                    "kwargs": {"width": width, "depth": depth, "upscale": SCALE}}
            weights = f"random (torch.manual_seed({seed}))"
            path = _write_manifest(work / f"bench{90 + index}_{label.replace('-', '_')}.yaml", f"{90 + index}",
                                   label, spec, weights)
            models.append(BenchModel(label, path, weights))
    return models


@dataclass(frozen=True)
class LaunchOutcome:
    """One launch as the parent saw it: the child's record plus its process wall time."""

    model: str
    protocol: str
    launch: int
    process_wall_s: float
    record: LaunchRecord


def _read_record(path: Path) -> LaunchRecord:
    raw = json.loads(path.read_text())
    raw["splits"] = tuple(SplitMeasurement(**s) for s in raw["splits"])
    return LaunchRecord(**raw)


def run_launch(model: BenchModel, protocol: str, launch: int, args: argparse.Namespace, data_root: Path,
               split_names: list[str], work: Path) -> LaunchOutcome:
    """Run one launch in a fresh Python process and read back its record."""
    record_path = work / f"launch-{model.manifest.stem}-{protocol}-{launch}.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--launch-record", str(record_path),
               "--manifest", str(model.manifest), "--protocols", protocol,
               "--data", str(data_root), "--device", args.device, "--seed", str(args.seed)]
    command += [item for name in split_names for item in ("--split", name)]
    command += ["--threads", str(args.threads)] if args.threads else []
    started = time.perf_counter()
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
        failure = f"launch exited {completed.returncode} without a record: " + " | ".join(
            (completed.stderr or completed.stdout).strip().splitlines()[-5:])
    except subprocess.TimeoutExpired:
        failure = f"launch killed after {LAUNCH_TIMEOUT_S} s"
    wall_s = time.perf_counter() - started
    if record_path.is_file():
        record = _read_record(record_path)
    else:
        record = LaunchRecord(submission_id=model.manifest.stem, protocol_id=protocol, status="error",
                              error=failure, device_name=args.device, torch_num_threads=0, environment={},
                              splits=())
    return LaunchOutcome(model=model.label, protocol=protocol, launch=launch, process_wall_s=wall_s, record=record)


@dataclass(frozen=True)
class SpreadRow:
    """Per (protocol, model, split) over the ok launches. Spread = (max - min) / median runtime."""

    protocol: str
    model: str
    split: str
    launches_ok: int
    runtime_ms_per_launch: tuple[float, ...]
    runtime_median_ms: float
    spread: float
    first_latency_median_ms: float
    peak_mem_mb: float | None
    peak_mem_official_mb: float | None
    latency_mean_ms: float
    wall_mean_ms: float
    latency_to_wall: float
    errors: tuple[str, ...]


def _max_or_none(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def _spread_row(protocol: str, model: str, split: str, runs: list[SplitMeasurement],
                errors: tuple[str, ...]) -> SpreadRow:
    if not runs:
        nan = float("nan")
        return SpreadRow(protocol, model, split, 0, (), nan, nan, nan, None, None, nan, nan, nan, errors)
    runtime = np.array([s.runtime_ms for s in runs])
    median = float(np.median(runtime))
    latency_mean = float(np.mean([s.latency_mean_ms for s in runs]))
    wall_mean = float(np.mean([s.wall_mean_ms for s in runs]))
    return SpreadRow(
        protocol=protocol, model=model, split=split, launches_ok=len(runs),
        runtime_ms_per_launch=tuple(float(v) for v in runtime), runtime_median_ms=median,
        spread=float((runtime.max() - runtime.min()) / median),
        first_latency_median_ms=float(np.median([s.first_latency_ms for s in runs])),
        peak_mem_mb=_max_or_none([s.peak_mem_mb for s in runs]),
        peak_mem_official_mb=_max_or_none([s.peak_mem_official_mb for s in runs]),
        latency_mean_ms=latency_mean, wall_mean_ms=wall_mean, latency_to_wall=latency_mean / wall_mean, errors=errors)


def spread_rows(outcomes: list[LaunchOutcome]) -> list[SpreadRow]:
    """Aggregate launches per (protocol, model, split), in first-seen order; failed launches listed."""
    rows = []
    for protocol, model in dict.fromkeys((o.protocol, o.model) for o in outcomes):
        mine = [o for o in outcomes if (o.protocol, o.model) == (protocol, model)]
        errors = tuple(f"launch {o.launch}: {o.record.error}" for o in mine if o.record.status != "ok")
        ok = [o.record for o in mine if o.record.status == "ok"]
        split_names = list(dict.fromkeys(s.split for r in ok for s in r.splits)) or ["-"]
        rows += [_spread_row(protocol, model, split, [s for r in ok for s in r.splits if s.split == split], errors)
                 for split in split_names]
    return rows


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def markdown_table(rows: list[SpreadRow]) -> str:
    header = ["protocol", "model", "split", "ok", "runtime per launch (ms)", "median (ms)", "spread %",
              "first image (ms)", "peak MiB (reset)", "peak MiB (never reset)", "event ms", "wall ms",
              "event/wall"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r.protocol, r.model, r.split, str(r.launches_ok),
                 " / ".join(_fmt(v) for v in r.runtime_ms_per_launch) or "-", _fmt(r.runtime_median_ms),
                 _fmt(100 * r.spread, 1), _fmt(r.first_latency_median_ms), _fmt(r.peak_mem_mb, 1),
                 _fmt(r.peak_mem_official_mb, 1), _fmt(r.latency_mean_ms, 3), _fmt(r.wall_mean_ms, 3),
                 _fmt(r.latency_to_wall, 3)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_outputs(prefix: Path, facts: dict, models: list[BenchModel], outcomes: list[LaunchOutcome],
                  rows: list[SpreadRow]) -> tuple[Path, Path]:
    """``prefix.json`` (everything) and ``prefix.md`` (facts, weights, the table, errors)."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = prefix.with_name(prefix.name + ".json"), prefix.with_name(prefix.name + ".md")
    payload = {**facts, "models": [{"label": m.label, "weights": m.weights, "manifest": m.manifest.read_text()}
                                   for m in models],
               "launch_records": [dataclasses.asdict(o) for o in outcomes],
               "summary": [dataclasses.asdict(r) for r in rows]}
    json_path.write_text(json.dumps(payload, indent=1, default=str))
    env = facts["environment"]
    lines = [f"# GPU check — {facts['device_name']} — {facts['date']}", "",
             f"host {facts['host']}; torch {env.get('torch')}, CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}, "
             f"driver {env.get('nvidia_driver')}; esr-eval {env.get('esr_eval_git_sha')} "
             f"(dirty: {env.get('esr_eval_git_dirty')}); torch threads {facts['torch_num_threads']}", "",
             f"data: {facts['data']}; {facts['launches']} launches per (protocol, model), interleaved", "",
             "weights: " + "; ".join(f"{m.label}: {m.weights}" for m in models), "",
             markdown_table(rows), ""]
    errors = [f"- {r.protocol} / {r.model}: {e}" for r in rows for e in r.errors]
    if errors:
        lines += ["## Failed launches", "", *errors, ""]
    md_path.write_text("\n".join(lines))
    return json_path, md_path


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--launches", type=int, default=DEFAULT_LAUNCHES, help="process launches per (protocol, model)")
    parser.add_argument("--images", type=int, default=DEFAULT_IMAGES, help="images in the generated split")
    parser.add_argument("--hr-size", type=parse_size, default=DEFAULT_HR_SIZE_PX,
                        help="generated HR size WIDTHxHEIGHT in pixels (default 2040x1356)")
    parser.add_argument("--data", type=Path, default=None, help="official-layout data root (instead of generated)")
    parser.add_argument("--split", action="append", default=None, help="split name under --data (repeatable)")
    parser.add_argument("--models", type=_csv, default=list(MODEL_CHOICES), help="comma list of bicubic,rlfn,conv")
    parser.add_argument("--widths", type=lambda t: [int(w) for w in _csv(t)], default=list(DEFAULT_WIDTHS),
                        help="PlainConvNet widths (default 16,48,128)")
    parser.add_argument("--depth", type=int, default=DEFAULT_DEPTH, help="PlainConvNet hidden conv layers")
    parser.add_argument("--protocols", type=_csv, default=list(DEFAULT_PROTOCOLS),
                        help="comma list of timing protocols (default official,esr-default)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads in each launch")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--out", type=Path, default=None,
                        help="output prefix (default benchmarks/results/gpu_check-<host>-<date>)")
    parser.add_argument("--launch-record", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--manifest", type=Path, default=None, help=argparse.SUPPRESS)
    return parser


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    unknown = [m for m in args.models if m not in MODEL_CHOICES]
    if unknown:
        parser.error(f"--models: unknown {unknown}; choose from {', '.join(MODEL_CHOICES)}")
    for name in args.protocols:
        try:
            get_protocol(name)
        except ValueError as exc:
            parser.error(f"--protocols: {exc}")
    if args.launches < 1:
        parser.error("--launches must be at least 1")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here; run on a GPU machine or pass --device cpu")


def run_all(args: argparse.Namespace, models: list[BenchModel], data_root: Path, split_names: list[str],
            work: Path) -> list[LaunchOutcome]:
    """Every launch, interleaved: launch 1 of each (protocol, model), then launch 2, …; prints progress."""
    outcomes = []
    for launch in range(1, args.launches + 1):
        for protocol in args.protocols:
            for model in models:
                outcome = run_launch(model, protocol, launch, args, data_root, split_names, work)
                outcomes.append(outcome)
                runtimes = ", ".join(f"{s.split} {s.runtime_ms:.3f} ms" for s in outcome.record.splits)
                print(f"launch {launch}/{args.launches} {protocol:<12} {model.label:<22} {outcome.record.status} "
                      f"{runtimes or outcome.record.error} ({outcome.process_wall_s:.1f} s)", flush=True)
    return outcomes


def _facts(args: argparse.Namespace, today: str, data_root: Path, split_names: list[str],
           outcomes: list[LaunchOutcome]) -> dict:
    """Device, versions and settings; device facts come from the first launch that worked."""
    first_ok = next((o.record for o in outcomes if o.record.status == "ok"), None)
    data = (f"{args.data} splits {', '.join(split_names)}" if args.data else
            f"generated: {args.images} images {args.hr_size[0]}x{args.hr_size[1]} HR (LR by MATLAB bicubic x1/4) "
            f"under {data_root}")
    return {"benchmark": "gpu_check", "date": today, "host": socket.gethostname(), "device": args.device,
            "device_name": first_ok.device_name if first_ok else args.device,
            "torch_num_threads": first_ok.torch_num_threads if first_ok else None,
            "environment": first_ok.environment if first_ok else environment(),
            "data": data, "launches": args.launches, "protocols": args.protocols, "seed": args.seed}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.launch_record is not None:
        return _launch_main(args)
    _check_args(parser, args)
    try:
        data_root, split_names = resolve_data(args.data, args.split, args.images, args.hr_size)
    except ValueError as exc:
        parser.error(str(exc))
    today = datetime.date.today().isoformat()
    prefix = args.out or REPO_ROOT / "benchmarks" / "results" / f"gpu_check-{socket.gethostname()}-{today}"
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        models = bench_models(args.models, args.widths, args.depth, args.seed, Path(tmp))
        outcomes = run_all(args, models, data_root, split_names, Path(tmp))
        rows = spread_rows(outcomes)
        json_path, md_path = write_outputs(prefix, _facts(args, today, data_root, split_names, outcomes), models,
                                           outcomes, rows)
    print(f"\nwrote {json_path} and {md_path}\n")
    print(markdown_table(rows))
    return 0 if all(o.record.status == "ok" for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
