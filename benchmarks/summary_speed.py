"""Summary speed: `esr-eval summary` over N submissions, the old path against the new one.

Contract
- ``python benchmarks/summary_speed.py [--count 35] [--jobs N] [--input 1x3x256x256] [--runs 1]
  [--out PREFIX]`` builds a temporary manifests folder holding ``--count`` submissions: the
  shipped ``model_zoo`` manifests in id order, again and again, each copy under a fresh id
  (``team<NN>_<Name>r<round>``, a two-digit team id the zoo does not use); models and checkpoints
  stay the repository's (``--root`` is the repository). Then, ``--runs`` times, alternately:
  * old path: a fresh Python process that does what ``esr-eval summary`` did before it ran
    submissions in parallel: each submission in turn loaded in that one process
    (``esr_eval.loading.load_submission``) and counted there (``esr_eval.complexity.measure_complexity``),
    torch's default thread count;
  * new path: ``python -m esr_eval.cli summary --format json --out FILE [--jobs N]`` (parallel
    sandbox processes, one per CPU by default).
  Each is timed from process start to exit (interpreter start and imports included, as a user
  waits for it); CPU seconds are the process's and its descendants' (``RUSAGE_CHILDREN``).
- The counts of both paths must be identical for every submission (``numbers_identical``;
  fields: ``COMPARED``); the speed-up is old wall / new wall per run, the goal ``GOAL_SPEEDUP``.
- Writes ``PREFIX.json`` (everything) and ``PREFIX.md`` (the table), default
  ``benchmarks/results/summary_speed-<host>-<date>``, with the machine: CPU model, cores (and
  those this process may use), memory, torch and its default thread count, the load average at
  the start and at the end; prints the table last.
Units: seconds (s).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
ZOO = REPO_ROOT / "model_zoo"
DEFAULT_COUNT = 35
GOAL_SPEEDUP = 2.0
COMPARED = ("params", "params_before_forward", "flops_fvcore", "flops_hook_2022", "flops_audit", "flops_audit_flag",
            "activations", "num_conv", "audit")


def replicate_zoo(count: int, manifests: Path) -> list[str]:
    """Write ``count`` manifests into ``manifests``: the zoo's, then copies under fresh ids; their ids."""
    originals = sorted(ZOO.glob("*.yaml"))
    used = {yaml.safe_load(path.read_text())["team_id"] for path in originals}
    spare = [f"{n:02d}" for n in range(100) if f"{n:02d}" not in used]
    if count > len(originals) + len(spare):
        raise ValueError(f"--count {count}: at most {len(originals) + len(spare)} submissions have distinct "
                         "two-digit team ids")
    ids = []
    for index in range(count):
        source = originals[index % len(originals)]
        manifest = yaml.safe_load(source.read_text())
        sid = source.stem
        if index >= len(originals):
            manifest["team_id"] = spare.pop(0)
            sid = f"team{manifest['team_id']}_{manifest['name']}r{index // len(originals)}"
        (manifests / f"{sid}.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
        ids.append(sid)
    return ids


def old_path(manifests: Path, input_shape: tuple[int, ...]) -> list[dict]:
    """The summary as it was counted before: one process, each submission in turn, no sandbox."""
    from esr_eval.complexity import measure_complexity
    from esr_eval.loading import load_submission
    from esr_eval.manifest import SubmissionError, discover_all

    subs, errors = discover_all(manifests, REPO_ROOT)
    rows = [dict(submission_id=e.submission_id, status="error", error=str(e)) for e in errors]
    for sub in subs:
        try:
            c = measure_complexity(load_submission(sub, "cpu").model, input_shape, sub.data_range, "cpu")
        except SubmissionError as exc:
            rows.append(dict(submission_id=sub.submission_id, status="error", error=str(exc)))
            continue
        rows.append(dict(submission_id=sub.submission_id, status="ok", params=c.params,
                         params_before_forward=c.params_before_forward, flops_fvcore=c.flops_fvcore,
                         flops_hook_2022=c.flops_hook_2022, flops_audit=c.flops_audit, flops_audit_flag=c.audit_flag,
                         activations=c.activations, num_conv=c.num_conv, audit=c.audit_text()))
    return rows


@dataclass(frozen=True)
class PathRun:
    """One timed run of one path."""

    path: str
    run: int
    wall_s: float
    cpu_s: float
    exit_status: int
    errors: list[str]


def _timed(path: str, run: int, command: list[str], rows_file: Path) -> tuple[PathRun, list[dict]]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    completed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    wall_s = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    rows = json.loads(rows_file.read_text()) if rows_file.is_file() else []
    errors = [row["error"] for row in rows if row.get("status") != "ok"]
    if completed.returncode and not errors:
        errors = [f"exit status {completed.returncode}: {completed.stderr[-2000:]}"]
    return PathRun(path, run, wall_s, cpu_s, completed.returncode, errors), rows


def _shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def measure(manifests: Path, work: Path, runs: int, jobs: int | None, input_shape: tuple[int, ...]):
    """Both paths, alternately, ``runs`` times: (every run, the rows of each path's last run)."""
    shape = _shape_text(input_shape)
    results, last_rows = [], {}
    for run in range(runs):
        for path in ("old", "new"):
            rows_file = work / f"{path}-{run}.json"
            if path == "old":
                command = [sys.executable, str(Path(__file__).resolve()), "--old-path", str(manifests),
                           "--input", shape, "--rows-out", str(rows_file)]
            else:
                command = [sys.executable, "-m", "esr_eval.cli", "summary", "--root", str(REPO_ROOT),
                           "--manifests", str(manifests), "--input", shape, "--format", "json",
                           "--out", str(rows_file)] + (["--jobs", str(jobs)] if jobs else [])
            result, rows = _timed(path, run, command, rows_file)
            results.append(result)
            last_rows[path] = rows
    return results, last_rows


def compare(old_rows: list[dict], new_rows: list[dict]) -> list[str]:
    """Every difference between the two paths' counts (none: the numbers are identical)."""
    old, new = ({row["submission_id"]: row for row in rows} for rows in (old_rows, new_rows))
    differences = [f"{sid}: only in the {'old' if sid in old else 'new'} path" for sid in sorted(set(old) ^ set(new))]
    for sid in sorted(set(old) & set(new)):
        differences += [f"{sid}.{field}: old {old[sid].get(field)!r}, new {new[sid].get(field)!r}"
                        for field in ("status", *COMPARED) if old[sid].get(field) != new[sid].get(field)]
    return differences


def machine() -> dict:
    import torch

    from esr_eval.provenance import cpu_model_name

    memory_kib = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                       if line.startswith("MemTotal:")), 0) if Path("/proc/meminfo").is_file() else 0
    return dict(host=socket.gethostname(), cpu_model=cpu_model_name(), cpu_cores=os.cpu_count() or 0,
                cpus_usable=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
                memory_gib=round(memory_kib / 2**20, 1), python=platform.python_version(),
                torch_version=torch.__version__, torch_default_threads=torch.get_num_threads())


