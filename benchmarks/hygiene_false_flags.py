"""Hygiene false flags: how often the hygiene checks accuse a clean shipped submission, on a loaded machine.

Contract
- ``python benchmarks/hygiene_false_flags.py [--mix ID=RUNS ...] [--load-procs N] [--device cpu]
  [--threads N] [--seed S] [--max-minutes M] [--out PREFIX]`` loads each clean submission of
  ``model_zoo/`` named in the mix (``esr_eval.loading.load_submission``, wrapped in
  ``ForwardAdapter`` with the manifest's adapter, scale and data range, as ``esr_eval.evaluate``
  does), runs one untimed forward over the hygiene images (evaluation reaches hygiene after the
  timed inference, so the model is warm), and then calls
  ``esr_eval.hygiene.check_hygiene(adapter, pairs, device)`` exactly as
  ``esr_eval.evaluate.hygiene_fields`` does: on the first ``HYGIENE_IMAGES`` pairs of the
  embedded split, decoded with ``load_pair``. The runs of all submissions are interleaved in an order
  shuffled with ``--seed``, so drift of the machine's load spreads over every submission.
- Background load: before the first run the script starts ``--load-procs`` processes (default
  ``os.cpu_count()``) of ``while True: pass`` and stops them at the end (also on an error or
  Ctrl-C). ``--load-procs 0`` runs without added load. The 1-minute load average is sampled
  before, after and at every run.
- Every shipped submission is clean, so every flag is a false flag. Per check (``input_mutated``,
  ``nondeterministic``, ``nonfinite_output``, ``cache_suspect``, ``data_range``, and ``any``)
  and per (submission, check): flags, runs, rate = flags / runs, and the one-sided 95 % upper
  confidence bound of the rate (Clopper–Pearson; 1 - 0.05^(1/n) ~ 3/n when no flag). Target:
  rate <= 1 in 1,000 for every check.
- Where the hygiene report carries ``cache_timings`` (one entry per timing measurement of the
  cache check), the record also counts how often the first measurement was suspicious (so the
  confirmation ran) and how often the confirmation agreed, and the largest fresh/seen latency
  ratios seen; the raw measurements of every run are in the JSON.
- ``--max-minutes M`` starts no run after M minutes (the shuffled order keeps the mix's
  proportions); Ctrl-C also ends the runs early. Either way the record is written for the runs
  done and says why it stopped early.
- Writes ``PREFIX.json`` (settings, machine, summary, every run) and ``PREFIX.md`` (the tables),
  default ``benchmarks/results/hygiene_false_flags-<host>-<date>``, and prints the tables last.
Units: milliseconds (ms) for latencies, seconds (s) for wall times.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import random
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from scipy.stats import beta

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from esr_eval.adapter import ForwardAdapter  # noqa: E402
from esr_eval.data import embedded_split, load_pair  # noqa: E402
from esr_eval.evaluate import HYGIENE_IMAGES  # noqa: E402
from esr_eval.hygiene import check_hygiene  # noqa: E402
from esr_eval.loading import load_submission  # noqa: E402
from esr_eval.manifest import parse_manifest  # noqa: E402
from esr_eval.provenance import cpu_model_name, environment  # noqa: E402

CHECKS = ("input_mutated", "nondeterministic", "nonfinite_output", "cache_suspect", "data_range")
ANY = "any"
# runs per submission: bicubic (the one falsely flagged, and the cheapest) carries most of the
# total; the costlier a submission's run on a loaded 2-core CPU, the fewer its runs. Mean s per run
# measured there (2 busy loops plus other jobs, 1-min load average up to 37): bicubic 0.29, SPAN
# 4.5, RLFN 7.3, IMDN 4.3, EFDN 17.7, RFDN 22.7; so 1,125 runs take about 20 minutes
DEFAULT_MIX = (("team99_Bicubic", 1000), ("team00_RLFN", 40), ("team04_SPAN", 60),
               ("team03_EFDN", 10), ("team01_IMDN", 10), ("team02_RFDN", 5))
TARGET_RATE = 1e-3
CONFIDENCE = 0.95
PROGRESS_EVERY = 100
BUSY_LOOP = "while True: pass"


def upper_bound(flags: int, runs: int, confidence: float = CONFIDENCE) -> float:
    """One-sided Clopper–Pearson upper confidence bound of a binomial rate (1 - (1-c)^(1/n) at 0 flags)."""
    if runs <= 0:
        return 1.0
    if flags >= runs:
        return 1.0
    return float(beta.ppf(confidence, flags + 1, runs - flags))


@dataclass(frozen=True)
class RunRecord:
    """One check_hygiene call: which submission, what it flagged, how long it took, the cache timings."""

    index: int
    submission_id: str
    flags: tuple[str, ...]
    cache_detail: str
    repeat_max_abs_diff: float
    data_range_psnr_db: float | None
    other_data_range_psnr_db: float | None
    check_s: float
    load_average: float
    cache_timings: tuple[dict, ...]


@dataclass(frozen=True)
class RateRow:
    """False flags of one check over a set of runs."""

    submission_id: str  # "all" for every submission together
    check: str
    flags: int
    runs: int
    rate: float
    upper_95: float
    target_met: bool  # rate <= TARGET_RATE
    bound_met: bool  # upper_95 <= TARGET_RATE: enough runs to show the target at 95 % confidence


@dataclass(frozen=True)
class CacheTimingRow:
    """What the cache check's timing measurements did for one submission."""

    submission_id: str
    runs: int
    first_suspicious: int
    confirmed: int
    max_first_ratio: float | None
    max_confirm_ratio: float | None
    median_check_s: float


