"""Scheduling benchmark: how close the Ray driver's makespan comes to the LPT schedule.

Contract
- ``python benchmarks/scheduling.py [--submissions 43] [--gpus 8] [--scale 1.0] [--seed 0]
  [--cpus 2] [--out PREFIX]`` writes ``--submissions`` synthetic submissions into a temporary
  submissions root (manifests + a copy of ``benchmarks/synthetic_models/sleeper.py``). Each one's
  inference is one fixed sleep; the designed sleeps are drawn with ``--seed`` from a log-normal
  spread (median 10 s, sigma 0.7, at least 3 s, as real fields have a few long and many short
  entries), times ``--scale``.
- They run through the real driver, :func:`esr_eval.driver.run_distributed`, on a local Ray
  instance with ``--gpus`` fake GPUs and ``--cpus`` CPUs, on the embedded split with the official
  timing protocol, hygiene off and a 1x3x16x16 complexity input, so the work per submission is
  the sleep plus the evaluation's fixed overhead. The designed sleeps are passed as
  ``expected_s``, as if they came from an earlier run, so the driver starts longest first.
- Figures (seconds): the makespan (wall clock around ``run_distributed``, the origin of every
  offset); the ideal = :func:`lpt_makespan` of the designed sleeps on ``--gpus`` slots, and
  :func:`lower_bound`; their ratios; the busy time per submission from the rows (``wall_s``)
  and from the designed sleeps. Where the rest goes, per submission (mean, p90, max): the
  evaluation overhead (``wall_s`` - sleep); the actor start-up (its slot freed, i.e. the
  previous rows written, or the driver start for the first wave → its evaluation started: actor
  kill, launch, new process, imports); the result return (evaluation ended → driver holds the
  result) and the row write; the hand-over gap (end of the previous evaluation on the slot →
  start); and ``lpt_makespan`` of ``wall_s`` + the mean gap, the makespan those overheads
  predict. A :class:`TimedRunFolder` notes the driver-side moments.
- Output: ``PREFIX.json`` (the record: the machine with its CPU model, cores, load average,
  Ray/torch/Python versions; the figures; one timeline per submission) and ``PREFIX.md`` (the
  figures as a table, printed last); ``--out PREFIX``, default
  ``benchmarks/results/scheduling-<host>-<date>``. A submission that does not finish ``ok``
  stops the benchmark with its error.
Units: seconds (``_s``), dimensionless ratios.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from esr_eval.data import embedded_split
from esr_eval.driver import DriverOptions, run_distributed
from esr_eval.evaluate import EvaluationConfig
from esr_eval.manifest import discover_all
from esr_eval.nodes import apply_ray_env
from esr_eval.provenance import cpu_model_name
from esr_eval.run import RunFolder
from esr_eval.scheduling import lower_bound, lpt_makespan, lpt_order
from esr_eval.timing import OFFICIAL

HERE = Path(__file__).resolve().parent
SLEEPER = HERE / "synthetic_models" / "sleeper.py"
MEDIAN_SLEEP_S = 10.0
SIGMA_LOG = 0.7
MIN_SLEEP_S = 3.0
CONFIG = EvaluationConfig(protocol=OFFICIAL, device="cpu", torch_threads=1, hygiene=False,
                          complexity_input_shape=(1, 3, 16, 16))


@dataclass(frozen=True)
class SubmissionTiming:
    """One submission's timeline, seconds from the driver start (``run_distributed`` called).

    ``slot_freed_by`` is the submission whose finished slot this one took (None: first wave);
    ``slot_freed_offset_s`` is when the driver had written that one's rows (0 for the first wave)
    and ``previous_end_offset_s`` when its evaluation ended (0 for the first wave).
    """

    submission_id: str
    sleep_s: float
    wall_s: float
    slot_freed_by: str | None
    previous_end_offset_s: float
    slot_freed_offset_s: float
    start_offset_s: float
    end_offset_s: float
    received_offset_s: float
    written_offset_s: float

    @property
    def eval_overhead_s(self) -> float:
        return self.wall_s - self.sleep_s

    @property
    def startup_s(self) -> float:
        """Slot freed → this evaluation started: actor kill, launch, new process, imports."""
        return self.start_offset_s - self.slot_freed_offset_s

    @property
    def handover_gap_s(self) -> float:
        """Previous evaluation on the slot ended → this one started."""
        return self.start_offset_s - self.previous_end_offset_s

    @property
    def return_s(self) -> float:
        """Evaluation ended in the actor → the driver holds the result."""
        return self.received_offset_s - self.end_offset_s

    @property
    def write_s(self) -> float:
        return self.written_offset_s - self.received_offset_s


@dataclass(frozen=True)
class Spread:
    mean: float
    p90: float
    max: float

    @classmethod
    def of(cls, values) -> "Spread":
        values = np.asarray(list(values), dtype=float)
        return cls(float(values.mean()), float(np.percentile(values, 90)), float(values.max()))


@dataclass(frozen=True)
class Machine:
    host: str
    cpu_model: str
    cpu_cores: int
    load_average_1min_before: float
    load_average_1min_after: float
    ray_version: str
    torch_version: str
    python_version: str
    date: str


@dataclass(frozen=True)
class SchedulingRecord:
    machine: Machine
    submissions: int
    gpus: int
    cpus: int
    seed: int
    scale: float
    makespan_s: float
    ideal_lpt_s: float
    lower_bound_s: float
    makespan_over_lpt: float
    makespan_over_lower_bound: float
    busy_sleep_s_total: float
    busy_wall_s_total: float
    lpt_of_wall_s: float
    eval_overhead_s: Spread
    startup_first_wave_s: Spread
    startup_handover_s: Spread
    result_return_s: Spread
    result_write_s: Spread
    handover_gap_s: Spread
    predicted_makespan_s: float
    utilisation: float
    timings: tuple[SubmissionTiming, ...]


@dataclass
class TimedRunFolder(RunFolder):
    """A run folder that notes when the driver received and finished writing each submission."""

    received_unix_s: dict = field(default_factory=dict)
    written_unix_s: dict = field(default_factory=dict)

    def write_result(self, result, fingerprint, attempts: int = 1) -> None:
        sid = result.submission.submission_id
        self.received_unix_s[sid] = time.time()
        super().write_result(result, fingerprint, attempts)
        self.written_unix_s[sid] = time.time()



@dataclass(frozen=True)
class DriverRun:
    """What one ``run_distributed`` call left: its rows and the driver-side moments (unix seconds)."""

    rows: pd.DataFrame
    received_unix_s: dict
    written_unix_s: dict
    started_unix_s: float
    makespan_s: float
    slots: int


def designed_sleeps(count: int, seed: int, scale: float) -> np.ndarray:
    """Seconds of sleep per submission: a seeded log-normal draw, floored, times ``scale``."""
    rng = np.random.default_rng(seed)
    draw = np.exp(rng.normal(np.log(MEDIAN_SLEEP_S), SIGMA_LOG, count))
    return np.round(np.maximum(draw, MIN_SLEEP_S) * scale, 3)


def write_submissions(root: Path, sleeps_s: np.ndarray) -> dict[str, float]:
    """Manifests under ``root/manifests`` sharing one sleeper model file; returns id → sleep_s."""
    (root / "models").mkdir(parents=True)
    (root / "manifests").mkdir()
    shutil.copy(SLEEPER, root / "models" / SLEEPER.name)
    designed = {}
    for index, sleep_s in enumerate(sleeps_s):
        sid = f"team{index:02d}_Sleep{index:02d}"
        manifest = {"team_id": f"{index:02d}", "name": f"Sleep{index:02d}",
                    "model": {"file": f"models/{SLEEPER.name}", "class": "Sleeper",
                              "kwargs": {"sleep_s": float(sleep_s)}},
                    "data_range": 1.0, "scale": 4, "weights": "none: a synthetic sleeping submission"}
        (root / "manifests" / f"{sid}.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
        designed[sid] = float(sleep_s)
    return designed


def slot_predecessors(launch_order: list[str], received_order: list[str], slots: int) -> dict[str, str | None]:
    """Whose finished slot each submission took: None for the first wave.

    The driver launches the first ``slots`` submissions at once, then one each time it has
    handled a result, in ``launch_order``: the k-th result handled frees the slot of the
    (slots + k)-th launch.
    """
    return {sid: None if position < slots else received_order[position - slots]
            for position, sid in enumerate(launch_order)}


def machine_facts(load_before: float) -> Machine:
    import ray
    import torch

    return Machine(host=socket.gethostname(), cpu_model=cpu_model_name(), cpu_cores=os.cpu_count() or 0,
                   load_average_1min_before=load_before, load_average_1min_after=os.getloadavg()[0],
                   ray_version=ray.__version__, torch_version=torch.__version__,
                   python_version=platform.python_version(), date=datetime.date.today().isoformat())


def run_field(designed: dict[str, float], root: Path, gpus: int, cpus: int, workdir: Path) -> DriverRun:
    """Evaluate the synthetic submissions under ``root`` with the real driver on a local Ray instance."""
    import ray

    subs, errors = discover_all(root / "manifests", root)
    if errors:
        raise RuntimeError(f"synthetic manifests did not validate: {errors[0]}")
    apply_ray_env()
    ray.init(address="local", num_cpus=cpus, num_gpus=gpus, include_dashboard=False, log_to_driver=False,
             _temp_dir=str(workdir / "ray"))
    try:
        folder = TimedRunFolder.create(workdir / "results", "scheduling")
        started_unix_s = time.time()
        summary = run_distributed(subs, errors, [embedded_split()], CONFIG, folder,
                                  DriverOptions(progress=False, expected_s=designed))
        makespan_s = time.time() - started_unix_s
    finally:
        ray.shutdown()
    rows = pd.read_parquet(folder.path / "submissions").set_index("submission_id")
    failed = rows[rows["status"] != "ok"]
    if len(failed):
        raise RuntimeError(f"{len(failed)} synthetic submission(s) did not finish ok, so the schedule cannot be "
                           f"measured; first: {failed.index[0]}: {failed['error'].iloc[0]}")
    return DriverRun(rows, folder.received_unix_s, folder.written_unix_s, started_unix_s, makespan_s, summary.slots)


def timeline(designed: dict[str, float], run: DriverRun) -> tuple[SubmissionTiming, ...]:
    """Every submission's timeline, in the driver's launch order."""
    def offset(unix_s: float) -> float:
        return float(unix_s) - run.started_unix_s

    start = {sid: offset(run.rows.at[sid, "started_at_unix_s"]) for sid in designed}
    wall = {sid: float(run.rows.at[sid, "wall_s"]) for sid in designed}
    received = {sid: offset(run.received_unix_s[sid]) for sid in designed}
    written = {sid: offset(run.written_unix_s[sid]) for sid in designed}
    launch_order = lpt_order(list(designed), lambda sid: sid, designed)
    predecessor = slot_predecessors(launch_order, sorted(designed, key=received.get), run.slots)
    return tuple(SubmissionTiming(
        submission_id=sid, sleep_s=designed[sid], wall_s=wall[sid], slot_freed_by=predecessor[sid],
        previous_end_offset_s=0.0 if predecessor[sid] is None else start[predecessor[sid]] + wall[predecessor[sid]],
        slot_freed_offset_s=0.0 if predecessor[sid] is None else written[predecessor[sid]],
        start_offset_s=start[sid], end_offset_s=start[sid] + wall[sid],
        received_offset_s=received[sid], written_offset_s=written[sid]) for sid in launch_order)


def build_record(timings: tuple[SubmissionTiming, ...], makespan_s: float, machine: Machine, gpus: int, cpus: int,
                 seed: int, scale: float) -> SchedulingRecord:
    """The figures: makespan against the LPT ideal and the lower bound, and where the rest went."""
    sleeps = [t.sleep_s for t in timings]
    walls = np.array([t.wall_s for t in timings])
    gaps = np.array([t.handover_gap_s for t in timings])
    first_wave = [t for t in timings if t.slot_freed_by is None]
    handed_over = [t for t in timings if t.slot_freed_by is not None]
    ideal_s, bound_s = lpt_makespan(sleeps, gpus), lower_bound(sleeps, gpus)
    return SchedulingRecord(
        machine=machine, submissions=len(timings), gpus=gpus, cpus=cpus, seed=seed, scale=scale,
        makespan_s=makespan_s, ideal_lpt_s=ideal_s, lower_bound_s=bound_s,
        makespan_over_lpt=makespan_s / ideal_s, makespan_over_lower_bound=makespan_s / bound_s,
        busy_sleep_s_total=float(np.sum(sleeps)), busy_wall_s_total=float(walls.sum()),
        lpt_of_wall_s=lpt_makespan(walls.tolist(), gpus),
        eval_overhead_s=Spread.of(t.eval_overhead_s for t in timings),
        startup_first_wave_s=Spread.of(t.startup_s for t in first_wave),
        startup_handover_s=Spread.of(t.startup_s for t in handed_over or first_wave),
        result_return_s=Spread.of(t.return_s for t in timings),
        result_write_s=Spread.of(t.write_s for t in timings),
        handover_gap_s=Spread.of(gaps),
        predicted_makespan_s=lpt_makespan((walls + gaps.mean()).tolist(), gpus),
        utilisation=float(walls.sum()) / (gpus * makespan_s), timings=timings)


def run_benchmark(count: int, gpus: int, cpus: int, seed: int, scale: float, workdir: Path) -> SchedulingRecord:
    """Write the synthetic field, run it through the driver, and measure the schedule."""
    designed = write_submissions(workdir / "subs", designed_sleeps(count, seed, scale))
    load_before = os.getloadavg()[0]
    run = run_field(designed, workdir / "subs", gpus, cpus, workdir)
    return build_record(timeline(designed, run), run.makespan_s, machine_facts(load_before), gpus, cpus, seed, scale)


def markdown_table(record: SchedulingRecord) -> str:
    """The figures as a Markdown table under a one-line header naming the machine and settings."""
    r, m = record, record.machine

    def spread(value: Spread) -> str:
        return f"{value.mean:.2f} (p90 {value.p90:.2f}, max {value.max:.2f})"

    rows = [
        ("makespan (s)", f"{r.makespan_s:.1f}"),
        ("ideal: LPT makespan of the sleeps (s)", f"{r.ideal_lpt_s:.1f}"),
        ("lower bound max(longest, total / GPUs) (s)", f"{r.lower_bound_s:.1f}"),
        ("**makespan / LPT ideal**", f"**{r.makespan_over_lpt:.3f}**"),
        ("makespan / lower bound", f"{r.makespan_over_lower_bound:.3f}"),
        ("busy time, designed sleeps / rows' wall_s (s)", f"{r.busy_sleep_s_total:.1f} / {r.busy_wall_s_total:.1f}"),
        ("LPT makespan of wall_s (s)", f"{r.lpt_of_wall_s:.1f}"),
        ("utilisation: sum wall_s / (GPUs x makespan)", f"{r.utilisation:.3f}"),
        ("evaluation overhead, wall_s - sleep (s)", spread(r.eval_overhead_s)),
        ("actor start-up, first wave (s)", spread(r.startup_first_wave_s)),
        ("actor start-up after a hand-over (s)", spread(r.startup_handover_s)),
        ("result return to the driver (s)", spread(r.result_return_s)),
        ("row write (s)", spread(r.result_write_s)),
        ("hand-over gap, previous end -> start (s)", spread(r.handover_gap_s)),
        ("predicted: LPT of wall_s + mean gap (s)", f"{r.predicted_makespan_s:.1f}"),
    ]
    header = (f"{r.submissions} sleeping submissions (seed {r.seed}, scale {r.scale:g}) on {r.gpus} fake GPUs, "
              f"Ray num_cpus={r.cpus}; {m.cpu_model}, {m.cpu_cores} cores, 1-min load {m.load_average_1min_before:.1f} "
              f"before / {m.load_average_1min_after:.1f} after; Ray {m.ray_version}, torch {m.torch_version}, "
              f"Python {m.python_version}; {m.date}")
    table = ["| figure | value |", "|---|---|"] + [f"| {name} | {value} |" for name, value in rows]
    return "\n".join([header, "", *table]) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--submissions", type=int, default=43, help="number of synthetic submissions")
    parser.add_argument("--gpus", type=int, default=8, help="fake GPUs (slots) of the local Ray instance")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray instance")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sleep draw")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every designed sleep by this")
    parser.add_argument("--out", type=Path, default=None,
                        help="writes PREFIX.json and PREFIX.md (default benchmarks/results/scheduling-<host>-<date>)")
    args = parser.parse_args(argv)
    if not 1 <= args.submissions <= 100:
        parser.error("--submissions must be 1..100 (team ids are two digits)")
    if args.gpus < 1 or args.cpus < 1 or args.scale <= 0:
        parser.error("--gpus and --cpus must be >= 1 and --scale > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    prefix = args.out or HERE / "results" / f"scheduling-{socket.gethostname()}-{datetime.date.today().isoformat()}"
    with tempfile.TemporaryDirectory(prefix="esr-sched-") as workdir:
        record = run_benchmark(args.submissions, args.gpus, args.cpus, args.seed, args.scale, Path(workdir))
    prefix.parent.mkdir(parents=True, exist_ok=True)
    table = markdown_table(record)
    Path(f"{prefix}.json").write_text(json.dumps(dataclasses.asdict(record), indent=2) + "\n")
    Path(f"{prefix}.md").write_text(table)
    print(f"record: {prefix}.json, {prefix}.md\n\n{table}", end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
