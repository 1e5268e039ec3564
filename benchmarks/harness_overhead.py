"""Harness overhead: the per-call cost of everything outside the timed forward, ours against the official loop.

Contract
- ``python benchmarks/harness_overhead.py [--images 10] [--hr-size 2040x1356] [--data DIR --split NAME]
  [--passes 5] [--device cpu] [--threads N] [--no-profile] [--out PREFIX]`` times two evaluations
  of the same split with the same cheap model (bicubic, ``model_zoo/team99_Bicubic.yaml``), each
  doing ``--passes`` timed forward calls per image:
  * official-style: the loop of the challenge's ``test_demo.py`` (KAIR ``utils_image``), every
    pass: decode LR and HR PNGs with Pillow, LR to a float tensor, forward (timed: perf_counter on
    CPU, two CUDA events and a synchronize on CUDA), output to uint8, mod-crop HR, PSNR in float64.
    It writes no SR PNG (the real script does), so its overhead here is a lower bound.
  * ours: ``esr_eval.evaluate.evaluate_submission`` (hygiene off) under ``esr-default`` with
    ``--passes`` repeats and no warm-up, so both do the same forward work: decode once, timed
    calls, quality (PSNR, SSIM, PSNR-Y, SSIM-Y) once per image, load and complexity included.
  Overhead per call = (wall time of the whole evaluation - sum of the timed forward latencies)
  / (images x passes). The issue's target: ours <= 1/5 of the official-style overhead.
- Before timing, one untimed official-style iteration and one untimed ``evaluate_submission`` of
  the first image run, so neither loop pays first-use costs (imports, allocator, fvcore set-up);
  per-submission work (load, complexity) stays in ours and is spread over images x passes.
- The 1-minute load average before and after is recorded: on a shared machine it says how
  much other work competed for the cores.
- With profiling on (default), ours runs once more under cProfile and the esr_eval functions
  with the largest cumulative time are recorded (per call = divided by images x passes).
- Writes ``PREFIX.json`` and ``PREFIX.md`` (default ``benchmarks/results/harness_overhead-<host>-<date>``)
  with the machine (CPU model, cores, torch threads, torch version) and prints the summary last.
Units: milliseconds (ms); "per call" = per image per timed forward call.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import datetime
import json
import math
import os
import pstats
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_check import DEFAULT_HR_SIZE_PX, REPO_ROOT, SCALE, parse_size, resolve_data  # noqa: E402

from esr_eval.data import ImagePair, Split, official_split  # noqa: E402
from esr_eval.evaluate import EvaluationConfig, evaluate_submission  # noqa: E402
from esr_eval.loading import load_submission  # noqa: E402
from esr_eval.manifest import Submission, parse_manifest  # noqa: E402
from esr_eval.provenance import cpu_model_name, device_facts  # noqa: E402
from esr_eval.timing import get_protocol  # noqa: E402

MODEL_MANIFEST = "model_zoo/team99_Bicubic.yaml"
DEFAULT_IMAGES = 10
DEFAULT_PASSES = 5
TARGET_RATIO = 0.2
PROFILE_ROWS = 14
ESR_EVAL_DIR = str(REPO_ROOT / "esr_eval")


# --- the official-style loop (KAIR utils_image, as test_demo.py uses it) ---------------------


def imread_uint(path: Path) -> np.ndarray:
    """uint8 HxWx3 RGB, decoded from the file on every call."""
    with Image.open(path) as image:
        return np.array(image.convert("RGB"))


def uint2tensor4(image: np.ndarray, data_range: float) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div(255.0 / data_range).unsqueeze(0)


def tensor2uint(image: torch.Tensor, data_range: float) -> np.ndarray:
    array = image.data.squeeze().float().clamp_(0, data_range).cpu().numpy()
    return np.uint8((np.transpose(array, (1, 2, 0)) * 255.0 / data_range).round())


def calculate_psnr(sr: np.ndarray, hr: np.ndarray, border: int) -> float:
    height, width = sr.shape[:2]
    sr64 = sr[border:height - border, border:width - border].astype(np.float64)
    hr64 = hr[border:height - border, border:width - border].astype(np.float64)
    mse = np.mean((sr64 - hr64) ** 2)
    return math.inf if mse == 0 else 20 * math.log10(255.0 / math.sqrt(mse))


def _timed_forward(model: torch.nn.Module, lr: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, float]:
    """The official timed region: the model call only; (output, latency in ms)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = model(lr)
        end.record()
        torch.cuda.synchronize()
        return out, start.elapsed_time(end)
    started = time.perf_counter_ns()
    out = model(lr)
    return out, (time.perf_counter_ns() - started) / 1e6