def markdown(record: dict) -> str:
    m = record["machine"]
    lines = [f"# Summary speed — {record['date']}", "",
             f"{m['cpu_model']}, {m['cpu_cores']} cores ({m['cpus_usable']} usable), {m['memory_gib']} GiB; "
             f"torch {m['torch_version']} ({m['torch_default_threads']} default threads), Python {m['python']}; "
             f"host {m['host']}",
             f"load average (1/5/15 min): {'/'.join(f'{v:.2f}' for v in record['load_average_start'])} at the "
             f"start, {'/'.join(f'{v:.2f}' for v in record['load_average_end'])} at the end", "",
             f"{record['count']} submissions (the zoo replicated), input {record['input_shape']}, new path "
             f"--jobs {record['jobs'] or 'default (one per CPU)'}", "",
             "| run | old wall (s) | old CPU (s) | new wall (s) | new CPU (s) | speed-up (old/new wall) |",
             "|---|---|---|---|---|---|"]
    for run, speedup in enumerate(record["speedup_per_run"]):
        old, new = (next(r for r in record["runs"] if r["path"] == p and r["run"] == run) for p in ("old", "new"))
        lines.append(f"| {run + 1} | {old['wall_s']:.1f} | {old['cpu_s']:.1f} | {new['wall_s']:.1f} | "
                     f"{new['cpu_s']:.1f} | {speedup:.2f} |")
    lines += ["", f"numbers identical in both paths: {record['numbers_identical']}"
              + ("" if record["numbers_identical"] else f" ({len(record['differences'])} differences)"),
              f"goal: speed-up >= {GOAL_SPEEDUP:g} — {'met' if record['goal_met'] else 'MISSED'} "
              f"(median {record['speedup_median']:.2f})", ""]
    return "\n".join(lines)


def _parse_shape(text: str) -> tuple[int, ...]:
    shape = tuple(int(part) for part in text.lower().split("x"))
    if len(shape) != 4 or min(shape) <= 0:
        raise argparse.ArgumentTypeError(f"input shape must look like 1x3x256x256, got {text!r}")
    return shape


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT, help="submissions (default 35)")
    parser.add_argument("--jobs", type=int, default=None, help="the new path's --jobs (default: its own)")
    parser.add_argument("--input", type=_parse_shape, default=(1, 3, 256, 256), help="probe shape (default 1x3x256x256)")
    parser.add_argument("--runs", type=int, default=1, help="timed runs of each path, alternately (default 1)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output prefix (default benchmarks/results/summary_speed-<host>-<date>)")
    parser.add_argument("--old-path", type=Path, default=None, help=argparse.SUPPRESS)  # the old path's process
    parser.add_argument("--rows-out", type=Path, default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.old_path is not None:
        args.rows_out.write_text(json.dumps(old_path(args.old_path, args.input)))
        return 0
    if args.count < 1 or args.runs < 1:
        parser.error("--count and --runs must be at least 1")
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="summary-speed-") as folder:
        manifests = Path(folder, "manifests")
        manifests.mkdir()
        try:
            ids = replicate_zoo(args.count, manifests)
        except ValueError as exc:
            parser.error(str(exc))
        runs, rows = measure(manifests, Path(folder), args.runs, args.jobs, args.input)
    differences = compare(rows["old"], rows["new"])
    speedups = [old.wall_s / new.wall_s for old, new in zip(runs[0::2], runs[1::2])]
    median = sorted(speedups)[len(speedups) // 2]
    record = dict(date=datetime.date.today().isoformat(), machine=machine(), load_average_start=list(load_start),
                  load_average_end=list(os.getloadavg()), count=args.count, submission_ids=ids, jobs=args.jobs,
                  input_shape=_shape_text(args.input), runs=[dataclasses.asdict(run) for run in runs],
                  speedup_per_run=speedups, speedup_median=median, goal_speedup=GOAL_SPEEDUP,
                  goal_met=median >= GOAL_SPEEDUP, numbers_identical=not differences, differences=differences,
                  rows=rows)
    prefix = args.out or REPO_ROOT / "benchmarks" / "results" / f"summary_speed-{record['machine']['host']}-{record['date']}"
    prefix.parent.mkdir(parents=True, exist_ok=True)
    prefix.with_name(prefix.name + ".json").write_text(json.dumps(record, indent=1))
    text = markdown(record)
    prefix.with_name(prefix.name + ".md").write_text(text)
    print(text)
    return 0 if not differences and not any(run.errors for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