@dataclass(frozen=True)
class LoadProcs:
    """Busy-loop processes started for the benchmark; stopped by stop()."""

    procs: tuple[subprocess.Popen, ...]

    @classmethod
    def start(cls, count: int) -> "LoadProcs":
        started = []
        try:
            for _ in range(count):
                started.append(subprocess.Popen([sys.executable, "-c", BUSY_LOOP], stdin=subprocess.DEVNULL))
        except BaseException:
            cls(tuple(started)).stop()
            raise
        return cls(tuple(started))

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def parse_mix_item(text: str) -> tuple[str, int]:
    name, sep, runs = text.partition("=")
    if not sep or not name or not runs.isdigit() or int(runs) < 1:
        raise argparse.ArgumentTypeError(f"expected ID=RUNS with RUNS >= 1 (e.g. team99_Bicubic=100), got {text!r}")
    return name, int(runs)


def schedule(mix: tuple[tuple[str, int], ...], seed: int) -> list[str]:
    """Every run's submission id, shuffled so that the runs of all submissions interleave."""
    order = [submission_id for submission_id, runs in mix for _ in range(runs)]
    random.Random(seed).shuffle(order)
    return order


def _ratio(timing: dict) -> float | None:
    seen, fresh = timing.get("seen_ms"), timing.get("fresh_ms")
    return fresh / seen if seen and fresh is not None else None


def _timings(report) -> tuple[dict, ...]:
    return tuple(dataclasses.asdict(t) for t in getattr(report, "cache_timings", ()))


def rate_rows(runs: list[RunRecord], submission_ids: list[str]) -> list[RateRow]:
    rows = []
    for submission_id in ["all", *submission_ids]:
        subset = [r for r in runs if submission_id == "all" or r.submission_id == submission_id]
        for check in (*CHECKS, ANY):
            flags = sum(1 for r in subset if (r.flags if check == ANY else check in r.flags))
            rate = flags / len(subset) if subset else 0.0
            rows.append(RateRow(submission_id=submission_id, check=check, flags=flags, runs=len(subset), rate=rate,
                                upper_95=(bound := upper_bound(flags, len(subset))), target_met=rate <= TARGET_RATE,
                                bound_met=bound <= TARGET_RATE))
    return rows