def official_iteration(model: torch.nn.Module, pair: ImagePair, data_range: float, device: torch.device) -> float:
    """One image as test_demo.py handles it; returns the forward latency in ms."""
    lr = uint2tensor4(imread_uint(pair.lr_path), data_range).to(device)
    sr, latency_ms = _timed_forward(model, lr, device)
    sr_u8 = tensor2uint(sr, data_range)
    hr = imread_uint(pair.hr_path)
    hr = hr[: hr.shape[0] - hr.shape[0] % SCALE, : hr.shape[1] - hr.shape[1] % SCALE]
    calculate_psnr(sr_u8, hr, border=SCALE)
    return latency_ms


# --- measurements ----------------------------------------------------------------------------


@dataclass(frozen=True)
class LoopMeasurement:
    """One evaluation of the split: wall time, summed timed forwards, overhead per call."""

    loop: str
    images: int
    passes: int
    wall_ms: float
    forward_ms: float
    overhead_ms_per_call: float


def _measurement(loop: str, images: int, passes: int, wall_ms: float, forward_ms: float) -> LoopMeasurement:
    return LoopMeasurement(loop=loop, images=images, passes=passes, wall_ms=wall_ms, forward_ms=forward_ms,
                           overhead_ms_per_call=(wall_ms - forward_ms) / (images * passes))


def measure_official(sub: Submission, pairs: tuple[ImagePair, ...], passes: int, device: torch.device) -> LoopMeasurement:
    model = load_submission(sub, device).model
    official_iteration(model, pairs[0], sub.data_range, device)
    started = time.perf_counter_ns()
    forward_ms = sum(official_iteration(model, pair, sub.data_range, device) for _ in range(passes) for pair in pairs)
    wall_ms = (time.perf_counter_ns() - started) / 1e6
    return _measurement("official-style", len(pairs), passes, wall_ms, forward_ms)


def warm_up_ours(sub: Submission, data_root: Path, split_name: str, config: EvaluationConfig) -> None:
    """One untimed evaluation of the split's first image, so first-use costs stay out of the measurement."""
    split = official_split(data_root, split_name, SCALE)
    result = evaluate_submission(sub, [Split(split.name, split.scale, split.pairs[:1])], config, run_id="warm-up")
    if result.submission.status != "ok":
        raise RuntimeError(f"evaluate_submission failed for {sub.submission_id}: {result.submission.error}")


def measure_ours(sub: Submission, data_root: Path, split_name: str, passes: int, config: EvaluationConfig) -> LoopMeasurement:
    split = official_split(data_root, split_name, SCALE)
    started = time.perf_counter_ns()
    result = evaluate_submission(sub, [split], config, run_id="harness-overhead")
    wall_ms = (time.perf_counter_ns() - started) / 1e6
    if result.submission.status != "ok":
        raise RuntimeError(f"evaluate_submission failed for {sub.submission_id}: {result.submission.error}")
    forward_ms = float(sum(sample.latency_ms for sample in result.samples))
    return _measurement("esr_eval", len(split.pairs), passes, wall_ms, forward_ms)


@dataclass(frozen=True)
class ProfileRow:
    """An esr_eval function in the cProfile run of ours: calls and cumulative time."""

    function: str
    calls: int
    cumulative_ms: float
    cumulative_ms_per_call: float


def profile_ours(sub: Submission, data_root: Path, split_name: str, passes: int,
                 config: EvaluationConfig) -> tuple[ProfileRow, ...]:
    profiler = cProfile.Profile()
    images = len(official_split(data_root, split_name, SCALE).pairs)
    profiler.runcall(measure_ours, sub, data_root, split_name, passes, config)
    stats = pstats.Stats(profiler).stats
    rows = [ProfileRow(function=f"{Path(file).stem}.{name}", calls=int(calls), cumulative_ms=cumulative_s * 1e3,
                       cumulative_ms_per_call=cumulative_s * 1e3 / (images * passes))
            for (file, _, name), (_, calls, _, cumulative_s, _) in stats.items() if file.startswith(ESR_EVAL_DIR)]
    return tuple(sorted(rows, key=lambda row: -row.cumulative_ms)[:PROFILE_ROWS])


@dataclass(frozen=True)
class OverheadRecord:
    """The benchmark's record: machine, data, both loops, ours/official ratio, the profile of ours."""

    date: str
    host: str
    cpu_model: str
    cpu_cores: int
    torch_version: str
    torch_num_threads: int
    device_name: str
    load_average_before: float
    load_average_after: float
    data: str
    lr_size_px: str
    official: LoopMeasurement
    ours: LoopMeasurement
    ratio: float
    target_ratio: float
    target_met: bool
    profile: tuple[ProfileRow, ...]


