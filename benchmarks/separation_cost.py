"""Separation cost: wall seconds per submission of ``evaluate_submission``, as this checkout runs it.

Contract
- ``python benchmarks/separation_cost.py [--ids team00_RLFN team04_SPAN team99_Bicubic] [--images 10]
  [--hr-size 512x512] [--runs 3] [--threads 1] [--label NAME] [--out PREFIX]`` evaluates each
  shipped submission ``--runs`` times on the generated split (``gpu_check.generated_split``: real
  photos, ``--images`` of ``--hr-size``) and the embedded split, under the default timing protocol
  with hygiene on, exactly as an actor does, and records per evaluation: ``wall_s`` (the row's own
  figure: everything from the device set-up to the row), the sum of the timed latencies and the
  status. The first evaluation of each submission is a warm-up (imports, allocator) and is not
  recorded. Before each recorded evaluation the sandbox is prestarted as a Ray actor does while it
  starts (``esr_eval.sandbox.prestart``; ``--no-prestart``: as ``esr-eval evaluate`` does, inside
  the evaluation; a checkout without a sandbox ignores both).
- It measures whatever ``esr_eval`` is first on ``sys.path``: run it once with ``PYTHONPATH`` set
  to a checkout from before the privilege separation and once with this one, on the same quiet
  machine, and compare the medians (the ``--label`` names each record).
- The 1-minute load average before and after is recorded. Writes ``PREFIX.json`` and ``PREFIX.md``
  (default ``benchmarks/results/separation_cost-<label>``) and prints the summary last.
Units: seconds (s) for wall, milliseconds (ms) for latencies.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import sys
import time
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent
sys.path.insert(1, str(BENCH))
from gpu_check import generated_split, parse_size  # noqa: E402

import esr_eval  # noqa: E402
from esr_eval.data import embedded_split  # noqa: E402
from esr_eval.evaluate import EvaluationConfig, evaluate_submission  # noqa: E402
from esr_eval.manifest import discover  # noqa: E402

REPO_ROOT = BENCH.parent


def _prestart() -> None:
    """What a Ray actor does while it starts (esr_eval with a sandbox only): the sandbox's
    interpreter and imports before the submission's wall clock starts."""
    try:
        from esr_eval.sandbox import prestart
    except ImportError:
        return
    prestart(wait=True)


def measure(sub, splits, config, runs: int, prestarted: bool) -> list[dict]:
    evaluate_submission(sub, splits, config, "warm-up")
    records = []
    for run in range(runs):
        if prestarted:
            _prestart()
        result = evaluate_submission(sub, splits, config, f"run{run}")
        row = result.submission
        records.append(dict(submission_id=sub.submission_id, run=run, status=row.status, error=row.error,
                            wall_s=row.wall_s,
                            timed_latency_sum_ms=float(sum(s.latency_ms for s in result.samples)),
                            runtime_ms={s.split: s.runtime_ms for s in result.splits}))
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", nargs="+", default=["team00_RLFN", "team04_SPAN", "team99_Bicubic"])
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--hr-size", type=parse_size, default=(512, 512))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--label", default="this")
    parser.add_argument("--no-prestart", action="store_true",
                        help="start each sandbox inside the measured evaluation (as `esr-eval evaluate` does), not "
                             "before it (as a Ray actor does)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    splits = [generated_split(args.images, args.hr_size), embedded_split()]
    config = EvaluationConfig(torch_threads=args.threads)
    subs = [s for s in discover(REPO_ROOT / "model_zoo", REPO_ROOT) if s.submission_id in args.ids]
    load_before = os.getloadavg()[0]
    records = [record for sub in subs for record in measure(sub, splits, config, args.runs, not args.no_prestart)]
    summary = {}
    for sid in args.ids:
        walls = [r["wall_s"] for r in records if r["submission_id"] == sid]
        if walls:
            summary[sid] = dict(median_wall_s=statistics.median(walls), walls_s=walls,
                                statuses=sorted({r["status"] for r in records if r["submission_id"] == sid}))
    payload = dict(label=args.label, esr_eval=str(Path(esr_eval.__file__).parent), host=socket.gethostname(),
                   cpu=platform.processor() or platform.machine(), cores=os.cpu_count(), torch=torch.__version__,
                   torch_threads=args.threads, prestarted=not args.no_prestart, images=args.images, hr_size_px=list(args.hr_size),
                   splits=[s.name for s in splits], load_avg_1m_before=load_before,
                   load_avg_1m_after=os.getloadavg()[0], summary=summary, records=records,
                   finished_unix_s=time.time())
    out = args.out or BENCH / "results" / f"separation_cost-{args.label}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(payload, indent=1))
    lines = [f"# Separation cost: {args.label}", "",
             f"`{payload['esr_eval']}` on {payload['host']} ({payload['cpu']}, {payload['cores']} cores, torch "
             f"{payload['torch']}, {args.threads} thread(s)); splits {', '.join(payload['splits'])} "
             f"({args.images} generated images of {args.hr_size[0]}x{args.hr_size[1]} HR); {args.runs} runs after one "
             f"warm-up; load average {load_before:.2f} before, {payload['load_avg_1m_after']:.2f} after.", "",
             "| Submission | median wall (s) | walls (s) | status |", "|---|---|---|---|"]
    lines += [f"| {sid} | {s['median_wall_s']:.2f} | {', '.join(f'{w:.2f}' for w in s['walls_s'])} | "
              f"{', '.join(s['statuses'])} |" for sid, s in summary.items()]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