def cache_timing_rows(runs: list[RunRecord], submission_ids: list[str]) -> list[CacheTimingRow]:
    rows = []
    for submission_id in submission_ids:
        subset = [r for r in runs if r.submission_id == submission_id]
        first = [r.cache_timings[0] for r in subset if r.cache_timings]
        confirm = [r.cache_timings[1] for r in subset if len(r.cache_timings) > 1]
        first_ratios = [x for x in map(_ratio, first) if x is not None]
        confirm_ratios = [x for x in map(_ratio, confirm) if x is not None]
        times = sorted(r.check_s for r in subset)
        rows.append(CacheTimingRow(
            submission_id=submission_id, runs=len(subset),
            first_suspicious=sum(bool(t.get("suspicious")) for t in first),
            confirmed=sum(bool(t.get("suspicious")) for t in confirm),
            max_first_ratio=max(first_ratios) if first_ratios else None,
            max_confirm_ratio=max(confirm_ratios) if confirm_ratios else None,
            median_check_s=times[len(times) // 2] if times else 0.0))
    return rows


@dataclass(frozen=True)
class FalseFlagRecord:
    """The benchmark's record: settings, machine, the rates, and every run."""

    date: str
    started_at: str
    host: str
    cpu_model: str
    cpu_cores: int
    torch_version: str
    torch_num_threads: int
    device: str
    environment: dict
    settings: dict
    load_average_before: float
    load_average_after: float
    wall_s: float
    planned_runs: int
    total_runs: int
    stopped_early: str | None  # why fewer runs than planned were done (time budget, Ctrl-C), else None
    rates: tuple[RateRow, ...]
    cache_timing: tuple[CacheTimingRow, ...]
    flagged_runs: tuple[RunRecord, ...]
    runs: tuple[RunRecord, ...]


def _fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def markdown(record: FalseFlagRecord) -> str:
    s = record.settings
    lines = [f"# Hygiene false flags — {record.date}", "",
             f"{record.cpu_model}, {record.cpu_cores} cores, torch {record.torch_version} "
             f"({record.torch_num_threads} threads), device {record.device}; host {record.host}; "
             f"started {record.started_at}", "",
             f"background load: {s['load_procs']} busy-loop processes; 1-min load average "
             f"{record.load_average_before:.1f} before, {record.load_average_after:.1f} after; "
             f"{record.total_runs} check_hygiene runs in {record.wall_s:.0f} s; mix "
             + ", ".join(f"{k} x {v}" for k, v in s["mix"].items()) + f" planned; seed {s['seed']}"
             + (f"; stopped early: {record.stopped_early}" if record.stopped_early else ""), "",
             f"Every submission is clean: each flag is a false flag. Upper bound: one-sided "
             f"{CONFIDENCE:.0%} Clopper–Pearson. Target: rate <= {TARGET_RATE:g}.", "",
             "| submission | check | flags / runs | rate | 95 % upper bound | rate <= target | bound <= target |",
             "|---|---|---|---|---|---|---|"]
    for row in record.rates:
        lines.append(f"| {row.submission_id} | {row.check} | {row.flags} / {row.runs} | {row.rate:.4f} | "
                     f"{row.upper_95:.4f} | {'yes' if row.target_met else 'NO'} | {'yes' if row.bound_met else 'no'} |")
    if any(row.first_suspicious or row.max_first_ratio is not None for row in record.cache_timing):
        lines += ["", "Cache check timing (ratio = median fresh / median seen latency):", "",
                  "| submission | runs | first measurement suspicious | confirmed | max first ratio | "
                  "max confirmation ratio | median check (s) |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {c.submission_id} | {c.runs} | {c.first_suspicious} | {c.confirmed} | "
                  f"{_fmt_ratio(c.max_first_ratio)} | {_fmt_ratio(c.max_confirm_ratio)} | {c.median_check_s:.2f} |"
                  for c in record.cache_timing]
    if record.flagged_runs:
        lines += ["", "Flagged runs:", "", "| run | submission | flags | cache detail |", "|---|---|---|---|"]
        lines += [f"| {r.index} | {r.submission_id} | {','.join(r.flags)} | {r.cache_detail} |"
                  for r in record.flagged_runs]
    lines.append("")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mix", type=parse_mix_item, action="append", default=None, metavar="ID=RUNS",
                        help="a submission id of model_zoo/ and its number of runs; repeat for several (default "
                             + ", ".join(f"{k}={v}" for k, v in DEFAULT_MIX) + ")")
    parser.add_argument("--load-procs", type=int, default=None,
                        help="busy-loop processes started for the run (default os.cpu_count(); 0 = none)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffled run order")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="start no run after this many minutes; the record says how many runs were done")
    parser.add_argument("--out", type=Path, default=None,
                        help="output prefix (default benchmarks/results/hygiene_false_flags-<host>-<date>)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    mix = tuple(args.mix) if args.mix else DEFAULT_MIX
    load_procs = (os.cpu_count() or 1) if args.load_procs is None else args.load_procs
    if load_procs < 0:
        parser.error("--load-procs must be >= 0")
    submission_ids = list(dict.fromkeys(submission_id for submission_id, _ in mix))
    if len(submission_ids) != len(mix):
        parser.error("each submission may appear once in --mix")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    embedded = embedded_split()
    pairs = [load_pair(pair, embedded.scale) for pair in embedded.pairs[:HYGIENE_IMAGES]]
    adapters = {}
    for submission_id in submission_ids:
        manifest = REPO_ROOT / "model_zoo" / f"{submission_id}.yaml"
        if not manifest.is_file():
            parser.error(f"no manifest {manifest}")
        sub = parse_manifest(manifest, REPO_ROOT)
        adapter = ForwardAdapter(load_submission(sub, device).model, sub.adapter, sub.scale, sub.data_range)
        with torch.inference_mode():  # warm, as after the timed inference that precedes hygiene
            for lr, _ in pairs:
                adapter(adapter.to_input(lr, device))
        adapters[submission_id] = adapter

    order = schedule(mix, args.seed)
    started_at = datetime.datetime.now().isoformat(timespec="seconds")
    load_before = os.getloadavg()[0]
    runs: list[RunRecord] = []
    load = LoadProcs.start(load_procs)
    started = time.perf_counter()
    stopped = None
    try:
        for index, submission_id in enumerate(order):
            if args.max_minutes is not None and time.perf_counter() - started > 60 * args.max_minutes:
                stopped = f"--max-minutes {args.max_minutes:g} reached after {index} of {len(order)} runs"
                break
            check_started = time.perf_counter()
            report = check_hygiene(adapters[submission_id], pairs, device)
            check_s = time.perf_counter() - check_started
            unknown = set(report.flags) - set(CHECKS)
            if unknown:
                raise RuntimeError(f"check_hygiene reported flags this benchmark does not know: {sorted(unknown)}")
            runs.append(RunRecord(
                index=index, submission_id=submission_id, flags=tuple(report.flags), cache_detail=report.cache_detail,
                repeat_max_abs_diff=report.repeat_max_abs_diff, data_range_psnr_db=report.data_range_psnr_db,
                other_data_range_psnr_db=report.other_data_range_psnr_db, check_s=check_s,
                load_average=os.getloadavg()[0], cache_timings=_timings(report)))
            if (index + 1) % PROGRESS_EVERY == 0:
                flagged = sum(1 for r in runs if r.flags)
                print(f"[{time.perf_counter() - started:7.0f} s] {index + 1}/{len(order)} runs, {flagged} flagged, "
                      f"load {runs[-1].load_average:.1f}", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        stopped = f"interrupted after {len(runs)} of {len(order)} runs"
    finally:
        load.stop()
    wall_s = time.perf_counter() - started

    record = FalseFlagRecord(
        date=datetime.date.today().isoformat(), started_at=started_at, host=socket.gethostname(),
        cpu_model=cpu_model_name(), cpu_cores=os.cpu_count() or 0, torch_version=torch.__version__,
        torch_num_threads=torch.get_num_threads(), device=str(device),
        environment={**environment(), "machine": platform.machine()},
        settings={"mix": dict(mix), "load_procs": load_procs, "threads": args.threads, "seed": args.seed,
                  "max_minutes": args.max_minutes, "hygiene_images": HYGIENE_IMAGES, "target_rate": TARGET_RATE,
                  "confidence": CONFIDENCE},
        load_average_before=load_before, load_average_after=os.getloadavg()[0], wall_s=wall_s,
        planned_runs=len(order), total_runs=len(runs), stopped_early=stopped,
        rates=tuple(rate_rows(runs, submission_ids)), cache_timing=tuple(cache_timing_rows(runs, submission_ids)),
        flagged_runs=tuple(r for r in runs if r.flags), runs=tuple(runs))
    prefix = args.out or REPO_ROOT / "benchmarks" / "results" / f"hygiene_false_flags-{record.host}-{record.date}"
    prefix.parent.mkdir(parents=True, exist_ok=True)
    prefix.with_name(prefix.name + ".json").write_text(json.dumps(dataclasses.asdict(record), indent=1))
    text = markdown(record)
    prefix.with_name(prefix.name + ".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