def markdown(record: OverheadRecord) -> str:
    lines = [f"# Harness overhead — {record.date}", "",
             f"{record.cpu_model}, {record.cpu_cores} cores, torch {record.torch_version} "
             f"({record.torch_num_threads} threads), device {record.device_name}; host {record.host}; "
             f"1-min load average {record.load_average_before:.1f} before, {record.load_average_after:.1f} after", "",
             f"data: {record.data}; LR {record.lr_size_px}", "",
             "| loop | images x passes | wall (ms) | timed forwards (ms) | overhead per call (ms) |",
             "|---|---|---|---|---|"]
    for m in (record.official, record.ours):
        lines.append(f"| {m.loop} | {m.images} x {m.passes} | {m.wall_ms:.1f} | {m.forward_ms:.1f} | "
                     f"{m.overhead_ms_per_call:.2f} |")
    lines += ["", f"ours / official-style = {record.ratio:.3f} (target <= {record.target_ratio}: "
                  f"{'met' if record.target_met else 'MISSED'})", ""]
    if record.profile:
        lines += ["cProfile of ours (esr_eval functions by cumulative time):", "",
                  "| function | calls | cumulative (ms) | per call (ms) |", "|---|---|---|---|"]
        lines += [f"| {p.function} | {p.calls} | {p.cumulative_ms:.1f} | {p.cumulative_ms_per_call:.2f} |"
                  for p in record.profile]
        lines.append("")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=DEFAULT_IMAGES, help="images in the generated split")
    parser.add_argument("--hr-size", type=parse_size, default=DEFAULT_HR_SIZE_PX,
                        help="generated HR size WIDTHxHEIGHT in pixels (default 2040x1356)")
    parser.add_argument("--data", type=Path, default=None, help="official-layout data root (instead of generated)")
    parser.add_argument("--split", action="append", default=None, help="split name under --data (the first is used)")
    parser.add_argument("--passes", type=int, default=DEFAULT_PASSES, help="timed forward calls per image")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-profile", action="store_true", help="skip the cProfile run of ours")
    parser.add_argument("--out", type=Path, default=None,
                        help="output prefix (default benchmarks/results/harness_overhead-<host>-<date>)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.passes < 1:
        parser.error("--passes must be at least 1")
    try:
        data_root, split_names = resolve_data(args.data, args.split, args.images, args.hr_size)
    except ValueError as exc:
        parser.error(str(exc))
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sub = parse_manifest(REPO_ROOT / MODEL_MANIFEST, REPO_ROOT)
    pairs = official_split(data_root, split_names[0], SCALE).pairs
    protocol = get_protocol("esr-default", repeats=args.passes, warmup_passes=0)
    config = EvaluationConfig(protocol=protocol, device=args.device, torch_threads=args.threads, hygiene=False)
    load_before = os.getloadavg()[0]
    official = measure_official(sub, pairs, args.passes, device)
    warm_up_ours(sub, data_root, split_names[0], config)
    ours = measure_ours(sub, data_root, split_names[0], args.passes, config)
    profile = () if args.no_profile else profile_ours(sub, data_root, split_names[0], args.passes, config)
    lr_height, lr_width = imread_uint(pairs[0].lr_path).shape[:2]
    ratio = ours.overhead_ms_per_call / official.overhead_ms_per_call
    record = OverheadRecord(
        date=datetime.date.today().isoformat(), host=socket.gethostname(), cpu_model=cpu_model_name(),
        cpu_cores=os.cpu_count() or 0, torch_version=torch.__version__, torch_num_threads=torch.get_num_threads(),
        device_name=device_facts(device).device_name, load_average_before=load_before,
        load_average_after=os.getloadavg()[0],
        data=f"{data_root} split {split_names[0]} ({len(pairs)} images)", lr_size_px=f"{lr_width}x{lr_height}",
        official=official, ours=ours, ratio=ratio, target_ratio=TARGET_RATIO, target_met=ratio <= TARGET_RATIO,
        profile=profile)
    prefix = args.out or REPO_ROOT / "benchmarks" / "results" / f"harness_overhead-{record.host}-{record.date}"
    prefix.parent.mkdir(parents=True, exist_ok=True)
    prefix.with_name(prefix.name + ".json").write_text(json.dumps(dataclasses.asdict(record), indent=1))
    text = markdown(record)
    prefix.with_name(prefix.name + ".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
